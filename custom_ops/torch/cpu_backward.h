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
// With a larger range (or NaN) e_j could underflow, and the plane takes the per-window
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

// One output row of the shift path: window sums of e and e*x (soft) or r and r^2
// (expectation), then the gradient terms scattered into G. S = stride (0: any).
template <int S>
static inline void window_sums(const float* __restrict a, const float* __restrict b, int64_t n, int64_t s,
                               float* __restrict sa, float* __restrict sb, bool soft) {
  const int64_t st = S ? S : s;
  if (soft) {
    for (int64_t o = 0; o < n; ++o) {
      float e = a[o * st];
      sa[o] += e;
      sb[o] += e * b[o * st];
    }
  } else {
    for (int64_t o = 0; o < n; ++o) {
      float v = b[o * st];
      float r = v > 0.0f ? v : 0.0f;
      sa[o] += r;
      sb[o] += r * r;
    }
  }
}

template <int S>
static inline void scatter_terms(const float* __restrict x, float* __restrict g, int64_t n, int64_t s,
                                 const float* __restrict c, const float* __restrict y, float beta, bool soft) {
  const int64_t st = S ? S : s;
  if (soft) {
    for (int64_t o = 0; o < n; ++o) g[o * st] += c[o] * (1.0f + beta * (x[o * st] - y[o]));
  } else {
    for (int64_t o = 0; o < n; ++o) {
      float v = x[o * st];
      float r = v > 0.0f ? v : 0.0f;
      g[o * st] += c[o] * (2.0f * r - y[o]);
    }
  }
}

PX_DISPATCH static void window_sums_d(const float* a, const float* b, int64_t n, int64_t s, float* sa, float* sb,
                                      bool soft) {
  if (s == 1) window_sums<1>(a, b, n, s, sa, sb, soft);
  else if (s == 2) window_sums<2>(a, b, n, s, sa, sb, soft);
  else window_sums<0>(a, b, n, s, sa, sb, soft);
}

PX_DISPATCH static void scatter_terms_d(const float* x, float* g, int64_t n, int64_t s, const float* c, const float* y,
                                        float beta, bool soft) {
  if (s == 1) scatter_terms<1>(x, g, n, s, c, y, beta, soft);
  else if (s == 2) scatter_terms<2>(x, g, n, s, c, y, beta, soft);
  else scatter_terms<0>(x, g, n, s, c, y, beta, soft);
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

// dX of one (n, c) plane; x, gy, gx point at the plane.
template <class T>
void plane_backward(Op kind, const T* x, const T* gy, T* gx, const RowArgs& args, int64_t plane, BackwardScratch& sc) {
  const Window3& w = args.w;
  const float beta = args.beta;
  const int64_t in_w = w.in[2], pw = w.pad[2], nrows = w.in[0] * w.in[1], plane_in = nrows * in_w;
  const int64_t ow_n = w.out[2], s = w.s[2];
  // padded row: column c is input column c - pw; wide enough for every window tap
  const int64_t wp = std::max(pw + in_w, (ow_n - 1) * s + (w.k[2] - 1) * w.dil[2] + 1);
  const bool soft = kind == Op::kSoft;
  sc.x.assign(nrows * wp, 0.0f);
  float zmax = -__builtin_huge_valf(), zmin = __builtin_huge_valf();
  for (int64_t r = 0; r < nrows; ++r) {
    float* X = sc.x.data() + r * wp + pw;
    for (int64_t j = 0; j < in_w; ++j) X[j] = load(x, r * in_w + j);
    if (soft)
      for (int64_t j = 0; j < in_w; ++j) {
        const float z = beta * X[j];
        zmax = z > zmax ? z : zmax;
        zmin = z < zmin ? z : zmin;
      }
  }
  sc.g.assign(nrows * wp, 0.0f);
  float* G = sc.g.data();
  if (kind == Op::kSample || (soft && !(zmax - zmin <= kSoftShiftRange))) {  // NaN lands here too
    plane_backward_windows(kind, x, gy, G, args, plane);
    for (int64_t i = 0; i < plane_in; ++i) store(gx, i, G[i]);
    return;
  }
  const float* X = sc.x.data();
  const float* E = X;  // expectation: unused
  if (soft) {
    sc.e.resize(nrows * wp);
    exp_shift(X, sc.e.data(), nrows * wp, beta, zmax);
    // padding columns must weigh nothing
    for (int64_t r = 0; r < nrows; ++r) {
      float* Er = sc.e.data() + r * wp;
      for (int64_t j = 0; j < pw; ++j) Er[j] = 0.0f;
      for (int64_t j = pw + in_w; j < wp; ++j) Er[j] = 0.0f;
    }
    E = sc.e.data();
  }
  sc.s.resize(2 * ow_n);
  sc.t.resize(2 * ow_n);
  float *sa = sc.s.data(), *sb = sa + ow_n, *c = sc.t.data(), *y = c + ow_n;
  int64_t orow = 0;
  for (int64_t od = 0; od < w.out[0]; ++od)
    for (int64_t oh = 0; oh < w.out[1]; ++oh, ++orow) {
      sc.rows.clear();
      for_each_window_row(w, od, oh, [&](int64_t off) { sc.rows.push_back(off / in_w); });
      std::fill(sa, sa + 2 * ow_n, 0.0f);
      for (int64_t r : sc.rows)
        for (int64_t kw = 0; kw < w.k[2]; ++kw) {
          const int64_t at = r * wp + kw * w.dil[2];
          window_sums_d(E + at, X + at, ow_n, s, sa, sb, soft);
        }
      for (int64_t o = 0; o < ow_n; ++o) {
        const float g = load(gy, orow * ow_n + o);
        // soft: sa = sum e, sb = sum e*a; expectation: sa = sum r, sb = sum r^2
        const bool any = sa[o] > 0.0f;
        y[o] = any ? sb[o] / sa[o] : 0.0f;
        c[o] = any ? g / sa[o] : 0.0f;
      }
      for (int64_t r : sc.rows)
        for (int64_t kw = 0; kw < w.k[2]; ++kw) {
          const int64_t at = r * wp + kw * w.dil[2];
          scatter_terms_d(X + at, G + at, ow_n, s, c, y, beta, soft);
        }
    }
  for (int64_t r = 0; r < nrows; ++r) {
    const float* Gr = G + r * wp + pw;
    const float* Xr = X + r * wp + pw;
    if (soft) {
      const float* Er = E + r * wp + pw;
      for (int64_t j = 0; j < in_w; ++j) store(gx, r * in_w + j, Er[j] * Gr[j]);
    } else {
      for (int64_t j = 0; j < in_w; ++j) store(gx, r * in_w + j, Xr[j] > 0.0f ? Gr[j] : 0.0f);
    }
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
