// CPU kernels: one output row (n, c, od, oh) per work item, run on ONNX Runtime's thread
// pool. The interior of a row (windows that need no bounds checks) runs branch-free
// loops over the output columns that the compiler vectorizes (with runtime dispatch to
// AVX2 where the CPU has it); borders and the stochastic pick go through the shared
// per-window math in include/poolexport.
#pragma once

#include <algorithm>
#include <cstring>
#include <vector>

#include "poolexport/reduce.h"
#include "poolexport/soft_pool.h"
#include "poolexport/stochastic_pool.h"
#include "poolexport/window.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(POOLEXPORT_NO_DISPATCH)
#define PX_DISPATCH __attribute__((target_clones("avx2", "default")))
#else
#define PX_DISPATCH
#endif

namespace poolexport {
namespace cpu {

using half_t = uint16_t;  // IEEE binary16 bits (Ort::Float16_t's storage)

inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const half_t* p, int64_t i) { return half_bits_to_float(p[i]); }
inline void store(float* p, int64_t i, float v) { p[i] = v; }
inline void store(half_t* p, int64_t i, float v) { p[i] = float_to_half_bits(v); }

enum class Op { kSoft, kExpectation, kSample };

struct RowArgs {
  Window3 w;
  float beta;
  uint32_t seed_lo, seed_hi;
};

// Interior columns [lo, hi) of an output row: every kw position is inside the input.
inline void interior(const Window3& w, int64_t* lo, int64_t* hi) {
  int64_t span = (w.k[2] - 1) * w.dil[2];
  int64_t a = (w.pad[2] + w.s[2] - 1) / w.s[2];
  int64_t lim = w.in[2] - 1 - span + w.pad[2];
  int64_t b = lim < 0 ? 0 : lim / w.s[2] + 1;
  *lo = std::min(a, w.out[2]);
  *hi = std::max(*lo, std::min(b, w.out[2]));
}

// Pass 1 of SoftPool over one input row for output columns [lo, hi): running max of beta*x.
PX_DISPATCH static void soft_max_pass(const float* __restrict row, int64_t lo, int64_t hi, int64_t s, int64_t off, float beta,
                                     float* __restrict m) {
  if (s == 1) {
    for (int64_t o = lo; o < hi; ++o) { float z = beta * row[o + off]; m[o] = m[o] > z ? m[o] : z; }
  } else if (s == 2) {
    for (int64_t o = lo; o < hi; ++o) { float z = beta * row[2 * o + off]; m[o] = m[o] > z ? m[o] : z; }
  } else {
    for (int64_t o = lo; o < hi; ++o) { float z = beta * row[o * s + off]; m[o] = m[o] > z ? m[o] : z; }
  }
}

// Pass 2: accumulate exp(beta*x - m) and exp(.)*x.
PX_DISPATCH static void soft_sum_pass(const float* __restrict row, int64_t lo, int64_t hi, int64_t s, int64_t off, float beta,
                               const float* __restrict m, float* __restrict acc_e, float* __restrict acc_ex) {
  if (s == 1) {
    for (int64_t o = lo; o < hi; ++o) {
      float x = row[o + off];
      float e = fast_exp(beta * x - m[o]);
      acc_e[o] += e;
      acc_ex[o] += e * x;
    }
  } else if (s == 2) {
    for (int64_t o = lo; o < hi; ++o) {
      float x = row[2 * o + off];
      float e = fast_exp(beta * x - m[o]);
      acc_e[o] += e;
      acc_ex[o] += e * x;
    }
  } else {
    for (int64_t o = lo; o < hi; ++o) {
      float x = row[o * s + off];
      float e = fast_exp(beta * x - m[o]);
      acc_e[o] += e;
      acc_ex[o] += e * x;
    }
  }
}

// Stochastic expectation: accumulate r and r^2 with r = max(x, 0).
PX_DISPATCH static void moment_pass(const float* __restrict row, int64_t lo, int64_t hi, int64_t s, int64_t off,
                                   float* __restrict s1, float* __restrict s2) {
  if (s == 1) {
    for (int64_t o = lo; o < hi; ++o) {
      float v = row[o + off];
      float r = v > 0.0f ? v : 0.0f;
      s1[o] += r;
      s2[o] += r * r;
    }
  } else if (s == 2) {
    for (int64_t o = lo; o < hi; ++o) {
      float v = row[2 * o + off];
      float r = v > 0.0f ? v : 0.0f;
      s1[o] += r;
      s2[o] += r * r;
    }
  } else {
    for (int64_t o = lo; o < hi; ++o) {
      float v = row[o * s + off];
      float r = v > 0.0f ? v : 0.0f;
      s1[o] += r;
      s2[o] += r * r;
    }
  }
}

// Contiguous segments of one window (reductions over the innermost axis, e.g. global
// pooling over H x W): 8 independent lanes so the compiler vectorizes without
// reassociating a single float sum (no -ffast-math).
PX_DISPATCH static void seg_max(const float* __restrict x, int64_t n, float beta, float* __restrict lanes) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) {
      float z = beta * x[i + l];
      lanes[l] = lanes[l] > z ? lanes[l] : z;
    }
  for (; i < n; ++i) {
    float z = beta * x[i];
    lanes[0] = lanes[0] > z ? lanes[0] : z;
  }
}

