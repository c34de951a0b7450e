// Host/device qualifiers and small helpers shared by every poolexport kernel header.
#pragma once

#include <stdint.h>

#include "limits.h"

#if defined(__CUDACC__)
#define PX_HD __host__ __device__ __forceinline__
#else
#define PX_HD inline
#endif

namespace poolexport {

// Bit-exact float32 multiply/add: on the device FMA contraction would change stochastic
// picks, so the sampling path calls these (the host build uses -ffp-contract=off).
PX_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
PX_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

PX_HD float bits_to_float(int32_t bits) {
  union {
    int32_t i;
    float f;
  } u;
  u.i = bits;
  return u.f;
}

PX_HD int32_t float_to_bits(float f) {
  union {
    int32_t i;
    float f;
  } u;
  u.f = f;
  return u.i;
}

// IEEE binary16 <-> float32 in portable integer code (host side; CUDA uses __half).
PX_HD float half_bits_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t man = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0x1Fu) {
    bits = sign | 0x7F800000u | (man << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {  // subnormal: value = man * 2^-24, exact in float32
    float f = (float)man * 5.9604644775390625e-8f;
    bits = sign | (uint32_t)float_to_bits(f);
  }
  return bits_to_float((int32_t)bits);
}

// Round to nearest even, overflow to inf, NaN kept.
PX_HD uint16_t float_to_half_bits(float f) {
  uint32_t x = (uint32_t)float_to_bits(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7FFFFFFFu;
  if (ax >= 0x7F800000u) return (uint16_t)(sign | 0x7C00u | (ax > 0x7F800000u ? 0x200u : 0u));
  if (ax >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u);  // rounds to >= 65520: inf
  if (ax < 0x38800000u) {                                     // below 2^-14: subnormal half
    // scaled = |f| * 2^24, rounded to nearest even by the float adder
    float a = bits_to_float((int32_t)ax);
    float scaled = a * 16777216.0f;
    uint32_t m = (uint32_t)scaled;
    float rem = scaled - (float)m;
    if (rem > 0.5f || (rem == 0.5f && (m & 1u))) m++;
    return (uint16_t)(sign | m);
  }
  uint32_t mant = ax & 0x7FFFFFu;
  uint32_t exp = (ax >> 23) - 112u;
  uint32_t h = (exp << 10) | (mant >> 13);
  uint32_t rest = mant & 0x1FFFu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
  return (uint16_t)(sign | h);
}

// exp for the softmax weights: arguments are <= 0 (the window maximum is subtracted).
// Cody-Waite range reduction + degree-6 polynomial, about 2 ulp, branch-free so the
// host compiler vectorizes the loops that call it. It never returns 0: arguments below
// -87 are clamped to -87 (the result stays a normal float, about 1.6e-38), which next to
// the window maximum's weight of 1 changes no float32 sum.
PX_HD float fast_exp(float x) {
  x = x < limits::kExpArgMin ? limits::kExpArgMin : x;
  x = x > limits::kExpArgMax ? limits::kExpArgMax : x;
  // round-to-nearest by the 1.5 * 2^23 trick: no branch, no conversion in a select,
  // so the host compiler vectorizes loops that call this
  float k = x * 1.44269504088896341f + 12582912.0f;
  k = k - 12582912.0f;
  float r = x - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t e = ((int32_t)k + 127) << 23;
  return p * bits_to_float(e);
}

}  // namespace poolexport
