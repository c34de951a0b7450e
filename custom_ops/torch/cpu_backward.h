// CPU backward kernels of the torch ops (the ONNX Runtime kernels are forward only).
//
// Windowed ops: one (n, c) plane per work item, so the gradient of a plane is summed by
// one thread in a fixed order: deterministic, no atomics, no gradient-sized scratch
// beyond the plane. Within a plane, a first pass gives every output window its c_w and
// y_w (below); a second gathers, for each input element, the terms of the windows that
// hold it, in the order a scatter over output rows would add them (the window lists are
// the same for every plane, built once per call). Both passes run along output or
// input columns in vector blocks.
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
  std::vector<float> c, y, gy;    // per output row (zero-padded, see BackwardPlan): c_w, y_w; one row of dY
  std::vector<float> h;           // a float16 plane in float32
};

// The lanes of one block of the shift path's vector loops; row buffers carry this much
// slack past their end, so a last block may read (and write) past a row.
constexpr int64_t kBackwardLanes = 8;  // the AVX2 passes hold one __m256 per block

// Output-row pass of the shift path over phase-split rows (see plane_backward): at[i] is
// window tap i's offset, and every tap reads a contiguous run. Blocks of lanes hold the
// window sums in registers; column o < n gets
//   soft:        c = g / sum e,  y = sum e * (a - c0) / sum e
//   expectation: c = g / sum r,  y = sum r^2 / sum r
// and 0 where the sum is not positive (no weight, or NaN) or o >= n. gy holds the row of
// dY, zero-padded to whole blocks.
static void window_stats_portable(const float* __restrict e, const float* __restrict x, const int64_t* at,
                                  int64_t taps, int64_t n, const float* __restrict gy, float* __restrict c,
                                  float* __restrict y, bool soft) {
  constexpr int64_t L = kBackwardLanes;
  for (int64_t o = 0; o < n; o += L) {
    float sa[L] = {}, sb[L] = {};
    for (int64_t i = 0; i < taps; ++i) {
      const float* __restrict ei = e + at[i] + o;
      const float* __restrict xi = x + at[i] + o;
      if (soft) {
        for (int64_t l = 0; l < L; ++l) {
          sa[l] += ei[l];
          sb[l] += ei[l] * xi[l];
        }
      } else {
        for (int64_t l = 0; l < L; ++l) {
          float r = stochastic_r(xi[l]);  // NaN kept: a window holding NaN gets sa = NaN, no gradient
          sa[l] += r;
          sb[l] += r * r;
        }
      }
    }
    for (int64_t l = 0; l < L; ++l) {
      const bool any = sa[l] > 0.0f && o + l < n;
      y[o + l] = any ? sb[l] / sa[l] : 0.0f;
      c[o + l] = any ? gy[o + l] / sa[l] : 0.0f;
    }
  }
}

// G of one phase run of one input row, columns [0, n) in whole blocks: the sum over the
// windows holding each element (src[j] + t indexes c and y of window j's column for run
// column t; zero-padded rows give 0 where t is past that output row) of
//   soft:        c_w * (1 + beta * (a - y_w))       (a, y_w both centred on c0)
//   expectation: c_w * (2 r - y_w)
// in the order the windows come (output rows ascending, then taps): each element's terms
// are added in the same order as a scatter over output rows would add them. cov is 0 at
// a column in no window: there G = 0 (a NaN a would otherwise meet the zero padding).
static void gather_terms_portable(const float* __restrict x, const float* __restrict cbuf,
                                  const float* __restrict ybuf, const int64_t* src, int64_t nsrc,
                                  const float* __restrict cov, int64_t n, float beta, bool soft, float* __restrict g) {
  constexpr int64_t L = kBackwardLanes;
  for (int64_t t = 0; t < n; t += L) {
    float acc[L] = {}, a[L];
    for (int64_t l = 0; l < L; ++l)  // expectation: NaN read as 0, so a window holding NaN (c = y = 0) adds 0
      a[l] = soft ? x[t + l] : (x[t + l] > 0.0f ? x[t + l] : 0.0f);
    for (int64_t j = 0; j < nsrc; ++j) {
      const float* __restrict cj = cbuf + src[j] + t;
      const float* __restrict yj = ybuf + src[j] + t;
      if (soft)
        for (int64_t l = 0; l < L; ++l) acc[l] += cj[l] * (1.0f + beta * (a[l] - yj[l]));
      else
        for (int64_t l = 0; l < L; ++l) acc[l] += cj[l] * (2.0f * a[l] - yj[l]);
    }
    for (int64_t l = 0; l < L; ++l) g[t + l] = cov[t + l] != 0.0f ? acc[l] : 0.0f;
  }
}