PX_DISPATCH static void seg_sum(const float* __restrict x, int64_t n, float beta, float m, float* __restrict se,
                                float* __restrict sa) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) {
      float v = x[i + l];
      float e = fast_exp(beta * v - m);
      se[l] += e;
      sa[l] += e * v;
    }
  for (; i < n; ++i) {
    float e = fast_exp(beta * x[i] - m);
    se[0] += e;
    sa[0] += e * x[i];
  }
}

PX_DISPATCH static void seg_moments(const float* __restrict x, int64_t n, float* __restrict s1, float* __restrict s2) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) {
      float v = x[i + l];
      float r = v > 0.0f ? v : 0.0f;
      s1[l] += r;
      s2[l] += r * r;
    }
  for (; i < n; ++i) {
    float r = x[i] > 0.0f ? x[i] : 0.0f;
    s1[0] += r;
    s2[0] += r * r;
  }
}

// Per-thread scratch, reused across rows.
struct Scratch {
  std::vector<float> a, b, c;      // per output column accumulators
  std::vector<float> rows;         // float copies of fp16 input rows
  std::vector<int64_t> row_offs;   // valid (kd, kh) row offsets
  std::vector<const float*> rp;    // float views of those rows
};

template <class T>
void run_row(Op op, const T* x_plane, T* y_row, int64_t row_index /* flat (n,c,od,oh) */, const RowArgs& args,
             Scratch& sc) {
  const Window3& w = args.w;
  int64_t oh = row_index % w.out[1];
  int64_t od = (row_index / w.out[1]) % w.out[0];
  int64_t ow_n = w.out[2];
  if (op == Op::kSample) {
    // bit-exact pick: per output element through the shared math
    for (int64_t ow = 0; ow < ow_n; ++ow) {
      auto visit = [&](auto&& g) { for_each_in_window(w, od, oh, ow, [&](int64_t i) { g(load(x_plane, i)); }); };
      uint64_t e = (uint64_t)(row_index * ow_n + ow);
      store(y_row, ow, stochastic_sample_value(visit, e, args.seed_lo, args.seed_hi));
    }
    return;
  }
  // the valid input rows of this output row, in (kd, kh) order
  sc.row_offs.clear();
  int64_t d0 = od * w.s[0] - w.pad[0], h0 = oh * w.s[1] - w.pad[1];
  for (int64_t kd = 0; kd < w.k[0]; ++kd) {
    int64_t id = d0 + kd * w.dil[0];
    if (id < 0 || id >= w.in[0]) continue;
    for (int64_t kh = 0; kh < w.k[1]; ++kh) {
      int64_t ih = h0 + kh * w.dil[1];
      if (ih < 0 || ih >= w.in[1]) continue;
      sc.row_offs.push_back((id * w.in[1] + ih) * w.in[2]);
    }
  }
  size_t nrows = sc.row_offs.size();
  if (nrows == 0) {
    for (int64_t ow = 0; ow < ow_n; ++ow) store(y_row, ow, 0.0f);
    return;
  }
  // float views of the rows (fp16 rows converted once per output row)
  sc.rp.resize(nrows);
  const float** rp = sc.rp.data();
  if (std::is_same<T, float>::value) {
    for (size_t r = 0; r < nrows; ++r) rp[r] = reinterpret_cast<const float*>(x_plane) + sc.row_offs[r];
  } else {
    sc.rows.resize(nrows * w.in[2]);
    for (size_t r = 0; r < nrows; ++r) {
      float* dst = sc.rows.data() + r * w.in[2];
      for (int64_t i = 0; i < w.in[2]; ++i) dst[i] = load(x_plane, sc.row_offs[r] + i);
      rp[r] = dst;
    }
  }
  int64_t lo, hi;
  interior(w, &lo, &hi);
  sc.a.assign(ow_n, op == Op::kSoft ? -3.402823466e38f : 0.0f);
  sc.b.assign(ow_n, 0.0f);
  sc.c.assign(ow_n, 0.0f);
  float* A = sc.a.data();
  float* B = sc.b.data();
  float* Cc = sc.c.data();
  const float beta = args.beta;
  auto border = [&](int64_t ow, auto&& g) {
    int64_t w0 = ow * w.s[2] - w.pad[2];
    for (size_t r = 0; r < nrows; ++r)
      for (int64_t kw = 0; kw < w.k[2]; ++kw) {
        int64_t iw = w0 + kw * w.dil[2];
        if (iw >= 0 && iw < w.in[2]) g(rp[r][iw]);
      }
  };
  if (op == Op::kSoft) {
    for (size_t r = 0; r < nrows; ++r)
      for (int64_t kw = 0; kw < w.k[2]; ++kw)
        soft_max_pass(rp[r], lo, hi, w.s[2], kw * w.dil[2] - w.pad[2], beta, A);
    for (size_t r = 0; r < nrows; ++r)
      for (int64_t kw = 0; kw < w.k[2]; ++kw)
        soft_sum_pass(rp[r], lo, hi, w.s[2], kw * w.dil[2] - w.pad[2], beta, A, B, Cc);
    for (int64_t ow = lo; ow < hi; ++ow) store(y_row, ow, Cc[ow] / B[ow]);
    for (int64_t ow = 0; ow < ow_n; ++ow) {
      if (ow == lo) ow = hi;
      if (ow >= ow_n) break;
      auto visit = [&](auto&& g) { border(ow, g); };
      store(y_row, ow, soft_pool_value(visit, beta));
    }
  } else {
    for (size_t r = 0; r < nrows; ++r)
      for (int64_t kw = 0; kw < w.k[2]; ++kw) moment_pass(rp[r], lo, hi, w.s[2], kw * w.dil[2] - w.pad[2], A, B);
    for (int64_t ow = lo; ow < hi; ++ow) store(y_row, ow, A[ow] > 0.0f ? B[ow] / A[ow] : 0.0f);
    for (int64_t ow = 0; ow < ow_n; ++ow) {
      if (ow == lo) ow = hi;
      if (ow >= ow_n) break;
      auto visit = [&](auto&& g) { border(ow, g); };
      store(y_row, ow, stochastic_expectation_value(visit));
    }
  }
}

