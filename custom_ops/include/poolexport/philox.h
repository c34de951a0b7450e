// Philox4x32-10 (Salmon et al., SC 2011): the counter-based generator behind stochastic
// pooling. Bit-identical to poolexport/_philox.py: key = (seed lo, seed hi), counter =
// (e lo, e hi, 0, 0) for flat output index e, u = (word0 >> 8) * 2^-24.
#pragma once

#include "common.h"

namespace poolexport {

PX_HD uint32_t philox4x32_10_word0(uint64_t e, uint32_t k0, uint32_t k1) {
  uint32_t c0 = (uint32_t)e, c1 = (uint32_t)(e >> 32), c2 = 0u, c3 = 0u;
  for (int r = 0; r < 10; ++r) {
    if (r) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    uint64_t p0 = (uint64_t)c0 * 0xD2511F53u;
    uint64_t p1 = (uint64_t)c2 * 0xCD9E8D57u;
    uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
    uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  return c0;
}

// float32 uniform in [0, 1), exact (24 bits).
PX_HD float philox_uniform(uint64_t e, uint32_t seed_lo, uint32_t seed_hi) {
  return (float)(philox4x32_10_word0(e, seed_lo, seed_hi) >> 8) * 5.9604644775390625e-8f;
}

}  // namespace poolexport
