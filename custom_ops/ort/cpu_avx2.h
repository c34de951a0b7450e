// AVX2 + FMA row kernels for SoftPool and StochasticPool (expectation), picked at run time
// when the CPU has both (the library itself targets any x86-64). One output row at a time,
// eight output columns per step with the whole window held in registers: no accumulator
// arrays, one division per eight outputs. Input rows arrive split into stride phases
// (phase p holds padded columns p, p+s, p+2s, ...), so the window column kw reads a
// contiguous run of its phase and every load is a plain unaligned vector load.
// The FMAs here are explicit intrinsics: the sampled pick never comes here and keeps the
// build's -ffp-contract=off rounding.
#pragma once

#include <stdint.h>

// Not tied to POOLEXPORT_NO_DISPATCH (that one turns off target_clones, which the
// AddressSanitizer build cannot use): plain target attributes work there, so the ASan
// fuzz test runs this path too.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(POOLEXPORT_NO_AVX2)
#define PX_HAVE_AVX2_PATH 1
#include <immintrin.h>

namespace poolexport {
namespace cpu {

inline bool cpu_has_avx2_fma() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}

#define PX_AVX2 __attribute__((target("avx2,fma")))

// fast_exp of common.h in eight lanes for arguments <= 0 (z minus its window maximum), with
// FMA in the reduction and the polynomial (same constants; within a few ulp of it).
// Lane-wise the same NaN and clamp behaviour: max_ps(a, b) is a > b ? a : b, so a NaN
// argument stays NaN; fast_exp's upper clamp never applies here.
PX_AVX2 static inline __m256 exp8_nonpos(__m256 x) {
  x = _mm256_max_ps(_mm256_set1_ps(limits::kExpArgMin), x);
  const __m256 magic = _mm256_set1_ps(12582912.0f);
  __m256 k = _mm256_sub_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), magic), magic);
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(k), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// One output row. zrow[i] / xrow[i] point at window tap i's phase run (already offset by
// that tap's start), for taps in window order; output columns [o0, o1) (whole vectors)
// go to out[o0, o1). SoftPool: zrow holds beta * x with -inf padding, xrow x with 0.
PX_AVX2 static void soft_row_avx2(const float* const* zrow, const float* const* xrow, int64_t taps, int64_t o0,
                                  int64_t o1, float* out) {
  int64_t o = o0;
  // two vectors of outputs per step: two independent exp chains per tap keep the FMA
  // units busy (the polynomial is one long dependency chain)
  for (; o + 16 <= o1; o += 16) {
    __m256 m = _mm256_set1_ps(-3.402823466e38f), m2 = m;
    for (int64_t i = 0; i < taps; ++i) {
      m = _mm256_max_ps(m, _mm256_loadu_ps(zrow[i] + o));
      m2 = _mm256_max_ps(m2, _mm256_loadu_ps(zrow[i] + o + 8));
    }
    __m256 se = _mm256_setzero_ps(), sa = se, se2 = se, sa2 = se;
    for (int64_t i = 0; i < taps; ++i) {
      __m256 e = exp8_nonpos(_mm256_sub_ps(_mm256_loadu_ps(zrow[i] + o), m));
      __m256 e2 = exp8_nonpos(_mm256_sub_ps(_mm256_loadu_ps(zrow[i] + o + 8), m2));
      se = _mm256_add_ps(se, e);
      se2 = _mm256_add_ps(se2, e2);
      sa = _mm256_fmadd_ps(e, _mm256_loadu_ps(xrow[i] + o), sa);
      sa2 = _mm256_fmadd_ps(e2, _mm256_loadu_ps(xrow[i] + o + 8), sa2);
    }
    _mm256_storeu_ps(out + o, _mm256_div_ps(sa, se));
    _mm256_storeu_ps(out + o + 8, _mm256_div_ps(sa2, se2));
  }
  for (; o < o1; o += 8) {
    __m256 m = _mm256_set1_ps(-3.402823466e38f);
    for (int64_t i = 0; i < taps; ++i) m = _mm256_max_ps(m, _mm256_loadu_ps(zrow[i] + o));
    __m256 se = _mm256_setzero_ps(), sa = _mm256_setzero_ps();
    for (int64_t i = 0; i < taps; ++i) {
      __m256 e = exp8_nonpos(_mm256_sub_ps(_mm256_loadu_ps(zrow[i] + o), m));
      se = _mm256_add_ps(se, e);
      sa = _mm256_fmadd_ps(e, _mm256_loadu_ps(xrow[i] + o), sa);
    }
    _mm256_storeu_ps(out + o, _mm256_div_ps(sa, se));
  }
}

