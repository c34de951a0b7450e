// SoftPool (Stergiou et al., ICCV 2021): y = sum softmax(beta * a) * a over a window.
// Stable: the window maximum of beta * a is subtracted before exp, so finite inputs give
// finite outputs; float32 accumulation; an empty window outputs 0.
#pragma once

#include "common.h"

namespace poolexport {

// One window's forward state: m = max(beta * a), s = sum exp(beta * a - m) (>= 1 unless
// the window is empty), y = the output.
struct SoftPoolStats {
  float m, s, y;
};

// visit(g) calls g(value) for every window value in window order.
template <class Visit>
PX_HD SoftPoolStats soft_pool_stats(Visit&& visit, float beta) {
  float m = -3.402823466e38f;
  int64_t count = 0;
  visit([&](float a) {
    float z = beta * a;
    m = z > m ? z : m;
    ++count;
  });
  if (count == 0) return SoftPoolStats{m, 0.0f, 0.0f};
  float s = 0.0f, sa = 0.0f;
  visit([&](float a) {
    float e = fast_exp(beta * a - m);
    s += e;
    sa += e * a;
  });
  return SoftPoolStats{m, s, sa / s};  // s >= 1: the maximum contributes exp(0)
}

template <class Visit>
PX_HD float soft_pool_value(Visit&& visit, float beta) {
  return soft_pool_stats(visit, beta).y;
}

// g * dy/da for one window element a: p * (1 + beta * (a - y)), p = exp(beta * a - m) / s.
// An empty window has no elements, so s > 0 here.
PX_HD float soft_pool_grad(float a, float beta, const SoftPoolStats& st, float g) {
  return g / st.s * fast_exp(beta * a - st.m) * (1.0f + beta * (a - st.y));
}

}  // namespace poolexport
