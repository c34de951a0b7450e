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
// The shift path holds a - c (c: the plane's value whose beta * c is M) instead of a, so
// window sums of e * (a - c) give d_w = y_w - c and a_j - y_w = (a_j - c) - d_w without
// the cancellation of two large numbers. A plane whose max |a| exceeds kSoftScaleAbove
// (SoftPool) or kMomentScaleAbove (expectation) takes the per-window path too, whose
// scaled sums stay finite.
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
using limits::kSoftShiftRange;

struct BackwardScratch {
  std::vector<float> x, e, g;     // padded plane rows: input, exp, gradient accumulator
  std::vector<float> s, t;        // per output column: window sums, then c_w and y_w
  std::vector<int64_t> rows;      // the window's taps (offsets in the phase-split plane)
};

// Output-row passes of the shift path over phase-split rows (see plane_backward): at[i] is
// window tap i's offset, and every tap reads a contiguous run, so the inner loops
// vectorize. One dispatched call per output row (not per tap): short rows.
PX_DISPATCH static void window_sums(const float* __restrict e, const float* __restrict x, const int64_t* at,
                                    int64_t taps, int64_t n, float* __restrict sa, float* __restrict sb, bool soft) {
  for (int64_t i = 0; i < taps; ++i) {
    const float* __restrict ei = e + at[i];
    const float* __restrict xi = x + at[i];
    if (soft) {
      for (int64_t o = 0; o < n; ++o) {
        sa[o] += ei[o];
        sb[o] += ei[o] * xi[o];
      }
    } else {
      for (int64_t o = 0; o < n; ++o) {
        float r = stochastic_r(xi[o]);  // NaN kept: a window holding NaN gets sa = NaN, no gradient
        sa[o] += r;
        sb[o] += r * r;
      }
    }
  }
}

PX_DISPATCH static void scatter_terms(const float* __restrict x, float* __restrict g, const int64_t* at, int64_t taps,
                                      int64_t n, const float* __restrict c, const float* __restrict y, float beta,
                                      bool soft) {
  for (int64_t i = 0; i < taps; ++i) {
    const float* __restrict xi = x + at[i];
    float* __restrict gi = g + at[i];
    if (soft) {
      for (int64_t o = 0; o < n; ++o) gi[o] += c[o] * (1.0f + beta * (xi[o] - y[o]));
    } else {
      for (int64_t o = 0; o < n; ++o) {
        // NaN read as 0 here: a window holding NaN has c = y = 0 and adds exactly 0
        float r = xi[o] > 0.0f ? xi[o] : 0.0f;
        gi[o] += c[o] * (2.0f * r - y[o]);
      }
    }
  }
}

// dX of the shift path, e * G: 0 where G is 0. An input in no window (stride above the
// window span) has G = 0 but e = exp(NaN) for a NaN x; one in a window holding NaN has a
// NaN G, so NaN still reaches exactly the windows' inputs that hold it.
PX_HD float soft_dx(float e, float g) { return g == 0.0f ? 0.0f : e * g; }

// Strided row copies between an input row and one stride phase (float rows; s = 2
// spelled out so the compiler vectorizes it with shuffles).
PX_DISPATCH static void gather_phase(const float* __restrict src, int64_t s, int64_t n, float* __restrict dst) {
  if (s == 1) for (int64_t t = 0; t < n; ++t) dst[t] = src[t];
  else if (s == 2) for (int64_t t = 0; t < n; ++t) dst[t] = src[2 * t];
  else for (int64_t t = 0; t < n; ++t) dst[t] = src[s * t];
}
PX_DISPATCH static void scatter_phase(const float* __restrict a, const float* __restrict b, int64_t s, int64_t n,
                                      bool soft, float* __restrict dst) {
  // soft: dst = a * b (e * G), exactly 0 where G is 0 (an input in no window, whose e may
  // be NaN: a NaN x); expectation: dst = [a > 0] * b (x, G)
  if (soft) {
    if (s == 2) for (int64_t t = 0; t < n; ++t) dst[2 * t] = soft_dx(a[t], b[t]);
    else for (int64_t t = 0; t < n; ++t) dst[s * t] = soft_dx(a[t], b[t]);
  } else {
    if (s == 2) for (int64_t t = 0; t < n; ++t) dst[2 * t] = (float)(a[t] > 0.0f) * b[t];
    else for (int64_t t = 0; t < n; ++t) dst[s * t] = (float)(a[t] > 0.0f) * b[t];
  }
}

// e = exp(beta * (x - c)) and x -> x - c in place (the shift path's centred values).
PX_DISPATCH static void center_exp(float* __restrict x, float* __restrict e, int64_t n, float beta, float c) {
  for (int64_t j = 0; j < n; ++j) {
    const float d = x[j] - c;
    x[j] = d;
    e[j] = fast_exp(beta * d);
  }
}

#ifdef PX_HAVE_AVX2_PATH
PX_AVX2 static void range_avx2(const float* x, int64_t n, float* hi, float* lo) {
  __m256 h = _mm256_loadu_ps(hi), l = _mm256_loadu_ps(lo);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 z = _mm256_loadu_ps(x + i);
    h = _mm256_max_ps(z, h);
    l = _mm256_min_ps(z, l);
  }
  _mm256_storeu_ps(hi, h);
  _mm256_storeu_ps(lo, l);
  for (; i < n; ++i) {
    const float z = x[i];
    hi[0] = z > hi[0] ? z : hi[0];
    lo[0] = z < lo[0] ? z : lo[0];
  }
}
#endif

