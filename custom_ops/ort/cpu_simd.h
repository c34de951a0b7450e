// Lane types for the CPU kernels that are written once over a vector width (soft_shared.inc):
// AVX-512 (16 lanes), AVX2 + FMA (8 lanes) and plain C++ (16 lanes, the portable path, which
// also runs the 16-lane logic of the AVX-512 path on every machine). Each lane type has the
// same small set of operations; the instruction set is picked at run time (cpu_isa()).
// The FMAs here are explicit: the sampled pick never comes here and keeps the build's
// -ffp-contract=off rounding.
#pragma once

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "poolexport/common.h"

namespace poolexport {
namespace cpu {

enum class Isa : int { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };

inline const char* isa_name(Isa isa) {
  return isa == Isa::kAvx512 ? "avx512" : isa == Isa::kAvx2 ? "avx2" : "portable";
}

// ---- portable: 16 lanes of plain C++ (no FMA: two roundings where the others fuse) ----
struct LanesPortable {
  static constexpr int W = 16;
  static_assert(W == limits::kLanesPortable, "limits.h states the lane widths");
  struct R {
    float v[16];
  };
#define PX_EACH for (int l = 0; l < 16; ++l)
  static inline R load(const float* p) { R r; memcpy(r.v, p, sizeof r.v); return r; }
  // lanes >= n hold fill; the memory past n is never read
  static inline R load_n(const float* p, int64_t n, float fill) { R r; PX_EACH r.v[l] = l < n ? p[l] : fill; return r; }
  static inline void store(float* p, R a) { memcpy(p, a.v, sizeof a.v); }
  static inline void store_n(float* p, R a, int64_t n) { PX_EACH if (l < n) p[l] = a.v[l]; }
  // lanes >= n set to +0
  static inline R keep_first_n(R a, int64_t n) { PX_EACH a.v[l] = l < n ? a.v[l] : 0.0f; return a; }
  // lane l reads p[l * stride] for l < n, else holds fill (one plane per lane, reduce_plane.inc)
  struct I {
    int64_t v[16];
  };
  static inline I lane_offsets(int64_t stride) { I r; PX_EACH r.v[l] = l * stride; return r; }
  static inline R gather_n(const float* p, I off, int64_t n, float fill) { R r; PX_EACH r.v[l] = l < n ? p[off.v[l]] : fill; return r; }
  // out[i] lane l = p[l * stride + i] (i < W) for l < n, else 0: W rows of W floats transposed
  static inline void transpose_n(const float* p, int64_t stride, int64_t n, R* out) {
    for (int i = 0; i < 16; ++i) PX_EACH out[i].v[l] = l < n ? p[l * stride + i] : 0.0f;
  }
  static inline R set1(float f) { R r; PX_EACH r.v[l] = f; return r; }
  // bit l set where a[l] <= b[l] (clear where either is NaN)
  static inline uint32_t le_bits(R a, R b) { uint32_t m = 0; PX_EACH m |= (a.v[l] <= b.v[l] ? 1u : 0u) << l; return m; }
  static inline R add(R a, R b) { PX_EACH a.v[l] += b.v[l]; return a; }
  static inline R sub(R a, R b) { PX_EACH a.v[l] -= b.v[l]; return a; }
  static inline R mul(R a, R b) { PX_EACH a.v[l] *= b.v[l]; return a; }
  static inline R mul_add(R a, R b, R c) { PX_EACH a.v[l] = a.v[l] * b.v[l] + c.v[l]; return a; }
  static inline R max(R a, R b) { PX_EACH a.v[l] = a.v[l] > b.v[l] ? a.v[l] : b.v[l]; return a; }
  static inline R min(R a, R b) { PX_EACH a.v[l] = a.v[l] < b.v[l] ? a.v[l] : b.v[l]; return a; }
  // den == 0 ? 0 : num / den (a NaN den stays NaN)
  static inline R div_or_zero(R num, R den) { PX_EACH num.v[l] = den.v[l] == 0.0f ? 0.0f : num.v[l] / den.v[l]; return num; }
  // lanes of [lo hi] at even / odd positions
  static inline void deinterleave(R lo, R hi, R* ev, R* od) {
    for (int l = 0; l < 8; ++l) {
      ev->v[l] = lo.v[2 * l], od->v[l] = lo.v[2 * l + 1];
      ev->v[8 + l] = hi.v[2 * l], od->v[8 + l] = hi.v[2 * l + 1];
    }
  }
  // deinterleave, lanes in any fixed order that restore_order undoes (here: in order)
  static inline void deinterleave_unordered(R lo, R hi, R* ev, R* od) { deinterleave(lo, hi, ev, od); }
  static inline R restore_order(R a) { return a; }
  static inline float reduce_max(R a) { float m = a.v[0]; PX_EACH m = a.v[l] > m ? a.v[l] : m; return m; }
  static inline float reduce_min(R a) { float m = a.v[0]; PX_EACH m = a.v[l] < m ? a.v[l] : m; return m; }
  static inline float reduce_add(R a) { float s = 0.0f; PX_EACH s += a.v[l]; return s; }
  // pairwise: lanes l and l + 8, then l + 4, l + 2, l + 1 (the AVX-512 order)
  static inline float reduce_add_tree(R a) {
    for (int h = 8; h >= 1; h /= 2)
      for (int l = 0; l < h; ++l) a.v[l] += a.v[l + h];
    return a.v[0];
  }
  // reduce_add_tree of a and b; reduce_max of mx and reduce_min of mn (one shuffle sequence
  // for both on the vector paths)
  static inline void reduce_add_tree2(R a, R b, float* sa, float* sb) { *sa = reduce_add_tree(a), *sb = reduce_add_tree(b); }
  static inline void reduce_max_min(R mx, R mn, float* hi, float* lo) { *hi = reduce_max(mx), *lo = reduce_min(mn); }
  // the float with p's bits plus kf's bits << 23: p * 2^k for kf = magic + k (see soft_shared.inc)
  static inline R add_exponent(R p, R kf) {
    PX_EACH {
      uint32_t kb, pb;
      memcpy(&kb, &kf.v[l], 4);
      memcpy(&pb, &p.v[l], 4);
      pb += kb << 23;
      memcpy(&p.v[l], &pb, 4);
    }
    return p;
  }
#undef PX_EACH
};

}  // namespace cpu
}  // namespace poolexport

