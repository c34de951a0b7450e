// The adaPool family (Stergiou and Poppe, IEEE TIP 2022) over one window a_1..a_n of valid
// positions with mean m:
//   eDSCW: y = sum softmax_i(DSC(a_i, m)) a_i, DSC(a, m) = 2|a m| / (a^2 + m^2), 1 at a = m = 0;
//   IDW:   y = sum w_i a_i, w_i proportional to 1 / |a_i - m|; y = m where some a_i = m (the limit);
//   adaPool: y = beta * eDSCW + (1 - beta) * eM, eM = SoftPool with beta 1 (soft_pool.h).
// Stable for every finite window: DSC is taken on a / q, m / q (q = max(|a|, |m|)), so it
// lies in [0, 1] and exp(DSC) in [1, e] needs no shift; the mean and the IDW distances are
// taken on a * k, k = limits::kSoftScale where max |a| exceeds limits::kSoftScaleAbove
// (SoftPool's rule: every sum of scaled values stays finite); IDW's weights are
// dmin / dist_i in (0, 1], the same ratios as 1 / dist_i without overflow. The outputs are
// convex combinations, kept inside [-max|a|, max|a|]. An all-padding window outputs 0.
// Gradients are exact, the weights' derivatives included (poolexport/ops/ada_pool.py).
#pragma once

#include "common.h"

