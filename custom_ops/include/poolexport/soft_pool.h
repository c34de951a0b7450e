// SoftPool (Stergiou et al., ICCV 2021): y = sum softmax(beta * a) * a over a window.
// Stable: the window maximum of beta * a is subtracted before exp; float32 accumulation;
// an empty window outputs 0. Finite for every finite window with beta * a finite:
//   y = c + d, c = the value whose beta * c is the window maximum m, d = sum e (a - c) / s
// (differences to c, so a window of equal values gives exactly c and the gradient's a - y
// is exact where it matters). A window whose max |a| exceeds limits::kSoftScaleAbove sums
// the differences scaled by limits::kSoftScale (a power of two: exact but for subnormal
// bits far below the result's ulp) and flushes weights below exp(kExpArgMin) to 0 (the
// clamped ~1.6e-38 weight times a value near FLT_MAX would not be negligible).
#pragma once

#include "common.h"

namespace poolexport {

// One window's forward state: m = max(beta * a) = beta * c, s = sum of weights (>= 1
// unless the window is empty), d = k * (y - c) with k = 1 or kSoftScale (scaled), y = the
// output.
struct SoftPoolStats {
  float m, s, y, c, d;
  bool scaled;
};

// exp(t) for a weight, t <= 0; flushed to 0 below kExpArgMin on the scaled path.
PX_HD float soft_weight(float t, bool scaled) {
  return scaled && t < limits::kExpArgMin ? 0.0f : fast_exp(t);
}

// visit(g) calls g(value) for every window value in window order.
template <class Visit>
PX_HD SoftPoolStats soft_pool_stats(Visit&& visit, float beta) {
  float m = -3.402823466e38f, c = 0.0f, amax = 0.0f;
  int64_t count = 0;
  visit([&](float a) {
    float z = beta * a;
    if (count == 0 || z > m) {
      m = z;
      c = a;
    }
    float v = a < 0.0f ? -a : a;
    amax = v > amax ? v : amax;
    ++count;
  });
  if (count == 0) return SoftPoolStats{m, 0.0f, 0.0f, 0.0f, 0.0f, false};
  const bool scaled = !(amax <= limits::kSoftScaleAbove);  // NaN: the scaled path too
  const float k = scaled ? limits::kSoftScale : 1.0f, ck = c * k;
  float s = 0.0f, sd = 0.0f;
  visit([&](float a) {
    float e = soft_weight(beta * a - m, scaled);
    s += e;
    sd += e == 0.0f ? 0.0f : e * (a * k - ck);
  });
  float d = sd / s;  // s >= 1: the maximum contributes exp(0)
  float y;
  if (scaled) {  // a convex combination: kept inside [-amax, amax] before scaling back
    float ak = amax * k, yk = ck + d;
    yk = yk > ak ? ak : (yk < -ak ? -ak : yk);
    y = yk / k;
  } else {
    y = c + d;
  }
  return SoftPoolStats{m, s, y, c, d, scaled};
}

template <class Visit>
PX_HD float soft_pool_value(Visit&& visit, float beta) {
  return soft_pool_stats(visit, beta).y;
}

// g * dy/da for one window element a: p * (1 + beta * (a - y)), p = exp(beta * a - m) / s,
// a - y = (a - c) - d (scaled by k on the scaled path). An empty window has no elements,
// so s > 0 here.
PX_HD float soft_pool_grad(float a, float beta, const SoftPoolStats& st, float g) {
  const float e = soft_weight(beta * a - st.m, st.scaled);
  if (e == 0.0f) return 0.0f;
  const float k = st.scaled ? limits::kSoftScale : 1.0f;
  const float q = (a * k - st.c * k) - st.d;
  return g / st.s * e * (1.0f + (st.scaled ? beta * q / k : beta * q));
}

// The stats a gradient needs, packed into 3 floats (the CUDA backward's workspace):
// c, s (negative on the scaled path), d; m = beta * c bit for bit.
PX_HD void soft_pool_pack(const SoftPoolStats& st, float* w) {
  w[0] = st.c;
  w[1] = st.scaled ? -st.s : st.s;
  w[2] = st.d;
}
PX_HD SoftPoolStats soft_pool_unpack(const float* w, float beta) {
  const bool scaled = w[1] < 0.0f;
  return SoftPoolStats{beta * w[0], scaled ? -w[1] : w[1], 0.0f, w[0], w[2], scaled};
}

}  // namespace poolexport