// Reduce form whose innermost (padded) axis is kept, e.g. pooling across channels of
// N x C x H x W: I = that axis' size consecutive outputs share every window offset, so
// the window loop runs outside and a vectorized loop over the I outputs inside.
// Soft and expectation only (the sampled pick goes through run_reduce).
template <class T>
void run_reduce_inner(Op op, const T* x, T* y, int64_t row, const Reduce6& g, float beta, Scratch& sc) {
  const int64_t I = g.dim[5];
  sc.a.assign(I, op == Op::kSoft ? -3.402823466e38f : 0.0f);
  sc.b.assign(I, 0.0f);
  sc.c.assign(I, 0.0f);
  float* A = sc.a.data();
  float* B = sc.b.data();
  float* Cc = sc.c.data();
  auto row_at = [&](int64_t off) -> const float* {
    if (std::is_same<T, float>::value) return reinterpret_cast<const float*>(x) + off;
    sc.rows.resize(I);
    for (int64_t i = 0; i < I; ++i) sc.rows[i] = load(x, off + i);
    return sc.rows.data();
  };
  int64_t first = row * I;
  if (op == Op::kSoft) {
    for_each_in_reduce(g, first, [&](int64_t off) { soft_max_pass(row_at(off), 0, I, 1, 0, beta, A); });
    for_each_in_reduce(g, first, [&](int64_t off) { soft_sum_pass(row_at(off), 0, I, 1, 0, beta, A, B, Cc); });
    for (int64_t i = 0; i < I; ++i) store(y, first + i, Cc[i] / B[i]);
  } else {
    for_each_in_reduce(g, first, [&](int64_t off) { moment_pass(row_at(off), 0, I, 1, 0, A, B); });
    for (int64_t i = 0; i < I; ++i) store(y, first + i, A[i] > 0.0f ? B[i] / A[i] : 0.0f);
  }
}

