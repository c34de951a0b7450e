// CPU backward kernels of the torch ops (the ONNX Runtime kernels are forward only).
//
// Windowed ops: one (n, c) plane per work item, so the gradient of a plane is summed by
// one thread in a fixed order: deterministic, no atomics, no gradient-sized scratch
// beyond the plane. Within a plane, each output window's gradient terms are added into a
// plane accumulator G (a scatter, which vectorizes along output columns like the
// forward's passes; a gather over the windows containing each input element would need
// per-element window lists and gives the same sums).
//
// SoftPool: p_wj = exp(beta a_j - m_w) / s_w. Softmax is shift-invariant, so when the
// plane's range of beta * a is at most kSoftShiftRange, one shift M (the plane maximum)
// serves every window: e_j = exp(beta a_j - M) is computed once per input element (not
// once per window element), s_w and y_w are window sums of e and e * a, and
//   dx_j = e_j * sum_w (g_w / s_w) * (1 + beta * (a_j - y_w)).
// With a larger range e_j could underflow, and the plane takes the per-window
// path of the shared math (soft_pool_stats / soft_pool_grad: an exp per window element).
//
// Reduce forms: every input element lies in exactly one window, so each output's window
// is finished by the work item that owns it (also deterministic).
#pragma once

#include <vector>

#include "../ort/cpu_kernels.h"

namespace poolexport {
namespace cpu {

// exp(-60) ~ 9e-27: every e_j and s_w stays a normal float, and g / s_w cannot overflow
// for |g| < 1e11.
constexpr float kSoftShiftRange = 60.0f;

struct BackwardScratch {
  std::vector<float> x, e, g;     // padded plane rows: input, exp, gradient accumulator
  std::vector<float> s, t;        // per output column: window sums, then c_w and y_w
  std::vector<int64_t> rows;      // the window's valid rows (plane row indices)
};

// Output-row passes of the shift path over phase-split rows (see plane_backward): every
// window tap reads a contiguous run, so these loops vectorize.
PX_DISPATCH static void window_sums(const float* __restrict e, const float* __restrict x, int64_t n,
                                    float* __restrict sa, float* __restrict sb, bool soft) {
  if (soft) {
    for (int64_t o = 0; o < n; ++o) {
      sa[o] += e[o];
      sb[o] += e[o] * x[o];
    }
  } else {
    for (int64_t o = 0; o < n; ++o) {
      float r = x[o] > 0.0f ? x[o] : 0.0f;
      sa[o] += r;
      sb[o] += r * r;
    }
  }
}

PX_DISPATCH static void scatter_terms(const float* __restrict x, float* __restrict g, int64_t n,
                                      const float* __restrict c, const float* __restrict y, float beta, bool soft) {
  if (soft) {
    for (int64_t o = 0; o < n; ++o) g[o] += c[o] * (1.0f + beta * (x[o] - y[o]));
  } else {
    for (int64_t o = 0; o < n; ++o) {
      float r = x[o] > 0.0f ? x[o] : 0.0f;
      g[o] += c[o] * (2.0f * r - y[o]);
    }
  }
}

// Running max and min of beta * x in 8 lanes (vectorizes without reassociation flags).
// NaN is skipped here; it still reaches the gradient through exp.
PX_DISPATCH static void range_lanes(const float* __restrict x, int64_t n, float beta, float* __restrict hi,
                                    float* __restrict lo) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) {
      const float z = beta * x[i + l];
      hi[l] = z > hi[l] ? z : hi[l];
      lo[l] = z < lo[l] ? z : lo[l];
    }
  for (; i < n; ++i) {
    const float z = beta * x[i];
    hi[0] = z > hi[0] ? z : hi[0];
    lo[0] = z < lo[0] ? z : lo[0];
  }
}

PX_DISPATCH static void exp_shift(const float* __restrict x, float* __restrict e, int64_t n, float beta, float m) {
  for (int64_t j = 0; j < n; ++j) e[j] = fast_exp(beta * x[j] - m);
}