#ifdef PX_HAVE_AVX2_PATH
// The two passes above in AVX2 (the compiler leaves the portable blocks scalar). The same
// operations in the same order, no FMA: results equal the portable ones bit for bit.
PX_AVX2 static void window_stats_avx2(const float* e, const float* x, const int64_t* at, int64_t taps, int64_t n,
                                      const float* gy, float* c, float* y, bool soft) {
  const __m256 zero = _mm256_setzero_ps();
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t o = 0; o < n; o += 8) {
    __m256 sa = zero, sb = zero;
    if (soft) {
      for (int64_t i = 0; i < taps; ++i) {
        const __m256 ev = _mm256_loadu_ps(e + at[i] + o);
        sa = _mm256_add_ps(sa, ev);
        sb = _mm256_add_ps(sb, _mm256_mul_ps(ev, _mm256_loadu_ps(x + at[i] + o)));
      }
    } else {
      for (int64_t i = 0; i < taps; ++i) {
        const __m256 xv = _mm256_loadu_ps(x + at[i] + o);
        const __m256 r = _mm256_andnot_ps(_mm256_cmp_ps(xv, zero, _CMP_LE_OQ), xv);  // stochastic_r: NaN kept
        sa = _mm256_add_ps(sa, r);
        sb = _mm256_add_ps(sb, _mm256_mul_ps(r, r));
      }
    }
    const __m256 live = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32((int)std::min<int64_t>(n - o, 8)), lane));
    const __m256 any = _mm256_and_ps(_mm256_cmp_ps(sa, zero, _CMP_GT_OQ), live);
    _mm256_storeu_ps(y + o, _mm256_and_ps(_mm256_div_ps(sb, sa), any));
    _mm256_storeu_ps(c + o, _mm256_and_ps(_mm256_div_ps(_mm256_loadu_ps(gy + o), sa), any));
  }
}

PX_AVX2 static void gather_terms_avx2(const float* x, const float* cbuf, const float* ybuf, const int64_t* src,
                                      int64_t nsrc, const float* cov, int64_t n, float beta, bool soft, float* g) {
  const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f), two = _mm256_set1_ps(2.0f);
  const __m256 bv = _mm256_set1_ps(beta);
  for (int64_t t = 0; t < n; t += 8) {
    __m256 a = _mm256_loadu_ps(x + t), acc = zero;
    if (soft) {
      for (int64_t j = 0; j < nsrc; ++j) {
        const __m256 d = _mm256_sub_ps(a, _mm256_loadu_ps(ybuf + src[j] + t));
        const __m256 f = _mm256_add_ps(one, _mm256_mul_ps(bv, d));
        acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(cbuf + src[j] + t), f));
      }
    } else {
      a = _mm256_and_ps(a, _mm256_cmp_ps(a, zero, _CMP_GT_OQ));  // NaN read as 0
      const __m256 a2 = _mm256_mul_ps(two, a);
      for (int64_t j = 0; j < nsrc; ++j) {
        const __m256 f = _mm256_sub_ps(a2, _mm256_loadu_ps(ybuf + src[j] + t));
        acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(cbuf + src[j] + t), f));
      }
    }
    _mm256_storeu_ps(g + t, _mm256_and_ps(acc, _mm256_cmp_ps(_mm256_loadu_ps(cov + t), zero, _CMP_NEQ_UQ)));
  }
}
#endif

// vec: the AVX2 passes (BackwardPlan::vec: the CPU has AVX2 + FMA and POOLEXPORT_CPU_ISA
// does not cap it at portable)
static void window_stats(bool vec, const float* e, const float* x, const int64_t* at, int64_t taps, int64_t n,
                         const float* gy, float* c, float* y, bool soft) {
#ifdef PX_HAVE_AVX2_PATH
  if (vec) return window_stats_avx2(e, x, at, taps, n, gy, c, y, soft);
#endif
  window_stats_portable(e, x, at, taps, n, gy, c, y, soft);
}