// StochasticPool expectation: sum(r^2) / sum(r), r = max(x, 0), 0 where sum(r) is 0; r
// keeps NaN and so does the ratio (stochastic_pool.h stochastic_r / stochastic_ratio).
PX_AVX2 static void moment_row_avx2(const float* const* xrow, int64_t taps, int64_t o0, int64_t o1, float* out) {
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t o = o0; o < o1; o += 8) {
    __m256 s1 = zero, s2 = zero;
    for (int64_t i = 0; i < taps; ++i) {
      __m256 v = _mm256_loadu_ps(xrow[i] + o);
      __m256 r = _mm256_andnot_ps(_mm256_cmp_ps(v, zero, _CMP_LE_OQ), v);  // v <= 0 ? 0 : v (NaN kept)
      s1 = _mm256_add_ps(s1, r);
      s2 = _mm256_fmadd_ps(r, r, s2);
    }
    __m256 none = _mm256_cmp_ps(s1, zero, _CMP_LE_OQ);  // NaN s1 (a NaN in the window) is not
    _mm256_storeu_ps(out + o, _mm256_andnot_ps(none, _mm256_div_ps(s2, s1)));
  }
}

// Stride-phase split of one padded row: phase p, index t <- padded column s*t + p, that is
// input column s*t + p - pw (fill outside [0, in_w)). Plain float rows here.
PX_AVX2 static void split_phases_avx2(const float* src, int64_t in_w, int64_t pw, int64_t s, int64_t len, float fill,
                                      float scale, float* dst) {
  for (int64_t p = 0; p < s; ++p) {
    float* d = dst + p * len;
    // t range with 0 <= s*t + p - pw < in_w
    int64_t t0 = pw > p ? (pw - p + s - 1) / s : 0;
    int64_t t1 = pw + in_w > p ? (pw + in_w - p + s - 1) / s : 0;
    t0 = t0 < len ? t0 : len;
    t1 = t1 < len ? t1 : len;
    for (int64_t t = 0; t < t0; ++t) d[t] = fill;
    const float* b = src + p - pw;
    if (s == 1)
      for (int64_t t = t0; t < t1; ++t) d[t] = scale * b[t];
    else if (s == 2)
      for (int64_t t = t0; t < t1; ++t) d[t] = scale * b[2 * t];
    else
      for (int64_t t = t0; t < t1; ++t) d[t] = scale * b[s * t];
    for (int64_t t = t1 > t0 ? t1 : t0; t < len; ++t) d[t] = fill;
  }
}

// Stride 2, both buffers in one pass over the source row: X phases (0 fill) and, when z
// is given, Z = beta * x phases (-inf fill). len is a multiple of 8: 16-column blocks are
// de-interleaved with shuffles; blocks that cross the row's ends go through a small
// zero-filled copy and a validity mask.
PX_AVX2 static inline void deinterleave8(__m256 lo, __m256 hi, __m256* ev, __m256* od) {
  // [a0 a2 b0 b2 | a4 a6 b4 b6] -> [a0 a2 a4 a6 b0 b2 b4 b6]
  *ev = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0x88)), 0xD8));
  *od = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0xDD)), 0xD8));
}