// Per-window path (sampled picks, and SoftPool planes whose range is too large for one
// shift): the shared per-window math, gradient summed into G (unpadded plane offsets).
template <class T>
void plane_backward_windows(Op kind, const T* x, const T* gy, float* G, const RowArgs& args, int64_t plane) {
  const Window3& w = args.w;
  int64_t o = 0;
  for (int64_t od = 0; od < w.out[0]; ++od)
    for (int64_t oh = 0; oh < w.out[1]; ++oh)
      for (int64_t ow = 0; ow < w.out[2]; ++ow, ++o) {
        const float g = load(gy, o);
        auto visit = [&](auto&& f) { for_each_in_window(w, od, oh, ow, [&](int64_t i) { f(load(x, i)); }); };
        if (kind == Op::kSoft) {
          const SoftPoolStats st = soft_pool_stats(visit, args.beta);
          if (st.s > 0.0f)
            for_each_in_window(w, od, oh, ow, [&](int64_t i) { G[i] += soft_pool_grad(load(x, i), args.beta, st, g); });
        } else if (kind == Op::kExpectation) {
          const StochasticStats st = stochastic_expectation_stats(visit);
          for_each_in_window(w, od, oh, ow,
                             [&](int64_t i) { G[i] += stochastic_expectation_grad(load(x, i), st.s1, st.y, g); });
        } else {
          const int64_t out_plane = w.out[0] * w.out[1] * w.out[2];
          int64_t pick;
          stochastic_sample_pick(visit, (uint64_t)(plane * out_plane + o), args.seed_lo, args.seed_hi, &pick);
          int64_t n = 0;
          if (pick >= 0)
            for_each_in_window(w, od, oh, ow, [&](int64_t i) {
              if (n++ == pick) G[i] += g;
            });
        }
      }
}

// dX of one (n, c) plane; x, gy, gx point at the plane. The shift path keeps each input
// row padded (column c = input column c - pw) and split into stride phases: phase p holds
// columns p, p + s, p + 2s, ..., so window tap kw of consecutive outputs is the contiguous
// run starting at index kw*dil / s of phase kw*dil % s (the ORT AVX2 kernels' layout).
template <class T>
void plane_backward(Op kind, const T* x, const T* gy, T* gx, const RowArgs& args, int64_t plane, BackwardScratch& sc) {
  const Window3& w = args.w;
  const float beta = args.beta;
  const int64_t in_w = w.in[2], pw = w.pad[2], nrows = w.in[0] * w.in[1], plane_in = nrows * in_w;
  const int64_t ow_n = w.out[2], s = w.s[2];
  const int64_t wp = std::max(pw + in_w, (ow_n - 1) * s + (w.k[2] - 1) * w.dil[2] + 1);
  const int64_t len = (wp + s - 1) / s, rs = s * len;  // per phase, per row
  const bool soft = kind == Op::kSoft;
  sc.x.resize(nrows * rs);
  float zmax = -__builtin_huge_valf(), zmin = __builtin_huge_valf();
  float hi[8], lo[8];
  for (int l = 0; l < 8; ++l) {
    hi[l] = zmax;
    lo[l] = zmin;
  }
  for (int64_t r = 0; r < nrows; ++r) {
    for (int64_t p = 0; p < s; ++p) {
      float* X = sc.x.data() + r * rs + p * len;
      // t range whose input column s*t + p - pw lies in [0, in_w)
      const int64_t t0 = std::min(len, pw > p ? (pw - p + s - 1) / s : 0);
      const int64_t t1 = std::max(t0, std::min(len, (pw + in_w - p + s - 1) / s));
      const T* src = x + r * in_w + p - pw;
      for (int64_t t = 0; t < t0; ++t) X[t] = 0.0f;
      for (int64_t t = t0; t < t1; ++t) X[t] = load(src, s * t);
      for (int64_t t = t1; t < len; ++t) X[t] = 0.0f;
      if (soft) range_lanes(X + t0, t1 - t0, beta, hi, lo);
    }
  }
  for (int l = 0; l < 8; ++l) {
    zmax = hi[l] > zmax ? hi[l] : zmax;
    zmin = lo[l] < zmin ? lo[l] : zmin;
  }
  sc.g.assign(std::max(nrows * rs, plane_in), 0.0f);
  float* G = sc.g.data();
  if (kind == Op::kSample || (soft && !(zmax - zmin <= kSoftShiftRange))) {
    plane_backward_windows(kind, x, gy, G, args, plane);
    for (int64_t i = 0; i < plane_in; ++i) store(gx, i, G[i]);
    return;
  }
  const float* X = sc.x.data();
  const float* E = X;  // expectation: unused
  if (soft) {
    sc.e.resize(nrows * rs);
    exp_shift(X, sc.e.data(), nrows * rs, beta, zmax);
    for (int64_t r = 0; r < nrows; ++r)  // padding columns weigh nothing
      for (int64_t p = 0; p < s; ++p) {
        float* Er = sc.e.data() + r * rs + p * len;
        const int64_t t0 = std::min(len, pw > p ? (pw - p + s - 1) / s : 0);
        const int64_t t1 = std::max(t0, std::min(len, (pw + in_w - p + s - 1) / s));
        for (int64_t t = 0; t < t0; ++t) Er[t] = 0.0f;
        for (int64_t t = t1; t < len; ++t) Er[t] = 0.0f;
      }
    E = sc.e.data();
  }
  sc.s.resize(2 * ow_n);
  sc.t.resize(2 * ow_n);
  float *sa = sc.s.data(), *sb = sa + ow_n, *c = sc.t.data(), *y = c + ow_n;
  auto tap = [&](int64_t r, int64_t kw) { const int64_t q = kw * w.dil[2]; return r * rs + (q % s) * len + q / s; };
  int64_t orow = 0;
  for (int64_t od = 0; od < w.out[0]; ++od)
    for (int64_t oh = 0; oh < w.out[1]; ++oh, ++orow) {
      sc.rows.clear();
      for_each_window_row(w, od, oh, [&](int64_t off) { sc.rows.push_back(off / in_w); });
      std::fill(sa, sa + 2 * ow_n, 0.0f);
      for (int64_t r : sc.rows)
        for (int64_t kw = 0; kw < w.k[2]; ++kw) window_sums(E + tap(r, kw), X + tap(r, kw), ow_n, sa, sb, soft);
      for (int64_t o = 0; o < ow_n; ++o) {
        const float g = load(gy, orow * ow_n + o);
        // soft: sa = sum e, sb = sum e*a; expectation: sa = sum r, sb = sum r^2
        const bool any = sa[o] > 0.0f;
        y[o] = any ? sb[o] / sa[o] : 0.0f;
        c[o] = any ? g / sa[o] : 0.0f;
      }
      for (int64_t r : sc.rows)
        for (int64_t kw = 0; kw < w.k[2]; ++kw) scatter_terms(X + tap(r, kw), G + tap(r, kw), ow_n, c, y, beta, soft);
    }
  for (int64_t r = 0; r < nrows; ++r)
    for (int64_t p = 0; p < s; ++p) {
      const int64_t at = r * rs + p * len;
      const int64_t t0 = std::min(len, pw > p ? (pw - p + s - 1) / s : 0);
      const int64_t t1 = std::max(t0, std::min(len, (pw + in_w - p + s - 1) / s));
      T* dst = gx + r * in_w + p - pw;
      if (soft)
        for (int64_t t = t0; t < t1; ++t) store(dst, s * t, E[at + t] * G[at + t]);
      else
        for (int64_t t = t0; t < t1; ++t) store(dst, s * t, (float)(X[at + t] > 0.0f) * G[at + t]);
    }
}