static void gather_terms(bool vec, const float* x, const float* cbuf, const float* ybuf, const int64_t* src,
                         int64_t nsrc, const float* cov, int64_t n, float beta, bool soft, float* g) {
#ifdef PX_HAVE_AVX2_PATH
  if (vec) return gather_terms_avx2(x, cbuf, ybuf, src, nsrc, cov, n, beta, soft, g);
#endif
  gather_terms_portable(x, cbuf, ybuf, src, nsrc, cov, n, beta, soft, g);
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

// e = exp(beta * (x - c)) and x -> x - c in place (the shift path's centred values), in
// whole blocks of kBackwardLanes: up to n rounded up (the buffers' slack).
PX_DISPATCH static void center_exp_portable(float* __restrict x, float* __restrict e, int64_t n, float beta, float c) {
  for (int64_t j = 0; j < n; ++j) {
    const float d = x[j] - c;
    x[j] = d;
    e[j] = fast_exp(beta * d);
  }
}

#ifdef PX_HAVE_AVX2_PATH
// beta * (x - c) <= 0 (c is the plane's extreme on beta's side), as exp8_nonpos needs
PX_AVX2 static void center_exp_avx2(float* x, float* e, int64_t n, float beta, float c) {
  const __m256 cv = _mm256_set1_ps(c), bv = _mm256_set1_ps(beta);
  for (int64_t j = 0; j < n; j += 8) {
    const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + j), cv);
    _mm256_storeu_ps(x + j, d);
    _mm256_storeu_ps(e + j, exp8_nonpos(_mm256_mul_ps(bv, d)));
  }
}
#endif