PX_AVX2 static void split2_avx2(const float* src, int64_t in_w, int64_t pw, int64_t len, float beta, float* x,
                                float* z) {
  const __m256 vb = _mm256_set1_ps(beta), ninf = _mm256_set1_ps(-__builtin_huge_valf());
  for (int64_t t = 0; t < len; t += 8) {
    const int64_t c0 = 2 * t - pw;  // source column of lane 0
    __m256 ev, od, ok_ev, ok_od;
    const bool inside = c0 >= 0 && c0 + 16 <= in_w;
    if (inside) {
      deinterleave8(_mm256_loadu_ps(src + c0), _mm256_loadu_ps(src + c0 + 8), &ev, &od);
    } else if (c0 + 16 <= 0 || c0 >= in_w) {  // all padding
      ev = od = _mm256_setzero_ps();
      ok_ev = ok_od = _mm256_setzero_ps();
    } else {  // crosses an end: masked loads (masked-off lanes are never touched)
      const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
      const __m256i i0 = _mm256_add_epi32(_mm256_set1_epi32((int32_t)c0), lane);
      const __m256i i1 = _mm256_add_epi32(i0, _mm256_set1_epi32(8));
      const __m256i lim = _mm256_set1_epi32((int32_t)in_w);
      // 0 <= i < in_w as all-ones lanes
      __m256i m0 = _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_setzero_si256(), i0), _mm256_cmpgt_epi32(lim, i0));
      __m256i m1 = _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_setzero_si256(), i1), _mm256_cmpgt_epi32(lim, i1));
      deinterleave8(_mm256_maskload_ps(src + c0, m0), _mm256_maskload_ps(src + c0 + 8, m1), &ev, &od);
      deinterleave8(_mm256_castsi256_ps(m0), _mm256_castsi256_ps(m1), &ok_ev, &ok_od);
    }
    _mm256_storeu_ps(x + t, ev);
    _mm256_storeu_ps(x + len + t, od);
    if (z) {
      __m256 ze = _mm256_mul_ps(vb, ev), zo = _mm256_mul_ps(vb, od);
      if (!inside) {  // padding: -inf (blendv takes the second operand where the mask is set)
        ze = _mm256_blendv_ps(ninf, ze, ok_ev);
        zo = _mm256_blendv_ps(ninf, zo, ok_od);
      }
      _mm256_storeu_ps(z + t, ze);
      _mm256_storeu_ps(z + len + t, zo);
    }
  }
}

// StochasticPool expectation, separable: acc1/acc2 (in_w floats rounded up to 8) get
// r = max(x, 0) and r^2 of one input row, summed over the window's rows (first: set).
PX_AVX2 static void accum_moments_avx2(const float* src, int64_t n, bool first, float* acc1, float* acc2) {
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t i = 0; i < n; i += 8) {
    __m256 v;
    if (i + 8 <= n) {
      v = _mm256_loadu_ps(src + i);
    } else {  // tail: masked load, lanes past the row read as 0
      const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
      v = _mm256_maskload_ps(src + i, _mm256_cmpgt_epi32(_mm256_set1_epi32((int32_t)(n - i)), lane));
    }
    __m256 r = _mm256_andnot_ps(_mm256_cmp_ps(v, zero, _CMP_LE_OQ), v);  // NaN kept
    if (first) {
      _mm256_storeu_ps(acc1 + i, r);
      _mm256_storeu_ps(acc2 + i, _mm256_mul_ps(r, r));
    } else {
      _mm256_storeu_ps(acc1 + i, _mm256_add_ps(_mm256_loadu_ps(acc1 + i), r));
      _mm256_storeu_ps(acc2 + i, _mm256_fmadd_ps(r, r, _mm256_loadu_ps(acc2 + i)));
    }
  }
}

