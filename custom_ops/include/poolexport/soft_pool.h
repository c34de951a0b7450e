// SoftPool (Stergiou et al., ICCV 2021): y = sum softmax(beta * a) * a over a window.
// Stable: the window maximum of beta * a is subtracted before exp, so finite inputs give
// finite outputs; float32 accumulation; an empty window outputs 0.
#pragma once

#include "common.h"

namespace poolexport {

// visit(g) calls g(value) for every window value in window order.
template <class Visit>
PX_HD float soft_pool_value(Visit&& visit, float beta) {
  float m = -3.402823466e38f;
  int64_t count = 0;
  visit([&](float a) {
    float z = beta * a;
    m = z > m ? z : m;
    ++count;
  });
  if (count == 0) return 0.0f;
  float s = 0.0f, sa = 0.0f;
  visit([&](float a) {
    float e = fast_exp(beta * a - m);
    s += e;
    sa += e * a;
  });
  return sa / s;  // s >= 1: the maximum contributes exp(0)
}

}  // namespace poolexport
