// Stochastic pooling (Zeiler and Fergus, ICLR 2013) with r = max(a, 0) in window order.
// expectation: sum(r^2) / sum(r). sample: the pick of poolexport/_philox.py, bit for bit
// (sequential float32 prefix sums, t = float32(u * total), first cum > t, else the last
// positive r). A window whose r sums to 0 outputs 0.
// NaN: r keeps it (stochastic_r), so a window holding NaN outputs NaN in both modes (the
// sample picks nothing: index -1) and passes no gradient; windows without NaN are unchanged.
#pragma once

#include "common.h"
#include "philox.h"

namespace poolexport {

// r = max(a, 0) with NaN kept (a NaN a gives r = NaN, so the window's sums turn NaN): not
// `a > 0 ? a : 0`, which reads NaN as 0. Every kernel's r (SIMD forms too) follows this.
PX_HD float stochastic_r(float a) { return a <= 0.0f ? 0.0f : a; }

// sum(r^2) / sum(r): 0 where sum(r) is 0, NaN where it is NaN (`s1 > 0 ? ..` would drop it).
PX_HD float stochastic_ratio(float s2, float s1) { return s1 <= 0.0f ? 0.0f : s2 / s1; }

// One window's expectation state: s1 = k * sum(r), y = sum(r^2) / sum(r) (0 when s1 is 0),
// k = 1, or limits::kMomentScale when max r exceeds limits::kMomentScaleAbove: then the
// sums run over r * k (a power of two; exact but for subnormal bits far below the result's
// ulp) so that sum(r^2) stays finite, and y is kept <= max r before scaling back.
struct StochasticStats {
  float s1, y, k;
};

template <class Visit>
PX_HD StochasticStats stochastic_expectation_stats(Visit&& visit) {
  float s1 = 0.0f, s2 = 0.0f, rmax = 0.0f;
  visit([&](float a) {
    float r = stochastic_r(a);
    s1 += r;
    s2 += r * r;
    rmax = r > rmax ? r : rmax;  // skips NaN: s1 and s2 carry it
  });
  if (rmax <= limits::kMomentScaleAbove) return StochasticStats{s1, stochastic_ratio(s2, s1), 1.0f};
  const float k = limits::kMomentScale;
  s1 = 0.0f;
  s2 = 0.0f;
  visit([&](float a) {
    float r = stochastic_r(a) * k;
    s1 += r;
    s2 += r * r;
  });
  float yk = s2 / s1, rk = rmax * k;  // s1 > 0 (or NaN) here
  return StochasticStats{s1, (yk > rk ? rk : yk) / k, k};  // a NaN yk stays NaN
}

template <class Visit>
PX_HD float stochastic_expectation_value(Visit&& visit) {
  return stochastic_expectation_stats(visit).y;
}

// g * dy/da for one window element a, given the window's s1 = k * sum(r), output y and
// scale k: [a > 0] * (2 a - y) / sum(r), computed as (2 a k - y k) / s1 (no overflow);
// 0 for a window whose r sums to 0, and for a window holding NaN (s1 NaN): such a window
// outputs NaN but passes no gradient, as the sampled pick of one does.
PX_HD float stochastic_expectation_grad(float a, float s1, float y, float k, float g) {
  return a > 0.0f && s1 > 0.0f ? g * (2.0f * (a * k) - y * k) / s1 : 0.0f;
}

// The sampled pick for the uniform u of the window's output element: its value, and (when
// index is given) its position in window order, -1 when the window's r sums to 0 (then
// the value is 0 and no element gets a gradient). A window holding NaN: NaN, index -1.
template <class Visit>
PX_HD float stochastic_sample_pick_u(Visit&& visit, float u, int64_t* index) {
  if (index) *index = -1;
  float total = 0.0f;
  visit([&](float a) { total = add_rn(total, stochastic_r(a)); });
  if (!(total > 0.0f)) return total == total ? 0.0f : total;  // r sums to 0, or NaN: no pick
  float t = mul_rn(u, total);
  // cum never decreases, so the first cum > t is where the prefix of cum <= t ends; the
  // loop tracks that with selects, not branches (random picks mispredict)
  float cum = 0.0f, picked = 0.0f, last_positive = 0.0f;
  int64_t i = 0, below = 0, last_at = -1;
  visit([&](float a) {
    float r = stochastic_r(a);  // no NaN here (total would be NaN)
    const bool was_below = cum <= t;
    cum = add_rn(cum, r);
    below += cum <= t;
    picked = was_below && cum > t ? a : picked;
    last_positive = r > 0.0f ? a : last_positive;
    last_at = r > 0.0f ? i : last_at;
    ++i;
  });
  const bool found = below < i;  // some cum > t
  if (index) *index = found ? below : last_at;
  return found ? picked : last_positive;
}

// ... for flat output index e under the seed (seed_lo, seed_hi)
template <class Visit>
PX_HD float stochastic_sample_pick(Visit&& visit, uint64_t e, uint32_t seed_lo, uint32_t seed_hi, int64_t* index) {
  return stochastic_sample_pick_u(visit, philox_uniform(e, seed_lo, seed_hi), index);
}

template <class Visit>
PX_HD float stochastic_sample_value(Visit&& visit, uint64_t e, uint32_t seed_lo, uint32_t seed_hi) {
  return stochastic_sample_pick(visit, e, seed_lo, seed_hi, nullptr);
}

}  // namespace poolexport