// Stride 2, fused: r and r^2 of the window's rows summed per column in registers, then
// de-interleaved straight into the two phase buffers (p1: sum r, p2: sum r^2; each two
// phases of len, a multiple of 8; padding columns 0). Same block structure as split2_avx2.
PX_AVX2 static void moments_split2_avx2(const float* const* rows, int64_t nrows, int64_t in_w, int64_t pw, int64_t len,
                                        float* p1, float* p2) {
  const __m256 zero = _mm256_setzero_ps();
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t t = 0; t < len; t += 8) {
    const int64_t c0 = 2 * t - pw;
    __m256 a1 = zero, b1 = zero, a2 = zero, b2 = zero;  // lo / hi 8 columns: sum r, sum r^2
    if (c0 >= 0 && c0 + 16 <= in_w) {
      for (int64_t r = 0; r < nrows; ++r) {
        __m256 lo = _mm256_loadu_ps(rows[r] + c0), hi = _mm256_loadu_ps(rows[r] + c0 + 8);
        lo = _mm256_andnot_ps(_mm256_cmp_ps(lo, zero, _CMP_LE_OQ), lo);
        hi = _mm256_andnot_ps(_mm256_cmp_ps(hi, zero, _CMP_LE_OQ), hi);
        a1 = _mm256_add_ps(a1, lo);
        b1 = _mm256_add_ps(b1, hi);
        a2 = _mm256_fmadd_ps(lo, lo, a2);
        b2 = _mm256_fmadd_ps(hi, hi, b2);
      }
    } else if (c0 + 16 > 0 && c0 < in_w) {  // crosses an end: masked loads
      const __m256i i0 = _mm256_add_epi32(_mm256_set1_epi32((int32_t)c0), lane);
      const __m256i i1 = _mm256_add_epi32(i0, _mm256_set1_epi32(8));
      const __m256i lim = _mm256_set1_epi32((int32_t)in_w);
      __m256i m0 = _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_setzero_si256(), i0), _mm256_cmpgt_epi32(lim, i0));
      __m256i m1 = _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_setzero_si256(), i1), _mm256_cmpgt_epi32(lim, i1));
      for (int64_t r = 0; r < nrows; ++r) {
        __m256 lo = _mm256_maskload_ps(rows[r] + c0, m0), hi = _mm256_maskload_ps(rows[r] + c0 + 8, m1);
        lo = _mm256_andnot_ps(_mm256_cmp_ps(lo, zero, _CMP_LE_OQ), lo);
        hi = _mm256_andnot_ps(_mm256_cmp_ps(hi, zero, _CMP_LE_OQ), hi);
        a1 = _mm256_add_ps(a1, lo);
        b1 = _mm256_add_ps(b1, hi);
        a2 = _mm256_fmadd_ps(lo, lo, a2);
        b2 = _mm256_fmadd_ps(hi, hi, b2);
      }
    }
    __m256 ev, od;
    deinterleave8(a1, b1, &ev, &od);
    _mm256_storeu_ps(p1 + t, ev);
    _mm256_storeu_ps(p1 + len + t, od);
    deinterleave8(a2, b2, &ev, &od);
    _mm256_storeu_ps(p2 + t, ev);
    _mm256_storeu_ps(p2 + len + t, od);
  }
}

// ... then the window's columns: t1[k] / t2[k] point at column tap k's run of the split
// row sums; out = sum(r^2) / sum(r), 0 where sum(r) is 0.
PX_AVX2 static void moment_sums_row_avx2(const float* const* t1, const float* const* t2, int64_t kw_n, int64_t o0,
                                         int64_t o1, float* out) {
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t o = o0; o < o1; o += 8) {
    __m256 s1 = zero, s2 = zero;
    for (int64_t k = 0; k < kw_n; ++k) {
      s1 = _mm256_add_ps(s1, _mm256_loadu_ps(t1[k] + o));
      s2 = _mm256_add_ps(s2, _mm256_loadu_ps(t2[k] + o));
    }
    _mm256_storeu_ps(out + o, _mm256_andnot_ps(_mm256_cmp_ps(s1, zero, _CMP_LE_OQ), _mm256_div_ps(s2, s1)));
  }
}

// 16 columns of x (0 in padding) and z = beta * x (-inf in padding) from p; m0 / m1 mark
// the valid columns unless the block is wholly inside or wholly padding.
PX_AVX2 static inline void load_xz16(const float* p, bool inside, bool empty, __m256i m0, __m256i m1, __m256 vb,
                                     __m256* xl, __m256* xh, __m256* zl, __m256* zh) {
  const __m256 ninf = _mm256_set1_ps(-__builtin_huge_valf());
  if (inside) {
    *xl = _mm256_loadu_ps(p);
    *xh = _mm256_loadu_ps(p + 8);
    *zl = _mm256_mul_ps(vb, *xl);
    *zh = _mm256_mul_ps(vb, *xh);
  } else if (empty) {
    *xl = *xh = _mm256_setzero_ps();
    *zl = *zh = ninf;
  } else {  // masked-off lanes are never touched
    *xl = _mm256_maskload_ps(p, m0);
    *xh = _mm256_maskload_ps(p + 8, m1);
    *zl = _mm256_blendv_ps(ninf, _mm256_mul_ps(vb, *xl), _mm256_castsi256_ps(m0));
    *zh = _mm256_blendv_ps(ninf, _mm256_mul_ps(vb, *xh), _mm256_castsi256_ps(m1));
  }
}