#if defined(__x86_64__) && defined(__GNUC__) && !defined(POOLEXPORT_NO_AVX2)
#define PX_HAVE_X86_LANES 1
#include <immintrin.h>

namespace poolexport {
namespace cpu {

#define PX_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define PX_TARGET_AVX512 __attribute__((target("avx512f,avx2,fma")))

// ---- AVX2 + FMA: 8 lanes ----
struct LanesAvx2 {
  static constexpr int W = 8;
  static_assert(W == limits::kLanesAvx2, "limits.h states the lane widths");
  using R = __m256;
  PX_TARGET_AVX2 static inline __m256i first_n(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int32_t)(n < 8 ? n : 8)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  PX_TARGET_AVX2 static inline R load(const float* p) { return _mm256_loadu_ps(p); }
  PX_TARGET_AVX2 static inline R load_n(const float* p, int64_t n, float fill) {
    const __m256i m = first_n(n);  // masked-off lanes are never touched
    return _mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
  }
  PX_TARGET_AVX2 static inline void store(float* p, R a) { _mm256_storeu_ps(p, a); }
  PX_TARGET_AVX2 static inline void store_n(float* p, R a, int64_t n) { _mm256_maskstore_ps(p, first_n(n), a); }
  PX_TARGET_AVX2 static inline R keep_first_n(R a, int64_t n) { return _mm256_and_ps(a, _mm256_castsi256_ps(first_n(n))); }
  using I = __m256i;  // int32 offsets: planes of the lane-wise form are small
  PX_TARGET_AVX2 static inline I lane_offsets(int64_t stride) {
    return _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32((int32_t)stride));
  }
  PX_TARGET_AVX2 static inline R gather_n(const float* p, I off, int64_t n, float fill) {
    return _mm256_mask_i32gather_ps(_mm256_set1_ps(fill), p, off, _mm256_castsi256_ps(first_n(n)), 4);
  }
  PX_TARGET_AVX2 static inline void transpose_n(const float* p, int64_t stride, int64_t n, R* out) {
    R r[8], t[8];
    if (n >= 8)  // (a full group: no test per row)
      for (int l = 0; l < 8; ++l) r[l] = _mm256_loadu_ps(p + l * stride);
    else
      for (int l = 0; l < 8; ++l) r[l] = l < n ? _mm256_loadu_ps(p + l * stride) : _mm256_setzero_ps();
    for (int l = 0; l < 8; l += 2) {
      t[l] = _mm256_unpacklo_ps(r[l], r[l + 1]);
      t[l + 1] = _mm256_unpackhi_ps(r[l], r[l + 1]);
    }
    for (int l = 0; l < 8; l += 4) {
      r[l] = _mm256_shuffle_ps(t[l], t[l + 2], 0x44);
      r[l + 1] = _mm256_shuffle_ps(t[l], t[l + 2], 0xEE);
      r[l + 2] = _mm256_shuffle_ps(t[l + 1], t[l + 3], 0x44);
      r[l + 3] = _mm256_shuffle_ps(t[l + 1], t[l + 3], 0xEE);
    }
    for (int l = 0; l < 4; ++l) {
      out[l] = _mm256_permute2f128_ps(r[l], r[l + 4], 0x20);
      out[l + 4] = _mm256_permute2f128_ps(r[l], r[l + 4], 0x31);
    }
  }
  PX_TARGET_AVX2 static inline R set1(float f) { return _mm256_set1_ps(f); }
  PX_TARGET_AVX2 static inline uint32_t le_bits(R a, R b) { return (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_LE_OQ)); }
  PX_TARGET_AVX2 static inline R add(R a, R b) { return _mm256_add_ps(a, b); }
  PX_TARGET_AVX2 static inline R sub(R a, R b) { return _mm256_sub_ps(a, b); }
  PX_TARGET_AVX2 static inline R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  PX_TARGET_AVX2 static inline R mul_add(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  PX_TARGET_AVX2 static inline R max(R a, R b) { return _mm256_max_ps(a, b); }
  PX_TARGET_AVX2 static inline R min(R a, R b) { return _mm256_min_ps(a, b); }
  PX_TARGET_AVX2 static inline R div_or_zero(R num, R den) {
    return _mm256_andnot_ps(_mm256_cmp_ps(den, _mm256_setzero_ps(), _CMP_EQ_OQ), _mm256_div_ps(num, den));
  }
  PX_TARGET_AVX2 static inline void deinterleave(R lo, R hi, R* ev, R* od) {
    // [a0 a2 b0 b2 | a4 a6 b4 b6] -> [a0 a2 a4 a6 b0 b2 b4 b6]
    *ev = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0x88)), 0xD8));
    *od = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0xDD)), 0xD8));
  }
  // the in-lane half of deinterleave: [a0 a2 b0 b2 | a4 a6 b4 b6]; lane-wise sums of such
  // vectors are put in order once, at the end (the cross-lane permute is the slow part)
  PX_TARGET_AVX2 static inline void deinterleave_unordered(R lo, R hi, R* ev, R* od) {
    *ev = _mm256_shuffle_ps(lo, hi, 0x88);
    *od = _mm256_shuffle_ps(lo, hi, 0xDD);
  }
  PX_TARGET_AVX2 static inline R restore_order(R a) {
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(a), 0xD8));
  }
  PX_TARGET_AVX2 static inline float reduce_max(R a) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
  }
  PX_TARGET_AVX2 static inline float reduce_min(R a) {
    __m128 m = _mm_min_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    m = _mm_min_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
  }
  PX_TARGET_AVX2 static inline float reduce_add(R a) {
    float v[8];
    _mm256_storeu_ps(v, a);
    float s = 0.0f;
    for (int l = 0; l < 8; ++l) s += v[l];
    return s;
  }
  // two pairwise sums: lanes l and l + 4, then l + 2, l + 1
  PX_TARGET_AVX2 static inline void reduce_add_tree2(R a, R b, float* sa, float* sb) {
    const __m128 a4 = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    const __m128 b4 = _mm_add_ps(_mm256_castps256_ps128(b), _mm256_extractf128_ps(b, 1));
    const __m128 s2 = _mm_add_ps(_mm_movelh_ps(a4, b4), _mm_movehl_ps(b4, a4));  // a0+a2 a1+a3 b0+b2 b1+b3
    const __m128 s1 = _mm_add_ps(s2, _mm_shuffle_ps(s2, s2, 0xB1));                // pairs swapped
    *sa = _mm_cvtss_f32(s1);
    *sb = _mm_cvtss_f32(_mm_movehl_ps(s1, s1));
  }
  PX_TARGET_AVX2 static inline void reduce_max_min(R mx, R mn, float* hi, float* lo) {
    const __m128 a = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    const __m128 b = _mm_min_ps(_mm256_castps256_ps128(mn), _mm256_extractf128_ps(mn, 1));
    // [a0 a1 -b0 -b1] and [a2 a3 -b2 -b3]: one max for both
    const __m128 nb = _mm_xor_ps(b, _mm_set1_ps(-0.0f));
    const __m128 s2 = _mm_max_ps(_mm_movelh_ps(a, nb), _mm_movehl_ps(nb, a));
    const __m128 s1 = _mm_max_ps(s2, _mm_shuffle_ps(s2, s2, 0xB1));
    *hi = _mm_cvtss_f32(s1);
    *lo = -_mm_cvtss_f32(_mm_movehl_ps(s1, s1));
  }
  PX_TARGET_AVX2 static inline R add_exponent(R p, R kf) {
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(_mm256_castps_si256(kf), 23)));
  }
};