template <class T, class PFor>
void window_backward(Op kind, const T* x, const T* gy, T* gx, int64_t N, int64_t C, const RowArgs& args, PFor&& pfor) {
  const Window3& w = args.w;
  const int64_t plane_in = w.in[0] * w.in[1] * w.in[2], plane_out = w.out[0] * w.out[1] * w.out[2];
  if (plane_out == 0) {  // no window: no gradient
    for (int64_t i = 0; i < N * C * plane_in; ++i) store(gx, i, 0.0f);
    return;
  }
  const int64_t cost = plane_out * w.k[0] * w.k[1] * w.k[2] * 2 + plane_in;
  pfor(N * C, cost, [&](int64_t b, int64_t e) {
    BackwardScratch sc;
    for (int64_t p = b; p < e; ++p)
      plane_backward(kind, x + p * plane_in, gy + p * plane_out, gx + p * plane_in, args, p, sc);
  });
}

template <class T, class PFor>
void reduce_backward(Op kind, const T* x, const T* gy, T* gx, const Reduce6& g, float beta, uint32_t lo, uint32_t hi,
                     PFor&& pfor) {
  pfor(g.outputs, 3 * g.window + 1, [&](int64_t b, int64_t end) {
    for (int64_t e = b; e < end; ++e) {
      const float gv = load(gy, e);
      auto visit = [&](auto&& f) { for_each_in_reduce(g, e, [&](int64_t i) { f(load(x, i)); }); };
      if (kind == Op::kSoft) {
        const SoftPoolStats st = soft_pool_stats(visit, beta);
        for_each_in_reduce(g, e, [&](int64_t i) { store(gx, i, soft_pool_grad(load(x, i), beta, st, gv)); });
      } else if (kind == Op::kExpectation) {
        const StochasticStats st = stochastic_expectation_stats(visit);
        for_each_in_reduce(g, e, [&](int64_t i) { store(gx, i, stochastic_expectation_grad(load(x, i), st.s1, st.y, gv)); });
      } else {
        int64_t pick, n = 0;
        stochastic_sample_pick(visit, (uint64_t)e, lo, hi, &pick);
        for_each_in_reduce(g, e, [&](int64_t i) { store(gx, i, n++ == pick ? gv : 0.0f); });
      }
    }
  });
}

}  // namespace cpu
}  // namespace poolexport