// SoftPool with a window 2 columns wide at stride 2 (the usual k2 s2), fused: the window's
// rows are loaded once, 16 columns (8 outputs) at a time, z = beta * x in registers; the
// window maximum is the column-wise maximum over rows folded over each column pair, spread
// back onto both columns; exp sums run per column and are folded the same way. No split
// buffers. Sums fold rows first, then the column pair: a rounding-level reordering of the
// window order.
PX_AVX2 static void soft_k2s2_row_avx2(const float* const* rows, int64_t nrows, int64_t in_w, int64_t pw, float beta,
                                       int64_t n8, float* out) {
  const __m256 zero = _mm256_setzero_ps(), vb = _mm256_set1_ps(beta);
  const __m256 lowest = _mm256_set1_ps(-3.402823466e38f);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i dup_lo = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3), dup_hi = _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7);
  for (int64_t t = 0; t < n8; t += 8) {
    const int64_t c0 = 2 * t - pw;
    const bool inside = c0 >= 0 && c0 + 16 <= in_w;
    __m256i m0 = _mm256_set1_epi32(-1), m1 = m0;
    if (!inside) {
      const __m256i i0 = _mm256_add_epi32(_mm256_set1_epi32((int32_t)c0), lane);
      const __m256i i1 = _mm256_add_epi32(i0, _mm256_set1_epi32(8));
      const __m256i lim = _mm256_set1_epi32((int32_t)in_w);
      m0 = _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_setzero_si256(), i0), _mm256_cmpgt_epi32(lim, i0));
      m1 = _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_setzero_si256(), i1), _mm256_cmpgt_epi32(lim, i1));
    }
    const bool empty = !inside && (c0 + 16 <= 0 || c0 >= in_w);
    __m256 xl, xh, zl, zh, ml = lowest, mh = lowest;
    for (int64_t r = 0; r < nrows; ++r) {
      load_xz16(rows[r] + c0, inside, empty, m0, m1, vb, &xl, &xh, &zl, &zh);
      ml = _mm256_max_ps(ml, zl);
      mh = _mm256_max_ps(mh, zh);
    }
    __m256 ev, od;
    deinterleave8(ml, mh, &ev, &od);
    const __m256 m = _mm256_max_ps(ev, od);  // window maximum per output
    const __m256 Ml = _mm256_permutevar8x32_ps(m, dup_lo), Mh = _mm256_permutevar8x32_ps(m, dup_hi);
    __m256 sel = zero, seh = zero, sal = zero, sah = zero;
    for (int64_t r = 0; r < nrows; ++r) {
      load_xz16(rows[r] + c0, inside, empty, m0, m1, vb, &xl, &xh, &zl, &zh);
      __m256 el = exp8_nonpos(_mm256_sub_ps(zl, Ml)), eh = exp8_nonpos(_mm256_sub_ps(zh, Mh));
      sel = _mm256_add_ps(sel, el);
      seh = _mm256_add_ps(seh, eh);
      sal = _mm256_fmadd_ps(el, xl, sal);
      sah = _mm256_fmadd_ps(eh, xh, sah);
    }
    __m256 se, sa;
    deinterleave8(sel, seh, &ev, &od);
    se = _mm256_add_ps(ev, od);
    deinterleave8(sal, sah, &ev, &od);
    sa = _mm256_add_ps(ev, od);
    _mm256_storeu_ps(out + t, _mm256_div_ps(sa, se));
  }
}

}  // namespace cpu
}  // namespace poolexport
#endif