// Running max and min of x in 8 lanes (vectorizes without reassociation flags); those of
// beta * x follow (monotonic, and rounding keeps the order). NaN is skipped here; it still
// reaches the gradient through exp.
PX_DISPATCH static void range_lanes(const float* __restrict x, int64_t n, float* __restrict hi,
                                    float* __restrict lo) {
  int64_t i = 0;
#ifdef PX_HAVE_AVX2_PATH
  if (cpu_has_avx2_fma()) {  // max_ps(a, b) is a > b ? a : b lane-wise, as below
    range_avx2(x, n, hi, lo);
    return;
  }
#endif
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) {
      const float z = x[i + l];
      hi[l] = z > hi[l] ? z : hi[l];
      lo[l] = z < lo[l] ? z : lo[l];
    }
  for (; i < n; ++i) {
    const float z = x[i];
    hi[0] = z > hi[0] ? z : hi[0];
    lo[0] = z < lo[0] ? z : lo[0];
  }
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
                             [&](int64_t i) { G[i] += stochastic_expectation_grad(load(x, i), st.s1, st.y, st.k, g); });
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
      if (std::is_same<T, float>::value)
        gather_phase(reinterpret_cast<const float*>(src) + s * t0, s, t1 - t0, X + t0);
      else
        for (int64_t t = t0; t < t1; ++t) X[t] = load(src, s * t);
      for (int64_t t = t1; t < len; ++t) X[t] = 0.0f;
      range_lanes(X + t0, t1 - t0, hi, lo);
    }
  }
  float xmax = zmax, xmin = zmin;  // of x, then of beta * x
  for (int l = 0; l < 8; ++l) {
    xmax = hi[l] > xmax ? hi[l] : xmax;
    xmin = lo[l] < xmin ? lo[l] : xmin;
  }
  const float amax = -xmin > xmax ? -xmin : xmax;
  const float cref = beta < 0.0f ? xmin : xmax;  // beta * cref = M, the plane's maximum of beta * x
  zmax = beta * cref;
  zmin = beta * (beta < 0.0f ? xmax : xmin);
  sc.g.assign(std::max(nrows * rs, plane_in), 0.0f);
  float* G = sc.g.data();
  // max |x| above the scaled paths' limit (or inf): every window through the shared math
  const bool huge = plane_in > 0 && !(amax <= (soft ? limits::kSoftScaleAbove : limits::kMomentScaleAbove));
  if (kind == Op::kSample || huge || (soft && !(zmax - zmin <= kSoftShiftRange))) {
    plane_backward_windows(kind, x, gy, G, args, plane);
    for (int64_t i = 0; i < plane_in; ++i) store(gx, i, G[i]);
    return;
  }
  const float* X = sc.x.data();
  const float* E = X;  // expectation: unused
  if (soft) {
    sc.e.resize(nrows * rs);
    center_exp(sc.x.data(), sc.e.data(), nrows * rs, beta, cref);
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
  int64_t orow = 0;
  for (int64_t od = 0; od < w.out[0]; ++od)
    for (int64_t oh = 0; oh < w.out[1]; ++oh, ++orow) {
      sc.rows.clear();  // the window's taps: offsets of their runs
      for_each_window_row(w, od, oh, [&](int64_t off) {
        for (int64_t kw = 0; kw < w.k[2]; ++kw) {
          const int64_t q = kw * w.dil[2];
          sc.rows.push_back(off / in_w * rs + (q % s) * len + q / s);
        }
      });
      const int64_t taps = (int64_t)sc.rows.size();
      std::fill(sa, sa + 2 * ow_n, 0.0f);
      window_sums(E, X, sc.rows.data(), taps, ow_n, sa, sb, soft);
      for (int64_t o = 0; o < ow_n; ++o) {
        const float g = load(gy, orow * ow_n + o);
        // soft: sa = sum e, sb = sum e*(a - c), y = d; expectation: sa = sum r, sb = sum r^2
        const bool any = sa[o] > 0.0f;
        y[o] = any ? sb[o] / sa[o] : 0.0f;
        c[o] = any ? g / sa[o] : 0.0f;
      }
      scatter_terms(X, G, sc.rows.data(), taps, ow_n, c, y, beta, soft);
    }
  for (int64_t r = 0; r < nrows; ++r)
    for (int64_t p = 0; p < s; ++p) {
      const int64_t at = r * rs + p * len;
      const int64_t t0 = std::min(len, pw > p ? (pw - p + s - 1) / s : 0);
      const int64_t t1 = std::max(t0, std::min(len, (pw + in_w - p + s - 1) / s));
      T* dst = gx + r * in_w + p - pw;
      if (std::is_same<T, float>::value)
        scatter_phase((soft ? E : X) + at + t0, G + at + t0, s, t1 - t0, soft, reinterpret_cast<float*>(dst) + s * t0);
      else if (soft)
        for (int64_t t = t0; t < t1; ++t) store(dst, s * t, soft_dx(E[at + t], G[at + t]));
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
        for_each_in_reduce(g, e, [&](int64_t i) { store(gx, i, stochastic_expectation_grad(load(x, i), st.s1, st.y, st.k, gv)); });
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