// GCC 12's own avx512fintrin.h trips -W(maybe-)uninitialized (its _mm512_undefined_* operands)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
// ---- AVX-512F: 16 lanes ----
struct LanesAvx512 {
  static constexpr int W = 16;
  static_assert(W == limits::kLanesAvx512, "limits.h states the lane widths");
  using R = __m512;
  PX_TARGET_AVX512 static inline __mmask16 first_n(int64_t n) {
    return (__mmask16)(n >= 16 ? 0xFFFFu : ((1u << n) - 1u));
  }
  PX_TARGET_AVX512 static inline R load(const float* p) { return _mm512_loadu_ps(p); }
  // masked-off lanes are never touched (no fault past the end)
  PX_TARGET_AVX512 static inline R load_n(const float* p, int64_t n, float fill) {
    return _mm512_mask_loadu_ps(_mm512_set1_ps(fill), first_n(n), p);
  }
  PX_TARGET_AVX512 static inline void store(float* p, R a) { _mm512_storeu_ps(p, a); }
  PX_TARGET_AVX512 static inline void store_n(float* p, R a, int64_t n) { _mm512_mask_storeu_ps(p, first_n(n), a); }
  PX_TARGET_AVX512 static inline R keep_first_n(R a, int64_t n) { return _mm512_maskz_mov_ps(first_n(n), a); }
  using I = __m512i;  // int32 offsets: planes of the lane-wise form are small
  PX_TARGET_AVX512 static inline I lane_offsets(int64_t stride) {
    return _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                              _mm512_set1_epi32((int32_t)stride));
  }
  // masked-off lanes are never read
  PX_TARGET_AVX512 static inline R gather_n(const float* p, I off, int64_t n, float fill) {
    return _mm512_mask_i32gather_ps(_mm512_set1_ps(fill), first_n(n), off, p, 4);
  }
  PX_TARGET_AVX512 static inline void transpose_n(const float* p, int64_t stride, int64_t n, R* out) {
    R r[16];
    if (n >= 16)  // (a full group: no test per row)
      for (int l = 0; l < 16; ++l) r[l] = _mm512_loadu_ps(p + l * stride);
    else
      for (int l = 0; l < 16; ++l) r[l] = l < n ? _mm512_loadu_ps(p + l * stride) : _mm512_setzero_ps();
    transpose_rows(r, out);
  }
  // transpose_n of float16 rows (IEEE bits), each converted as it is loaded (vcvtph2ps: exact,
  // the same floats as halves_to_floats)
  PX_TARGET_AVX512 static inline void transpose_halves_n(const uint16_t* p, int64_t stride, int64_t n, R* out) {
    R r[16];
    for (int l = 0; l < 16; ++l)
      r[l] = n >= 16 || l < n ? load_halves(p + l * stride) : _mm512_setzero_ps();
    transpose_rows(r, out);
  }
  // 16 float16 values (IEEE bits) as floats (vcvtph2ps: exact)
  PX_TARGET_AVX512 static inline R load_halves(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p));
  }
  // gather_n of float16 values, as floats (0 where l >= n): lane l reads the 32 bits ending
  // with p[off[l]], so p[off[l] - 1] must be readable too (never past the element itself)
  PX_TARGET_AVX512 static inline R gather_halves_n(const uint16_t* p, I off, int64_t n) {
    const __m512i w = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), first_n(n), off, p - 1, 2);
    return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(w, 16)));
  }
  // a rounded to an integer, ties to even (the magic-number rounding's result, one instruction)
  PX_TARGET_AVX512 static inline R round_even(R a) {
    return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  // p * 2^k for an integer-valued k, rounded once (vscalefps: subnormal results as a multiply)
  PX_TARGET_AVX512 static inline R times_pow2(R p, R k) { return _mm512_scalef_ps(p, k); }
  // out[i] lane l = r[l] lane i
  PX_TARGET_AVX512 static inline void transpose_rows(R* r, R* out) {
    R t[16];
    for (int l = 0; l < 16; l += 2) {  // a0 b0 a1 b1 | a4 b4 a5 b5 | ...
      t[l] = _mm512_unpacklo_ps(r[l], r[l + 1]);
      t[l + 1] = _mm512_unpackhi_ps(r[l], r[l + 1]);
    }
    for (int l = 0; l < 16; l += 4) {  // a0 b0 c0 d0 | a4 b4 c4 d4 | ...
      r[l] = _mm512_shuffle_ps(t[l], t[l + 2], 0x44);
      r[l + 1] = _mm512_shuffle_ps(t[l], t[l + 2], 0xEE);
      r[l + 2] = _mm512_shuffle_ps(t[l + 1], t[l + 3], 0x44);
      r[l + 3] = _mm512_shuffle_ps(t[l + 1], t[l + 3], 0xEE);
    }
    for (int h = 0; h < 16; h += 8)  // 128-bit blocks 0, 2 / 1, 3 of row groups l and l + 4
      for (int l = 0; l < 4; ++l) {
        t[h + l] = _mm512_shuffle_f32x4(r[h + l], r[h + l + 4], 0x88);
        t[h + l + 4] = _mm512_shuffle_f32x4(r[h + l], r[h + l + 4], 0xDD);
      }
    for (int l = 0; l < 8; ++l) {
      out[l] = _mm512_shuffle_f32x4(t[l], t[l + 8], 0x88);
      out[l + 8] = _mm512_shuffle_f32x4(t[l], t[l + 8], 0xDD);
    }
  }
  PX_TARGET_AVX512 static inline R set1(float f) { return _mm512_set1_ps(f); }
  PX_TARGET_AVX512 static inline uint32_t le_bits(R a, R b) { return (uint32_t)_mm512_cmp_ps_mask(a, b, _CMP_LE_OQ); }
  PX_TARGET_AVX512 static inline R add(R a, R b) { return _mm512_add_ps(a, b); }
  PX_TARGET_AVX512 static inline R sub(R a, R b) { return _mm512_sub_ps(a, b); }
  PX_TARGET_AVX512 static inline R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  PX_TARGET_AVX512 static inline R mul_add(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  PX_TARGET_AVX512 static inline R max(R a, R b) { return _mm512_max_ps(a, b); }
  PX_TARGET_AVX512 static inline R min(R a, R b) { return _mm512_min_ps(a, b); }
  PX_TARGET_AVX512 static inline R div_or_zero(R num, R den) {
    return _mm512_maskz_div_ps(_mm512_cmp_ps_mask(den, _mm512_setzero_ps(), _CMP_NEQ_UQ), num, den);
  }
  PX_TARGET_AVX512 static inline void deinterleave(R lo, R hi, R* ev, R* od) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    *ev = _mm512_permutex2var_ps(lo, even, hi);
    *od = _mm512_permutex2var_ps(lo, odd, hi);
  }
  // one two-source permute is as cheap as any partial shuffle here: lanes in order
  PX_TARGET_AVX512 static inline void deinterleave_unordered(R lo, R hi, R* ev, R* od) { deinterleave(lo, hi, ev, od); }
  PX_TARGET_AVX512 static inline R restore_order(R a) { return a; }
  PX_TARGET_AVX512 static inline float reduce_max(R a) { return _mm512_reduce_max_ps(a); }
  PX_TARGET_AVX512 static inline float reduce_min(R a) { return _mm512_reduce_min_ps(a); }
  PX_TARGET_AVX512 static inline float reduce_add(R a) {
    float v[16];
    _mm512_storeu_ps(v, a);
    float s = 0.0f;
    for (int l = 0; l < 16; ++l) s += v[l];
    return s;
  }
  // two pairwise sums: lanes l and l + 8, then as LanesAvx2's
  PX_TARGET_AVX512 static inline void reduce_add_tree2(R a, R b, float* sa, float* sb) {
    const __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(a), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
    const __m256 b8 = _mm256_add_ps(_mm512_castps512_ps256(b), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(b), 1)));
    LanesAvx2::reduce_add_tree2(a8, b8, sa, sb);
  }
  PX_TARGET_AVX512 static inline void reduce_max_min(R mx, R mn, float* hi, float* lo) {
    const __m256 a8 = _mm256_max_ps(_mm512_castps512_ps256(mx), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(mx), 1)));
    const __m256 b8 = _mm256_min_ps(_mm512_castps512_ps256(mn), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(mn), 1)));
    LanesAvx2::reduce_max_min(a8, b8, hi, lo);
  }
  PX_TARGET_AVX512 static inline R add_exponent(R p, R kf) {
    return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p), _mm512_slli_epi32(_mm512_castps_si512(kf), 23)));
  }
};
#pragma GCC diagnostic pop

}  // namespace cpu
}  // namespace poolexport
#endif