// Reduce form whose innermost (padded) axis is reduced: each window is a set of
// contiguous segments of that axis' length (soft and expectation only).
template <class T>
void run_reduce_segments(Op op, const T* x, T* y, int64_t e, const Reduce6& g, float beta, Scratch& sc) {
  const int64_t n = g.dim[5];
  Reduce6 outer = g;  // same strides, the innermost axis visited by the segment loops
  outer.dim[5] = 1;
  outer.window = g.window / n;
  auto seg = [&](int64_t off) -> const float* {
    if (std::is_same<T, float>::value) return reinterpret_cast<const float*>(x) + off;
    sc.rows.resize(n);
    for (int64_t i = 0; i < n; ++i) sc.rows[i] = load(x, off + i);
    return sc.rows.data();
  };
  float a[8], b[8];
  for (int l = 0; l < 8; ++l) {
    a[l] = op == Op::kSoft ? -3.402823466e38f : 0.0f;
    b[l] = 0.0f;
  }
  if (op == Op::kSoft) {
    for_each_in_reduce(outer, e, [&](int64_t off) { seg_max(seg(off), n, beta, a); });
    float m = a[0];
    for (int l = 1; l < 8; ++l) m = a[l] > m ? a[l] : m;
    for (int l = 0; l < 8; ++l) a[l] = 0.0f;
    for_each_in_reduce(outer, e, [&](int64_t off) { seg_sum(seg(off), n, beta, m, a, b); });
    float se = 0.0f, sa = 0.0f;
    for (int l = 0; l < 8; ++l) {
      se += a[l];
      sa += b[l];
    }
    store(y, e, sa / se);
  } else {
    for_each_in_reduce(outer, e, [&](int64_t off) { seg_moments(seg(off), n, a, b); });
    float s1 = 0.0f, s2 = 0.0f;
    for (int l = 0; l < 8; ++l) {
      s1 += a[l];
      s2 += b[l];
    }
    store(y, e, s1 > 0.0f ? s2 / s1 : 0.0f);
  }
}

// Reduce form: one output element per work item through the shared math.
template <class T>
void run_reduce(Op op, const T* x, T* y, int64_t e, const Reduce6& g, float beta, uint32_t lo, uint32_t hi) {
  auto visit = [&](auto&& f) { for_each_in_reduce(g, e, [&](int64_t i) { f(load(x, i)); }); };
  float v;
  if (op == Op::kSoft) v = soft_pool_value(visit, beta);
  else if (op == Op::kExpectation) v = stochastic_expectation_value(visit);
  else v = stochastic_sample_value(visit, (uint64_t)e, lo, hi);
  store(y, e, v);
}

}  // namespace cpu
}  // namespace poolexport
