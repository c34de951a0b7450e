// The sampled pick's Philox uniforms for a run of consecutive output elements, sixteen at a
// time with AVX-512F. Bit-identical to philox.h's philox_uniform (the integer rounds are
// exact, and (word0 >> 8) * 2^-24 is exact in float32), which the tests check against
// poolexport/_philox.py on every CPU path. The AVX2 clone of the scalar loop multiplies
// four 32 x 32 -> 64-bit products per instruction; AVX-512 does eight, and the generator
// was a third of the sampling forward's time.
#pragma once

#include "cpu_simd.h"
#include "poolexport/philox.h"

namespace poolexport {
namespace cpu {

#ifdef PX_HAVE_X86_LANES
namespace philox_avx512 {

// high 32 bits of each lane's 32 x 32 product
PX_TARGET_AVX512 static inline __m512i mulhi(__m512i a, __m512i m) {
  const __m512i even = _mm512_srli_epi64(_mm512_mul_epu32(a, m), 32);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
  return _mm512_mask_blend_epi32((__mmask16)0xAAAA, even, odd);
}

// u[i] = philox_uniform(e0 + i) for i in [0, n)
PX_TARGET_AVX512 static void uniforms(uint64_t e0, int64_t n, uint32_t seed_lo, uint32_t seed_hi, float* u) {
  const __m512i m0 = _mm512_set1_epi32((int)0xD2511F53u), m1 = _mm512_set1_epi32((int)0xCD9E8D57u);
  const __m512i lo8 = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7), hi8 = _mm512_setr_epi64(8, 9, 10, 11, 12, 13, 14, 15);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i base = _mm512_set1_epi64((long long)(e0 + (uint64_t)i));
    const __m512i ea = _mm512_add_epi64(base, lo8), eb = _mm512_add_epi64(base, hi8);  // 64-bit counters
    __m512i c0 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(ea)), _mm512_cvtepi64_epi32(eb), 1);
    __m512i c1 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(_mm512_srli_epi64(ea, 32))),
                                    _mm512_cvtepi64_epi32(_mm512_srli_epi64(eb, 32)), 1);
    __m512i c2 = _mm512_setzero_si512(), c3 = _mm512_setzero_si512();
    uint32_t k0 = seed_lo, k1 = seed_hi;
    for (int r = 0; r < 10; ++r) {
      if (r) {
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
      }
      const __m512i hi0 = mulhi(c0, m0), lo0 = _mm512_mullo_epi32(c0, m0);
      const __m512i hi1 = mulhi(c2, m1), lo1 = _mm512_mullo_epi32(c2, m1);
      c0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1), _mm512_set1_epi32((int)k0));
      c2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3), _mm512_set1_epi32((int)k1));
      c1 = lo1;
      c3 = lo0;
    }
    const __m512 v = _mm512_cvtepi32_ps(_mm512_srli_epi32(c0, 8));  // < 2^24: exact
    _mm512_storeu_ps(u + i, _mm512_mul_ps(v, _mm512_set1_ps(5.9604644775390625e-8f)));
  }
  for (; i < n; ++i) u[i] = philox_uniform(e0 + (uint64_t)i, seed_lo, seed_hi);
}

}  // namespace philox_avx512
#endif

}  // namespace cpu
}  // namespace poolexport
