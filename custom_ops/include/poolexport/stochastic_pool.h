// Stochastic pooling (Zeiler and Fergus, ICLR 2013) with r = max(a, 0) in window order.
// expectation: sum(r^2) / sum(r). sample: the pick of poolexport/_philox.py, bit for bit
// (sequential float32 prefix sums, t = float32(u * total), first cum > t, else the last
// positive r). A window whose r sums to 0 outputs 0.
#pragma once

#include "common.h"
#include "philox.h"

namespace poolexport {

template <class Visit>
PX_HD float stochastic_expectation_value(Visit&& visit) {
  float s1 = 0.0f, s2 = 0.0f;
  visit([&](float a) {
    float r = a > 0.0f ? a : 0.0f;
    s1 += r;
    s2 += r * r;
  });
  return s1 > 0.0f ? s2 / s1 : 0.0f;
}

template <class Visit>
PX_HD float stochastic_sample_value(Visit&& visit, uint64_t e, uint32_t seed_lo, uint32_t seed_hi) {
  float total = 0.0f;
  visit([&](float a) { total = add_rn(total, a > 0.0f ? a : 0.0f); });
  if (!(total > 0.0f)) return 0.0f;
  float t = mul_rn(philox_uniform(e, seed_lo, seed_hi), total);
  float cum = 0.0f, picked = 0.0f, last_positive = 0.0f;
  bool found = false;
  visit([&](float a) {
    float r = a > 0.0f ? a : 0.0f;
    cum = add_rn(cum, r);
    if (!found && cum > t) {
      found = true;
      picked = a;
    }
    if (r > 0.0f) last_positive = a;
  });
  return found ? picked : last_positive;
}

}  // namespace poolexport