static void center_exp(bool vec, float* x, float* e, int64_t n, float beta, float c) {
#ifdef PX_HAVE_AVX2_PATH
  if (vec) return center_exp_avx2(x, e, n, beta, c);
#endif
  center_exp_portable(x, e, (n + kBackwardLanes - 1) / kBackwardLanes * kBackwardLanes, beta, c);
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

// The shift path's layout (see plane_backward) and window lists, the same for every plane:
// built once per call. Rows of c and y (one per output row) hold `lead` zeros, the row's
// columns, then zeros to `crs`, so a gather may index them past either end of the row.
struct BackwardPlan {
  int64_t len = 0, rs = 0;                 // phase run length; phase-split row length, s * len
  int64_t lead = 0, crs = 0;               // c / y rows: zeros before column 0, row stride
  std::vector<int64_t> tap_at, tap_begin;  // output row o's taps: tap_at[tap_begin[o] .. tap_begin[o + 1])
  std::vector<int64_t> src, src_begin;     // run (r, p), index r * s + p: its windows' c / y offsets
  std::vector<float> cov;                  // run column t of phase p lies in a window: cov[p * (len + L) + t]
  std::vector<int64_t> t0, t1;             // phase p's input columns: run columns [t0[p], t1[p])
  bool vec = false;                        // the AVX2 passes (read once per call: cpu_isa() is a getenv)

  explicit BackwardPlan(const Window3& w) {
    constexpr int64_t L = kBackwardLanes;
    const int64_t in_w = w.in[2], pw = w.pad[2], nrows = w.in[0] * w.in[1], ow_n = w.out[2], s = w.s[2];
    const int64_t kw_n = w.k[2], dil = w.dil[2];
    const int64_t wp = std::max(pw + in_w, (ow_n - 1) * s + (kw_n - 1) * dil + 1);
    len = (wp + s - 1) / s;
    rs = s * len;
    for (int64_t p = 0; p < s; ++p) {  // t whose input column s*t + p - pw lies in [0, in_w)
      t0.push_back(std::min(len, pw > p ? (pw - p + s - 1) / s : 0));
      t1.push_back(std::max(t0[p], std::min(len, (pw + in_w - p + s - 1) / s)));
    }
    lead = (kw_n - 1) * dil / s;
    crs = lead + len + L;
    std::vector<std::vector<int64_t>> cover(nrows);  // input row -> output rows holding it, ascending
    tap_begin.push_back(0);
    int64_t orow = 0;
    for (int64_t od = 0; od < w.out[0]; ++od)
      for (int64_t oh = 0; oh < w.out[1]; ++oh, ++orow) {
        for_each_window_row_index(w, od, oh, [&](int64_t r) {
          cover[r].push_back(orow);
          for (int64_t kw = 0; kw < kw_n; ++kw) {
            const int64_t q = kw * dil;
            tap_at.push_back(r * rs + (q % s) * len + q / s);
          }
        });
        tap_begin.push_back((int64_t)tap_at.size());
      }
    src_begin.push_back(0);
    for (int64_t r = 0; r < nrows; ++r)
      for (int64_t p = 0; p < s; ++p) {
        for (int64_t o : cover[r])  // the scatter's order: output rows, then taps
          for (int64_t kw = 0; kw < kw_n; ++kw)
            if (kw * dil % s == p) src.push_back(o * crs + lead - kw * dil / s);
        src_begin.push_back((int64_t)src.size());
      }
#ifdef PX_HAVE_AVX2_PATH
    vec = cpu_has_avx2_fma() && cpu_isa() != Isa::kPortable;
#endif
    cov.assign(s * (len + L), 0.0f);
    for (int64_t kw = 0; kw < kw_n; ++kw)
      for (int64_t o = 0; o < ow_n; ++o) cov[(kw * dil % s) * (len + L) + o + kw * dil / s] = 1.0f;
  }
};

// dX of one (n, c) plane; x, gy, gx point at the plane. The shift path keeps each input
// row padded (column c = input column c - pw) and split into stride phases: phase p holds
// columns p, p + s, p + 2s, ..., so window tap kw of consecutive outputs is the contiguous
// run starting at index kw*dil / s of phase kw*dil % s (the ORT AVX2 kernels' layout).
// It takes two passes: c_w and y_w of every window (window_stats, by output rows), then
// each input run's gradient from the windows holding it (gather_terms): every element's
// G is written once, no read-modify-write of a shared accumulator.
template <class T>
void plane_backward(Op kind, const T* x, const T* gy, T* gx, const RowArgs& args, const BackwardPlan& plan,
                    int64_t plane, BackwardScratch& sc) {
  constexpr int64_t L = kBackwardLanes;
  const Window3& w = args.w;
  const float beta = args.beta;
  const int64_t in_w = w.in[2], pw = w.pad[2], nrows = w.in[0] * w.in[1], plane_in = nrows * in_w;
  const int64_t ow_n = w.out[2], s = w.s[2];
  const int64_t len = plan.len, rs = plan.rs;
  const bool soft = kind == Op::kSoft;
  const float* xf = reinterpret_cast<const float*>(x);  // the plane in float32
  if (!std::is_same<T, float>::value) {
    sc.h.resize(plane_in);
    for (int64_t i = 0; i < plane_in; ++i) sc.h[i] = load(x, i);
    xf = sc.h.data();
  }
  float zmax = -__builtin_huge_valf(), zmin = __builtin_huge_valf();
  float hi[8], lo[8];
  for (int l = 0; l < 8; ++l) {
    hi[l] = zmax;
    lo[l] = zmin;
  }
  range_lanes(xf, plane_in, hi, lo);
  float xmax = zmax, xmin = zmin;  // of x, then of beta * x
  for (int l = 0; l < 8; ++l) {
    xmax = hi[l] > xmax ? hi[l] : xmax;
    xmin = lo[l] < xmin ? lo[l] : xmin;
  }
  const float amax = -xmin > xmax ? -xmin : xmax;
  const float cref = beta < 0.0f ? xmin : xmax;  // beta * cref = M, the plane's maximum of beta * x
  zmax = beta * cref;
  zmin = beta * (beta < 0.0f ? xmax : xmin);
  // max |x| above the scaled paths' limit (or inf): every window through the shared math
  const bool huge = plane_in > 0 && !(amax <= (soft ? limits::kSoftScaleAbove : limits::kMomentScaleAbove));
  if (kind == Op::kSample || huge || (soft && !(zmax - zmin <= kSoftShiftRange))) {
    sc.g.assign(plane_in, 0.0f);
    plane_backward_windows(kind, x, gy, sc.g.data(), args, plane);
    for (int64_t i = 0; i < plane_in; ++i) store(gx, i, sc.g[i]);
    return;
  }
  // phase-split rows, 0 in padding; soft: centred on cref, with e = exp(beta * (x - cref))
  // (one pass over the plane: short per-run calls leave exp's latency exposed), 0 in padding
  sc.x.resize(nrows * rs + L);
  float* X = sc.x.data();
  float* E = X;  // expectation: unused
  for (int64_t r = 0; r < nrows; ++r)
    for (int64_t p = 0; p < s; ++p) {
      const int64_t at = r * rs + p * len, t0 = plan.t0[p], t1 = plan.t1[p];
      std::fill(X + at, X + at + t0, 0.0f);
      gather_phase(xf + r * in_w + p - pw + s * t0, s, t1 - t0, X + at + t0);
      std::fill(X + at + t1, X + at + len, 0.0f);
    }
  std::fill(sc.x.end() - L, sc.x.end(), 0.0f);  // slack read by the last blocks
  if (soft) {
    sc.e.resize(nrows * rs + L);
    E = sc.e.data();
    center_exp(plan.vec, X, E, nrows * rs, beta, cref);  // its last block ends in the slack
    for (int64_t r = 0; r < nrows; ++r)
      for (int64_t p = 0; p < s; ++p) {
        const int64_t at = r * rs + p * len;
        std::fill(E + at, E + at + plan.t0[p], 0.0f);  // padding columns weigh nothing
        std::fill(E + at + plan.t1[p], E + at + len, 0.0f);
      }
    std::fill(sc.x.end() - L, sc.x.end(), 0.0f);
    std::fill(sc.e.end() - L, sc.e.end(), 0.0f);
  }
  // c and y of every window; the rows' padding stays 0 from the first plane on
  const int64_t out_rows = w.out[0] * w.out[1], ow_blocks = (ow_n + L - 1) / L * L;
  if ((int64_t)sc.c.size() != out_rows * plan.crs) {
    sc.c.assign(out_rows * plan.crs, 0.0f);
    sc.y.assign(out_rows * plan.crs, 0.0f);
  }
  sc.gy.assign(ow_blocks, 0.0f);
  for (int64_t orow = 0; orow < out_rows; ++orow) {
    for (int64_t o = 0; o < ow_n; ++o) sc.gy[o] = load(gy, orow * ow_n + o);
    const int64_t at = orow * plan.crs + plan.lead;
    window_stats(plan.vec, E, X, plan.tap_at.data() + plan.tap_begin[orow], plan.tap_begin[orow + 1] - plan.tap_begin[orow],
                 ow_n, sc.gy.data(), sc.c.data() + at, sc.y.data() + at, soft);
  }
  // each input run's G from the windows holding it, then dX (soft: e * G; expectation: [x > 0] * G)
  sc.g.resize(nrows * rs + L);
  float* G = sc.g.data();
  for (int64_t r = 0; r < nrows; ++r)
    for (int64_t p = 0; p < s; ++p) {
      const int64_t at = r * rs + p * len, t0 = plan.t0[p], t1 = plan.t1[p], run = r * s + p;
      gather_terms(plan.vec, X + at + t0, sc.c.data() + t0, sc.y.data() + t0, plan.src.data() + plan.src_begin[run],
                   plan.src_begin[run + 1] - plan.src_begin[run], plan.cov.data() + p * (len + L) + t0, t1 - t0, beta,
                   soft, G + at + t0);
      T* dst = gx + r * in_w + p - pw;
      if (std::is_same<T, float>::value)
        scatter_phase(E + at + t0, G + at + t0, s, t1 - t0, soft, reinterpret_cast<float*>(dst) + s * t0);
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
  const BackwardPlan plan(w);
  const int64_t cost = plane_out * w.k[0] * w.k[1] * w.k[2] * 2 + plane_in;
  pfor(N * C, cost, [&](int64_t b, int64_t e) {
    BackwardScratch sc;
    for (int64_t p = b; p < e; ++p)
      plane_backward(kind, x + p * plane_in, gy + p * plane_out, gx + p * plane_in, args, plan, p, sc);
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