namespace poolexport {
namespace cpu {

// The widest path this CPU runs, capped by POOLEXPORT_CPU_ISA (portable | avx2 | avx512):
// tests and benchmarks pin a path that way; a path the CPU lacks is never taken. Read on
// every call (a getenv), so one process can compare paths.
inline Isa cpu_isa() {
#ifdef PX_HAVE_X86_LANES
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  static const Isa best = avx2 && __builtin_cpu_supports("avx512f") ? Isa::kAvx512 : avx2 ? Isa::kAvx2 : Isa::kPortable;
#else
  const Isa best = Isa::kPortable;
#endif
  const char* cap = getenv("POOLEXPORT_CPU_ISA");
  Isa want = best;
  if (cap && !strcmp(cap, "portable")) want = Isa::kPortable;
  else if (cap && !strcmp(cap, "avx2")) want = Isa::kAvx2;
  return (int)want < (int)best ? want : best;
}

// float16 (IEEE bits) <-> float32 runs for the fp16 kernels: F16C on the vector paths
// (every AVX2 CPU has it; checked anyway), else common.h's integer code. Both are exact
// one way and round to nearest even the other, so they give the same bits (NaN: the
// same quiet NaN for float32's default NaN).
#ifdef PX_HAVE_X86_LANES
inline bool cpu_has_f16c() {
  static const bool ok = __builtin_cpu_supports("f16c");
  return ok;
}
__attribute__((target("avx2,f16c"))) static void halves_to_floats_f16c(const uint16_t* h, float* f, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(f + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(h + i))));
  for (; i < n; ++i) f[i] = half_bits_to_float(h[i]);
}
__attribute__((target("avx2,f16c"))) static void floats_to_halves_f16c(const float* f, uint16_t* h, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128((__m128i*)(h + i), _mm256_cvtps_ph(_mm256_loadu_ps(f + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; ++i) h[i] = float_to_half_bits(f[i]);
}
#endif

#ifdef PX_HAVE_X86_LANES
#pragma GCC diagnostic push  // (as above: avx512fintrin.h's undefined operands)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
// AVX-512F's vcvtph2ps on 16 halves at a time (exact, as F16C's)
__attribute__((target("avx512f,avx2,f16c"))) static void halves_to_floats_avx512(const uint16_t* h, float* f, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(f + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(h + i))));
  halves_to_floats_f16c(h + i, f + i, n - i);
}
#pragma GCC diagnostic pop
#endif

inline void halves_to_floats(Isa isa, const uint16_t* h, float* f, int64_t n) {
#ifdef PX_HAVE_X86_LANES
  if (isa == Isa::kAvx512) return halves_to_floats_avx512(h, f, n);
  if (isa != Isa::kPortable && cpu_has_f16c()) return halves_to_floats_f16c(h, f, n);
#endif
  for (int64_t i = 0; i < n; ++i) f[i] = half_bits_to_float(h[i]);
}

inline void floats_to_halves(Isa isa, const float* f, uint16_t* h, int64_t n) {
#ifdef PX_HAVE_X86_LANES
  if (isa != Isa::kPortable && cpu_has_f16c()) return floats_to_halves_f16c(f, h, n);
#endif
  for (int64_t i = 0; i < n; ++i) h[i] = float_to_half_bits(f[i]);
}

}  // namespace cpu
}  // namespace poolexport