namespace poolexport {

// The window's scale k, count, scaled mean m * k and max |a|.
struct AdaWindowMean {
  float k, mk, amax;
  int64_t n;
};

template <class Visit>
PX_HD AdaWindowMean ada_window_mean(Visit&& visit) {
  float amax = 0.0f;
  int64_t n = 0;
  visit([&](float a) {
    float v = a < 0.0f ? -a : a;
    amax = v > amax ? v : amax;
    ++n;
  });
  const float k = !(amax <= limits::kSoftScaleAbove) ? limits::kSoftScale : 1.0f;  // NaN: scaled too
  float sum = 0.0f;
  visit([&](float a) { sum += a * k; });
  return AdaWindowMean{k, n ? sum / (float)n : 0.0f, amax, n};
}

// DSC(a, m) and its partials times q: dDSC/da = da_q / q, dDSC/dm = dm_q / q (0 where
// a * m = 0, the mean subgradient of |.|). Scale-free: a and m may both carry k.
struct Dsc {
  float d, da_q, dm_q, q;
};

PX_HD Dsc dsc_parts(float a, float m) {
  const float aa = a < 0.0f ? -a : a, am = m < 0.0f ? -m : m;
  const float q = aa > am ? aa : am;
  if (q == 0.0f) return Dsc{1.0f, 0.0f, 0.0f, 0.0f};
  const float u = a / q, v = m / q;
  const float r2 = u * u + v * v;  // in [1, 2]
  const float s = (u > 0.0f ? 1.0f : (u < 0.0f ? -1.0f : 0.0f)) * (v > 0.0f ? 1.0f : (v < 0.0f ? -1.0f : 0.0f));
  const float uv = u * v;
  const float den = r2 * r2;
  return Dsc{2.0f * (uv < 0.0f ? -uv : uv) / r2, s * 2.0f * v * (v * v - u * u) / den,
             s * 2.0f * u * (u * u - v * v) / den, q};
}

// DSC(a, m) alone (the forward's need): the same arithmetic as dsc_parts(a, m).d.
PX_HD float dsc_value(float a, float m) {
  const float aa = a < 0.0f ? -a : a, am = m < 0.0f ? -m : m;
  const float q = aa > am ? aa : am;
  if (q == 0.0f) return 1.0f;
  const float u = a / q, v = m / q;
  const float uv = u * v;
  return 2.0f * (uv < 0.0f ? -uv : uv) / (u * u + v * v);
}

// y from the scaled weighted sum: clamped into [-max|a|, max|a|], scaled back.
PX_HD float ada_unscale(float yk, const AdaWindowMean& mean) {
  const float ak = mean.amax * mean.k;
  yk = yk > ak ? ak : (yk < -ak ? -ak : yk);
  return yk / mean.k;
}

// eDSCW forward state: s = sum exp(DSC) (>= n), yk = k * y before clamping.
struct EdscwStats {
  AdaWindowMean mean;
  float s, yk, y;
};

template <class Visit>
PX_HD EdscwStats edscw_stats(Visit&& visit) {
  const AdaWindowMean mean = ada_window_mean(visit);
  if (mean.n == 0) return EdscwStats{mean, 0.0f, 0.0f, 0.0f};
  float s = 0.0f, sy = 0.0f;
  visit([&](float a) {
    const float ak = a * mean.k;
    const float e = fast_exp(dsc_value(ak, mean.mk));  // in [1, e]
    s += e;
    sy += e * ak;
  });
  const float yk = sy / s;
  return EdscwStats{mean, s, yk, ada_unscale(yk, mean)};
}

template <class Visit>
PX_HD float edscw_pool_value(Visit&& visit) {
  return edscw_stats(visit).y;
}

// IDW forward state: dmin = the smallest scaled distance (0: y = m), s = sum dmin / dist.
struct IdwStats {
  AdaWindowMean mean;
  float dmin, s, yk, y;
};

template <class Visit>
PX_HD IdwStats idw_stats(Visit&& visit) {
  const AdaWindowMean mean = ada_window_mean(visit);
  if (mean.n == 0) return IdwStats{mean, 0.0f, 0.0f, 0.0f, 0.0f};
  float dmin = 3.402823466e38f;
  visit([&](float a) {
    float d = a * mean.k - mean.mk;
    d = d < 0.0f ? -d : d;
    dmin = d < dmin ? d : dmin;
  });
  if (dmin == 0.0f) return IdwStats{mean, 0.0f, 0.0f, mean.mk, ada_unscale(mean.mk, mean)};
  float s = 0.0f, sy = 0.0f;
  visit([&](float a) {
    const float ak = a * mean.k;
    float d = ak - mean.mk;
    d = d < 0.0f ? -d : d;
    const float w = dmin / d;  // in (0, 1]
    s += w;
    sy += w * ak;
  });
  const float yk = sy / s;  // s >= 1: the nearest value weighs 1
  return IdwStats{mean, dmin, s, yk, ada_unscale(yk, mean)};
}

template <class Visit>
PX_HD float idw_pool_value(Visit&& visit) {
  return idw_stats(visit).y;
}

// ---------------------------------------------------------------- backward
// dy/da_j of one window for each valid a_j, from a state taken once per window (the
// torch ops' CPU and CUDA backward kernels; ada_pool.py's *_windows_backward is the same
// math). In the scaled units, where k cancels:
//   eDSCW: w_j (1 + (a_j - y) dDSC/da_j) + t,  t = (1/n) sum_i w_i (a_i - y) dDSC/dm_i;
//   IDW:   w_j (1 - r_j) + t,  r_i = (a_i - y) / (a_i - m),  t = (1/n) sum_i w_i r_i; where
//          some a_i equals m (y = m, not differentiable there) the mean's gradient 1/n.
// ada_unscale's clamp only guards rounding and is not differentiated. adaPool's gradient
// is beta * eDSCW's plus (1 - beta) * SoftPool's (soft_pool.h, beta 1).
struct EdscwGrad {
  EdscwStats st;
  float t;
};

template <class Visit>
PX_HD EdscwGrad edscw_grad_state(Visit&& visit) {
  const EdscwStats st = edscw_stats(visit);
  if (st.mean.n == 0) return EdscwGrad{st, 0.0f};
  float acc = 0.0f;
  visit([&](float a) {
    const float ak = a * st.mean.k;
    const Dsc p = dsc_parts(ak, st.mean.mk);
    // (a - y) / q first: dm_q / q overflows where q is subnormal
    if (p.q > 0.0f) acc += fast_exp(p.d) * ((ak - st.yk) / p.q * p.dm_q);
  });
  return EdscwGrad{st, acc / (st.s * (float)st.mean.n)};
}

PX_HD float edscw_grad_local(const EdscwGrad& g, float a) {
  const float ak = a * g.st.mean.k;
  const Dsc p = dsc_parts(ak, g.st.mean.mk);
  const float r = p.q > 0.0f ? (ak - g.st.yk) / p.q * p.da_q : 0.0f;  // (a - y) dDSC/da, as in the state
  return fast_exp(p.d) / g.st.s * (1.0f + r) + g.t;
}

struct IdwGrad {
  IdwStats st;
  float t;
};

template <class Visit>
PX_HD IdwGrad idw_grad_state(Visit&& visit) {
  const IdwStats st = idw_stats(visit);
  if (st.mean.n == 0 || st.dmin == 0.0f) return IdwGrad{st, 0.0f};
  float acc = 0.0f;
  visit([&](float a) {
    const float ak = a * st.mean.k, d = ak - st.mean.mk;
    acc += st.dmin / (d < 0.0f ? -d : d) * ((ak - st.yk) / d);
  });
  return IdwGrad{st, acc / (st.s * (float)st.mean.n)};
}

PX_HD float idw_grad_local(const IdwGrad& g, float a) {
  if (g.st.dmin == 0.0f) return 1.0f / (float)g.st.mean.n;  // the hit window: y = m
  const float ak = a * g.st.mean.k, d = ak - g.st.mean.mk;
  const float w = g.st.dmin / (d < 0.0f ? -d : d) / g.st.s;
  return w * (1.0f - (ak - g.st.yk) / d) + g.t;
}

// adaPool's blend; beta is not clamped (the adaPool repository's default path). For beta
// in [0, 1] the result is kept between the two values (rounding near FLT_MAX stays finite).
PX_HD float ada_blend(float beta, float edscw, float em) {
  float y = beta * edscw + (1.0f - beta) * em;
  if (beta >= 0.0f && beta <= 1.0f) {
    const float lo = edscw < em ? edscw : em, hi = edscw < em ? em : edscw;
    y = y < lo ? lo : (y > hi ? hi : y);
  }
  return y;
}

}  // namespace poolexport
