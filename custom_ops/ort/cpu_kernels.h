// CPU kernels, run on ONNX Runtime's thread pool (or the torch ops' pool). SoftPool's
// window forms: blocks of output rows through the shared-shift kernel (cpu_soft_shared.h,
// one exp per input element; AVX-512, AVX2 or portable lanes, cpu_simd.h), falling back to
// the per-window row kernels for a block whose range is too wide. The other window ops:
// one output row (n, c, od, oh) per work item; each valid input row is copied once into a
// padded float row, so every output column runs the same branch-free loop (AVX2 row
// kernels where the CPU has them, cpu_avx2.h); the reduce forms and the stochastic pick
// use the shared per-window math in include/poolexport.
#pragma once

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "poolexport/reduce.h"
#include "poolexport/soft_pool.h"
#include "poolexport/stochastic_pool.h"
#include "poolexport/window.h"
#include "cpu_avx2.h"
#include "cpu_philox.h"
#include "cpu_reduce_plane.h"
#include "cpu_soft_shared.h"

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

// Runs of n values between the input/output type and float (F16C for float16 on the
// vector paths; cpu_simd.h).
template <class T>
inline void to_floats(Isa isa, const T* src, float* dst, int64_t n) {
  if constexpr (std::is_same<T, float>::value) std::memcpy(dst, src, n * sizeof(float));
  else halves_to_floats(isa, src, dst, n);
}
template <class T>
inline void from_floats(Isa isa, const float* src, T* dst, int64_t n) {
  if constexpr (std::is_same<T, float>::value) std::memcpy(dst, src, n * sizeof(float));
  else floats_to_halves(isa, src, dst, n);
}

enum class Op { kSoft, kExpectation, kSample };

struct RowArgs {
  Window3 w;
  float beta;
  uint32_t seed_lo, seed_hi;
};

// Passes over one input row for output columns [lo, hi) (the reduce form uses them with
// stride 1). Pass 1 of SoftPool: running max of beta*x.
// am: running max |x| (the scaled path's check, soft_pool.h).
PX_DISPATCH static void soft_max_pass(const float* __restrict row, int64_t lo, int64_t hi, int64_t s, int64_t off, float beta,
                                     float* __restrict m, float* __restrict am) {
  if (s == 1) {
    for (int64_t o = lo; o < hi; ++o) {
      float x = row[o + off], z = beta * x, v = x < 0.0f ? -x : x;
      m[o] = m[o] > z ? m[o] : z;
      am[o] = am[o] > v ? am[o] : v;
    }
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

// Stochastic expectation: accumulate r and r^2 with r = max(x, 0), NaN kept (stochastic_r).
PX_DISPATCH static void moment_pass(const float* __restrict row, int64_t lo, int64_t hi, int64_t s, int64_t off,
                                   float* __restrict s1, float* __restrict s2) {
  if (s == 1) {
    for (int64_t o = lo; o < hi; ++o) {
      float v = row[o + off];
      float r = stochastic_r(v);
      s1[o] += r;
      s2[o] += r * r;
    }
  } else if (s == 2) {
    for (int64_t o = lo; o < hi; ++o) {
      float v = row[2 * o + off];
      float r = stochastic_r(v);
      s1[o] += r;
      s2[o] += r * r;
    }
  } else {
    for (int64_t o = lo; o < hi; ++o) {
      float v = row[o * s + off];
      float r = stochastic_r(v);
      s1[o] += r;
      s2[o] += r * r;
    }
  }
}

// Contiguous segments of one window (reductions over the innermost axis, e.g. global
// pooling over H x W): 8 independent lanes so the compiler vectorizes without
// reassociating a single float sum (no -ffast-math).
PX_DISPATCH static void seg_max(const float* __restrict x, int64_t n, float beta, float* __restrict lanes,
                                float* __restrict am) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) {
      float z = beta * x[i + l], v = x[i + l] < 0.0f ? -x[i + l] : x[i + l];
      lanes[l] = lanes[l] > z ? lanes[l] : z;
      am[l] = am[l] > v ? am[l] : v;
    }
  for (; i < n; ++i) {
    float z = beta * x[i], v = x[i] < 0.0f ? -x[i] : x[i];
    lanes[0] = lanes[0] > z ? lanes[0] : z;
    am[0] = am[0] > v ? am[0] : v;
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
      float r = stochastic_r(v);
      s1[l] += r;
      s2[l] += r * r;
    }
  for (; i < n; ++i) {
    float r = stochastic_r(x[i]);
    s1[0] += r;
    s2[0] += r * r;
  }
}

// Whether any of n floats is inf or NaN: an integer OR over the exponent bits, so the loop
// vectorizes (the expectation's finiteness check of each output row costs ~nothing).
PX_DISPATCH static bool any_nonfinite(const float* __restrict y, int64_t n) {
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t b;
    std::memcpy(&b, y + i, sizeof b);
    bad |= (uint32_t)((b & 0x7F800000u) == 0x7F800000u);
  }
  return bad != 0;
}

// Philox uniforms of n consecutive output elements from e0.
PX_DISPATCH static void philox_row(uint64_t e0, int64_t n, uint32_t seed_lo, uint32_t seed_hi, float* __restrict u) {
  for (int64_t i = 0; i < n; ++i) u[i] = philox_uniform(e0 + (uint64_t)i, seed_lo, seed_hi);
}

// Passes over padded rows (every column interior, whole vectors): Z holds beta * x with
// -FLT_MAX-like -inf padding, X holds x with 0 padding.
template <int S>
static inline void zmax_pass_t(const float* __restrict z, int64_t n, int64_t s, int64_t off, float* __restrict m) {
  const int64_t st = S ? S : s;
  for (int64_t o = 0; o < n; ++o) {
    float v = z[o * st + off];
    m[o] = m[o] > v ? m[o] : v;
  }
}
PX_DISPATCH static void zmax_pass(const float* __restrict z, int64_t n, int64_t s, int64_t off, float* __restrict m) {
  if (s == 1) zmax_pass_t<1>(z, n, s, off, m);
  else if (s == 2) zmax_pass_t<2>(z, n, s, off, m);
  else zmax_pass_t<0>(z, n, s, off, m);
}
template <int S>
static inline void zsum_pass_t(const float* __restrict z, const float* __restrict x, int64_t n, int64_t s, int64_t off,
                               const float* __restrict m, float* __restrict se, float* __restrict sa) {
  const int64_t st = S ? S : s;
  for (int64_t o = 0; o < n; ++o) {
    float e = fast_exp(z[o * st + off] - m[o]);
    se[o] += e;
    sa[o] += e * x[o * st + off];
  }
}
PX_DISPATCH static void zsum_pass(const float* __restrict z, const float* __restrict x, int64_t n, int64_t s, int64_t off,
                                  const float* __restrict m, float* __restrict se, float* __restrict sa) {
  if (s == 1) zsum_pass_t<1>(z, x, n, s, off, m, se, sa);
  else if (s == 2) zsum_pass_t<2>(z, x, n, s, off, m, se, sa);
  else zsum_pass_t<0>(z, x, n, s, off, m, se, sa);
}

// Per-thread scratch, reused across rows.
struct Scratch {
  std::vector<float> a, b, c;      // per output column accumulators
  std::vector<float> rows;         // float copies of fp16 input rows
  std::vector<int64_t> row_offs;   // valid (kd, kh) row offsets
  std::vector<const float*> rp;    // float views of those rows
  std::vector<float> xp, zp;       // padded rows: x (0 padding), beta * x (-inf padding)
  std::vector<const float*> tz, tx;  // AVX2 path: per window tap, its run in a split row
  // AVX2 path: split-row cache slots in xp (X phases, then Z phases), keyed by source row
  std::vector<const void*> slot_key;
  std::vector<uint64_t> slot_used;
  std::vector<int64_t> tap_at;  // per kw: offset of its run in a split row
  uint64_t stamp = 0;
  int64_t slot_size = -1;
  bool slot_soft = false;
};

#ifdef PX_HAVE_AVX2_PATH
// AVX2 path of run_row (soft and expectation): split each valid input row into stride
// phases, point one run per window tap into them, then the register-blocked row kernel.
// Split rows live in a few cache slots keyed by their source address, so rows shared by
// consecutive output rows (kernel > stride) are split once while a thread walks a plane.
template <class T>
void run_row_avx2(bool soft, const T* x_plane, T* y_row, const RowArgs& args, Scratch& sc) {
  const Window3& w = args.w;
  const int64_t ow_n = w.out[2], n8 = (ow_n + 7) / 8 * 8;
  const int64_t s = w.s[2], kw_n = w.k[2], dil = w.dil[2];
  // per phase, whole vectors: tap kw reads [q / s, q / s + n8) of phase q % s, q = kw * dil
  const int64_t len = (n8 + (kw_n - 1) * dil / s + 7) / 8 * 8;
  const size_t nrows = sc.row_offs.size();
  const int64_t per_row = s * len, slot_size = (soft ? 2 : 1) * per_row;
  const size_t nslots = 2 * (size_t)(w.k[0] * w.k[1]);
  if (sc.slot_size != slot_size || sc.slot_soft != soft || sc.slot_key.size() != nslots) {
    sc.slot_size = slot_size;
    sc.slot_soft = soft;
    sc.slot_key.assign(nslots, nullptr);
    sc.slot_used.assign(nslots, 0);
    sc.xp.resize(nslots * slot_size);
    sc.tap_at.resize(kw_n);
    for (int64_t kw = 0; kw < kw_n; ++kw) sc.tap_at[kw] = (kw * dil % s) * len + kw * dil / s;
  }
  ++sc.stamp;
  const float ninf = -__builtin_huge_valf();
  const int64_t taps = (int64_t)nrows * kw_n;
  sc.tx.resize(taps);
  sc.tz.resize(taps);
  for (size_t r = 0; r < nrows; ++r) {
    const void* key = x_plane + sc.row_offs[r];
    size_t slot = nslots;
    for (size_t i = 0; i < nslots; ++i)
      if (sc.slot_key[i] == key) slot = i;
    if (slot == nslots) {  // least recently used slot (never one this row already uses)
      slot = 0;
      for (size_t i = 1; i < nslots; ++i)
        if (sc.slot_used[i] < sc.slot_used[slot]) slot = i;
      sc.slot_key[slot] = key;
      float* X = sc.xp.data() + slot * slot_size;
      float* Z = soft ? X + per_row : nullptr;
      const float* src;
      if (std::is_same<T, float>::value) {
        src = reinterpret_cast<const float*>(key);
      } else {
        sc.rows.resize(w.in[2]);
        to_floats(Isa::kAvx2, x_plane + sc.row_offs[r], sc.rows.data(), w.in[2]);
        src = sc.rows.data();
      }
      if (s == 2 && w.in[2] + w.pad[2] + 2 * len + 32 < INT32_MAX) {  // its lane indices are int32
        split2_avx2(src, w.in[2], w.pad[2], len, args.beta, X, Z);
      } else {
        split_phases_avx2(src, w.in[2], w.pad[2], s, len, 0.0f, 1.0f, X);
        if (soft) split_phases_avx2(src, w.in[2], w.pad[2], s, len, ninf, args.beta, Z);
      }
    }
    sc.slot_used[slot] = sc.stamp;
    const float* X = sc.xp.data() + slot * slot_size;
    for (int64_t kw = 0; kw < kw_n; ++kw) {
      sc.tx[r * kw_n + kw] = X + sc.tap_at[kw];
      if (soft) sc.tz[r * kw_n + kw] = X + per_row + sc.tap_at[kw];
    }
  }
  sc.a.resize(n8);
  if (soft) soft_row_avx2(sc.tz.data(), sc.tx.data(), taps, 0, n8, sc.a.data());
  else moment_row_avx2(sc.tx.data(), taps, 0, n8, sc.a.data());
  from_floats(Isa::kAvx2, sc.a.data(), y_row, ow_n);
}
#endif

#ifdef PX_HAVE_AVX2_PATH
// sc.rp[r] = the window's r-th valid input row as float: in place for float input, a
// float copy (in sc.rows) for float16, so the AVX2 row kernels read only float.
template <class T>
void float_row_views(const T* x_plane, int64_t in_w, Scratch& sc) {
  const size_t nrows = sc.row_offs.size();
  sc.rp.resize(nrows);
  if (!std::is_same<T, float>::value) sc.rows.resize(nrows * in_w);
  for (size_t r = 0; r < nrows; ++r) {
    if (std::is_same<T, float>::value) {
      sc.rp[r] = reinterpret_cast<const float*>(x_plane) + sc.row_offs[r];
    } else {
      to_floats(Isa::kAvx2, x_plane + sc.row_offs[r], sc.rows.data() + r * in_w, in_w);
      sc.rp[r] = sc.rows.data() + r * in_w;
    }
  }
}

// AVX2 SoftPool for windows 2 columns wide at stride 2: the fused kernel reads the rows.
template <class T>
void run_row_soft_k2s2_avx2(const T* x_plane, T* y_row, const RowArgs& args, Scratch& sc) {
  const Window3& w = args.w;
  const int64_t ow_n = w.out[2], n8 = (ow_n + 7) / 8 * 8, in_w = w.in[2];
  const size_t nrows = sc.row_offs.size();
  float_row_views(x_plane, in_w, sc);
  sc.a.resize(n8);
  soft_k2s2_row_avx2(sc.rp.data(), (int64_t)nrows, in_w, w.pad[2], args.beta, n8, sc.a.data());
  from_floats(Isa::kAvx2, sc.a.data(), y_row, ow_n);
}

// Strides other than 2: column sums of r and r^2 over the window's rows, then split into phases.
template <class T>
void accumulate_and_split_moments(const T* x_plane, const RowArgs& args, int64_t len, Scratch& sc, float* P1,
                                  float* P2) {
  const Window3& w = args.w;
  const int64_t s = w.s[2], in_w = w.in[2];
  const int64_t in8 = (in_w + 7) / 8 * 8;
  sc.b.resize(2 * in8);
  float* S1 = sc.b.data();
  float* S2 = S1 + in8;
  for (size_t r = 0; r < sc.row_offs.size(); ++r) {
    const float* src;
    if (std::is_same<T, float>::value) {
      src = reinterpret_cast<const float*>(x_plane) + sc.row_offs[r];
    } else {
      sc.rows.resize(in_w);
      to_floats(Isa::kAvx2, x_plane + sc.row_offs[r], sc.rows.data(), in_w);
      src = sc.rows.data();
    }
    accum_moments_avx2(src, in_w, r == 0, S1, S2);
  }
  split_phases_avx2(S1, in_w, w.pad[2], s, len, 0.0f, 1.0f, P1);
  split_phases_avx2(S2, in_w, w.pad[2], s, len, 0.0f, 1.0f, P2);
}

// AVX2 path for StochasticPool expectation: its sums are separable, so the window's rows
// are summed column by column first (r and r^2 of whole contiguous rows; for stride 2
// fused with the phase split, in registers), then summed over the window's columns. Rows then
// columns is a different float summation order than window order (all terms >= 0: a
// rounding-level difference; the sampled pick never comes here).
template <class T>
void run_row_moments_avx2(const T* x_plane, T* y_row, const RowArgs& args, Scratch& sc) {
  const Window3& w = args.w;
  const int64_t ow_n = w.out[2], n8 = (ow_n + 7) / 8 * 8;
  const int64_t s = w.s[2], kw_n = w.k[2], dil = w.dil[2], in_w = w.in[2];
  const int64_t len = (n8 + (kw_n - 1) * dil / s + 7) / 8 * 8;  // per phase, as in run_row_avx2
  const size_t nrows = sc.row_offs.size();
  sc.zp.resize(2 * s * len);
  float* P1 = sc.zp.data();
  float* P2 = P1 + s * len;
  if (s == 2 && in_w + w.pad[2] + 2 * len + 32 < INT32_MAX) {  // lane indices are int32
    float_row_views(x_plane, in_w, sc);
    moments_split2_avx2(sc.rp.data(), (int64_t)nrows, in_w, w.pad[2], len, P1, P2);
  } else {
    accumulate_and_split_moments(x_plane, args, len, sc, P1, P2);
  }
  sc.tx.resize(2 * kw_n);
  for (int64_t kw = 0; kw < kw_n; ++kw) {
    const int64_t q = kw * dil, at = (q % s) * len + q / s;
    sc.tx[kw] = P1 + at;
    sc.tx[kw_n + kw] = P2 + at;
  }
  sc.a.resize(n8);
  moment_sums_row_avx2(sc.tx.data(), sc.tx.data() + kw_n, kw_n, 0, n8, sc.a.data());
  from_floats(Isa::kAvx2, sc.a.data(), y_row, ow_n);
}
#endif

// The sampled pick of stochastic_pool.h (stochastic_sample_pick_u) for a whole output
// row at once: the loops run over taps outside and output columns inside, so they
// vectorize while each column still sums in window order (bit for bit the same floats).
// Padding columns hold 0: adding 0 leaves a sum's bits alone and a 0 is never picked.
template <int S>
static inline void sample_total_t(const float* __restrict x, int64_t n, int64_t s, float* __restrict total) {
  const int64_t st = S ? S : s;
  for (int64_t o = 0; o < n; ++o) {
    const float a = x[o * st];
    total[o] = add_rn(total[o], stochastic_r(a));
  }
}
template <int S>
static inline void sample_pick_t(const float* __restrict x, int64_t n, int64_t s, const float* __restrict t,
                                 float* __restrict cum, float* __restrict picked, float* __restrict last) {
  const int64_t st = S ? S : s;
  for (int64_t o = 0; o < n; ++o) {
    const float a = x[o * st];
    const float r = stochastic_r(a);
    const bool was_below = cum[o] <= t[o];
    cum[o] = add_rn(cum[o], r);
    picked[o] = was_below && cum[o] > t[o] ? a : picked[o];
    last[o] = r > 0.0f ? a : last[o];
  }
}
PX_DISPATCH static void sample_total_pass(const float* x, int64_t n, int64_t s, float* total) {
  if (s == 1) sample_total_t<1>(x, n, s, total);
  else if (s == 2) sample_total_t<2>(x, n, s, total);
  else sample_total_t<0>(x, n, s, total);
}
PX_DISPATCH static void sample_pick_pass(const float* x, int64_t n, int64_t s, const float* t, float* cum,
                                         float* picked, float* last) {
  if (s == 1) sample_pick_t<1>(x, n, s, t, cum, picked, last);
  else if (s == 2) sample_pick_t<2>(x, n, s, t, cum, picked, last);
  else sample_pick_t<0>(x, n, s, t, cum, picked, last);
}

// xp: the window's nrows padded rows of width wp (0 padding); outputs to sc.c[0, ow_n).
inline void sample_row(const float* xp, size_t nrows, int64_t wp, const Window3& w, uint64_t e0, const RowArgs& args,
                       Scratch& sc, Isa isa) {
  const int64_t n = w.out[2], s = w.s[2];
  sc.a.resize(n);
#ifdef PX_HAVE_X86_LANES
  if (isa == Isa::kAvx512) philox_avx512::uniforms(e0, n, args.seed_lo, args.seed_hi, sc.a.data());
  else
#endif
    philox_row(e0, n, args.seed_lo, args.seed_hi, sc.a.data());
  sc.b.assign(n, 0.0f);
  float* total = sc.b.data();
  for (size_t r = 0; r < nrows; ++r)
    for (int64_t kw = 0; kw < w.k[2]; ++kw) sample_total_pass(xp + r * wp + kw * w.dil[2], n, s, total);
  sc.zp.assign(4 * n, 0.0f);
  float *t = sc.zp.data(), *cum = t + n, *picked = cum + n, *last = picked + n;
  for (int64_t o = 0; o < n; ++o) t[o] = mul_rn(sc.a[o], total[o]);
  for (size_t r = 0; r < nrows; ++r)
    for (int64_t kw = 0; kw < w.k[2]; ++kw) sample_pick_pass(xp + r * wp + kw * w.dil[2], n, s, t, cum, picked, last);
  sc.c.resize(n);
  // total 0: no pick (0); NaN (a NaN in the window): NaN, as stochastic_sample_pick_u
  for (int64_t o = 0; o < n; ++o)
    sc.c[o] = !(total[o] > 0.0f) ? (total[o] == total[o] ? 0.0f : total[o]) : cum[o] > t[o] ? picked[o] : last[o];
}

template <class T>
void run_row(Op op, const T* x_plane, T* y_row, int64_t row_index /* flat (n,c,od,oh) */, const RowArgs& args,
             Scratch& sc, Isa isa) {
  const Window3& w = args.w;
  int64_t oh = row_index % w.out[1];
  int64_t od = (row_index / w.out[1]) % w.out[0];
  int64_t ow_n = w.out[2];
  // the valid input rows of this output row, in (kd, kh) order
  sc.row_offs.clear();
  for_each_window_row(w, od, oh, [&](int64_t row) { sc.row_offs.push_back(row); });
  size_t nrows = sc.row_offs.size();
  if (nrows == 0) {
    for (int64_t ow = 0; ow < ow_n; ++ow) store(y_row, ow, 0.0f);
    return;
  }
#ifdef PX_HAVE_AVX2_PATH
  if (op != Op::kSample && isa != Isa::kPortable) {  // AVX-512 machines run these AVX2 kernels
    // the fused k2 s2 kernel measured 13% faster than the split path with 4 window rows
    // (3-D k2 s2) but 10% slower with 2 (2-D k2 s2): it loads each row twice
    if (op == Op::kSoft && w.s[2] == 2 && w.k[2] == 2 && w.dil[2] == 1 && w.k[0] * w.k[1] >= 4 &&
        w.in[2] + w.pad[2] + 2 * ow_n + 64 < INT32_MAX)
      run_row_soft_k2s2_avx2(x_plane, y_row, args, sc);
    else if (op == Op::kSoft) run_row_avx2(true, x_plane, y_row, args, sc);
    else run_row_moments_avx2(x_plane, y_row, args, sc);
    return;
  }
#endif
  // Copy each valid input row once into a padded row long enough for a whole number of
  // vectors of output columns: no border or remainder code in the passes, and fp16 is
  // converted here. Padding never counts: 0 in X (no weight in the sums), -inf in Z (its
  // exp is below float32 resolution next to the window maximum's exp(0) = 1; a window of
  // padding only gets sums ~1e-38 and sa = 0, so outputs 0).
  const int64_t owp = (ow_n + 7) / 8 * 8;
  const int64_t wp = (owp - 1) * w.s[2] + (w.k[2] - 1) * w.dil[2] + 1;
  const int64_t pw = w.pad[2], in_w = w.in[2];
  const int64_t c0 = std::min(pw, wp), c1 = std::min(pw + in_w, wp);  // copied range [c0, c1)
  const float beta = args.beta;
  const bool soft = op == Op::kSoft;
  sc.xp.resize(nrows * wp);
  if (soft) sc.zp.resize(nrows * wp);
  for (size_t r = 0; r < nrows; ++r) {
    float* X = sc.xp.data() + r * wp;
    const int64_t base = sc.row_offs[r] - pw;
    for (int64_t j = 0; j < c0; ++j) X[j] = 0.0f;
    for (int64_t j = c0; j < c1; ++j) X[j] = load(x_plane, base + j);
    for (int64_t j = c1; j < wp; ++j) X[j] = 0.0f;
    if (soft) {
      float* Z = sc.zp.data() + r * wp;
      const float ninf = -__builtin_huge_valf();
      for (int64_t j = 0; j < c0; ++j) Z[j] = ninf;
      for (int64_t j = c0; j < c1; ++j) Z[j] = beta * X[j];
      for (int64_t j = c1; j < wp; ++j) Z[j] = ninf;
    }
  }
  if (op == Op::kSample) {
    sample_row(sc.xp.data(), nrows, wp, w, (uint64_t)(row_index * ow_n), args, sc, isa);
    for (int64_t ow = 0; ow < ow_n; ++ow) store(y_row, ow, sc.c[ow]);
    return;
  }
  sc.a.assign(owp, soft ? -3.402823466e38f : 0.0f);
  sc.b.assign(owp, 0.0f);
  sc.c.assign(owp, 0.0f);
  float* A = sc.a.data();
  float* B = sc.b.data();
  float* Cc = sc.c.data();
  const int64_t s2 = w.s[2];
  if (soft) {
    for (size_t r = 0; r < nrows; ++r)
      for (int64_t kw = 0; kw < w.k[2]; ++kw) zmax_pass(sc.zp.data() + r * wp, owp, s2, kw * w.dil[2], A);
    for (size_t r = 0; r < nrows; ++r)
      for (int64_t kw = 0; kw < w.k[2]; ++kw)
        zsum_pass(sc.zp.data() + r * wp, sc.xp.data() + r * wp, owp, s2, kw * w.dil[2], A, B, Cc);
    for (int64_t ow = 0; ow < ow_n; ++ow) store(y_row, ow, Cc[ow] / B[ow]);
  } else {
    for (size_t r = 0; r < nrows; ++r)
      for (int64_t kw = 0; kw < w.k[2]; ++kw) moment_pass(sc.xp.data() + r * wp, 0, owp, s2, kw * w.dil[2], A, B);
    for (int64_t ow = 0; ow < ow_n; ++ow) store(y_row, ow, stochastic_ratio(B[ow], A[ow]));
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
  auto exact = [&](int64_t e) {  // one output through the shared math (its scaled path)
    auto visit = [&](auto&& f) { for_each_in_reduce(g, e, [&](int64_t i) { f(load(x, i)); }); };
    return op == Op::kSoft ? soft_pool_value(visit, beta) : stochastic_expectation_value(visit);
  };
  if (op == Op::kSoft) {
    for_each_in_reduce(g, first, [&](int64_t off) { soft_max_pass(row_at(off), 0, I, 1, 0, beta, A, Cc); });
    bool huge = false;  // max |x| above kSoftScaleAbove (or NaN): that output takes the shared math
    for (int64_t i = 0; i < I; ++i) huge |= !(Cc[i] <= limits::kSoftScaleAbove);
    std::vector<float> am;
    if (huge) am.assign(Cc, Cc + I);
    std::fill(Cc, Cc + I, 0.0f);
    for_each_in_reduce(g, first, [&](int64_t off) { soft_sum_pass(row_at(off), 0, I, 1, 0, beta, A, B, Cc); });
    for (int64_t i = 0; i < I; ++i)
      store(y, first + i, huge && !(am[i] <= limits::kSoftScaleAbove) ? exact(first + i) : Cc[i] / B[i]);
  } else {
    for_each_in_reduce(g, first, [&](int64_t off) { moment_pass(row_at(off), 0, I, 1, 0, A, B); });
    for (int64_t i = 0; i < I; ++i) {
      const float v = stochastic_ratio(B[i], A[i]);
      // sum(r^2) overflowed (or NaN): the shared math's scaled path
      store(y, first + i, v - v == 0.0f ? v : exact(first + i));
    }
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
  auto exact = [&]() {  // the shared math (its scaled path)
    auto visit = [&](auto&& f) { for_each_in_reduce(g, e, [&](int64_t i) { f(load(x, i)); }); };
    return op == Op::kSoft ? soft_pool_value(visit, beta) : stochastic_expectation_value(visit);
  };
  if (op == Op::kSoft) {
    for_each_in_reduce(outer, e, [&](int64_t off) { seg_max(seg(off), n, beta, a, b); });
    float m = a[0], am = b[0];
    for (int l = 1; l < 8; ++l) {
      m = a[l] > m ? a[l] : m;
      am = b[l] > am ? b[l] : am;
    }
    if (!(am <= limits::kSoftScaleAbove)) return store(y, e, exact());
    for (int l = 0; l < 8; ++l) b[l] = 0.0f;
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
    const float v = stochastic_ratio(s2, s1);
    store(y, e, v - v == 0.0f ? v : exact());  // sum(r^2) overflowed: the scaled path
  }
}

// Reduce form whose window is one contiguous run of P elements (the reduced axes trail the
// kept ones, e.g. global pooling over H x W): output e reduces the plane x[e P, (e + 1) P).
// Each plane is walked in chunks of kReduceChunk floats (reduce_plane.inc) whose partial
// results are combined in chunk order, so the bits do not depend on who runs a chunk.
// SoftPool: one pass for the plane's extremes, then one exp per element under the plane's
// shift m = beta * c (c its largest x, or smallest for beta < 0), y = c + sum e (x - c) / sum e
// as soft_pool.h's unscaled path; a plane whose max |x| exceeds kSoftScaleAbove (or holding
// inf, or whose beta * c overflows) takes the shared math, whose scaled path keeps the sums
// finite. Expectation: one pass of sums; a plane whose sum(r^2) overflowed (or NaN) takes the
// shared math too. Few planes (< kReduceSplitPlanes) of several chunks: threads share their
// chunks (two rounds for SoftPool: extremes, then sums); otherwise whole planes per thread.
using limits::kReduceChunk;
using limits::kReduceSplitPlanes;

// A work item's float scratch (float16 planes converted, transposed planes), grown without
// the zero fill of std::vector: every float is written before it is read, and a float16
// plane of 56 x 56 is 12.5 KB, cleared once per item of two planes before.
class FloatScratch {
 public:
  float* get(int64_t n) {
    if (n > size_) {
      p_.reset(new float[n]);
      size_ = n;
    }
    return p_.get();
  }

 private:
  std::unique_ptr<float[]> p_;
  int64_t size_ = 0;
};

// Float view of n elements at p: p itself for float, a converted copy in buf for float16.
template <class T>
inline const float* chunk_floats(Isa isa, const T* p, int64_t n, FloatScratch& buf) {
  if constexpr (std::is_same<T, float>::value) {
    (void)isa, (void)buf, (void)n;
    return p;
  } else {
    float* f = buf.get(kReduceChunk);
    halves_to_floats(isa, p, f, n);
    return f;
  }
}

template <class T>
float plane_exact(Op op, const T* p, int64_t P, float beta) {
  auto visit = [&](auto&& f) {
    for (int64_t i = 0; i < P; ++i) f(load(p, i));
  };
  return op == Op::kSoft ? soft_pool_value(visit, beta) : stochastic_expectation_value(visit);
}

// SoftPool of a plane whose extremes are known: its shift, then its sums chunk by chunk.
template <class T>
float plane_soft_given_range(Isa isa, const T* p, int64_t P, float beta, float lo, float hi, FloatScratch& buf) {
  const PlaneShift sh = plane_shift(lo, hi, beta);
  if (sh.exact) return plane_exact(Op::kSoft, p, P, beta);
  float se = 0.0f, sd = 0.0f;
  for (int64_t j = 0; j * kReduceChunk < P; ++j) {
    const int64_t n = std::min(kReduceChunk, P - j * kReduceChunk);
    float a, b;
    plane_chunk_soft_sums(isa, chunk_floats(isa, p + j * kReduceChunk, n, buf), n, sh, beta, &a, &b);
    se += a;
    sd += b;
  }
  return sh.c + sd / se;  // se >= 1: the maximum's weight is 2^0
}

// One whole plane on the calling thread.
template <class T>
float plane_value(Op op, Isa isa, const T* p, int64_t P, float beta, FloatScratch& buf) {
  const int64_t chunks = (P + kReduceChunk - 1) / kReduceChunk;
  auto chunk = [&](int64_t j, int64_t* n) {
    *n = std::min(kReduceChunk, P - j * kReduceChunk);
    return chunk_floats(isa, p + j * kReduceChunk, *n, buf);
  };
  int64_t n;
  if (op == Op::kExpectation) {
    float s1 = 0.0f, s2 = 0.0f;
    for (int64_t j = 0; j < chunks; ++j) {
      const float* f = chunk(j, &n);
      float a, b;
      plane_chunk_moments(isa, f, n, &a, &b);
      s1 += a;
      s2 += b;
    }
    const float v = stochastic_ratio(s2, s1);
    return v - v == 0.0f ? v : plane_exact(op, p, P, beta);
  }
  if (chunks == 1) {
    const float* f = chunk(0, &n);
    float y;
    return plane_soft(isa, f, n, beta, &y) ? y : plane_exact(op, p, P, beta);
  }
  float lo = __builtin_huge_valf(), hi = -lo;
  for (int64_t j = 0; j < chunks; ++j) {
    const float* f = chunk(j, &n);
    float l, h;
    plane_chunk_range(isa, f, n, &l, &h);
    lo = l < lo ? l : lo;
    hi = h > hi ? h : hi;
  }
  return plane_soft_given_range(isa, p, P, beta, lo, hi, buf);
}

// A float16 plane of several chunks (SoftPool): converted into plane with its extremes in one
// pass where the path has that (the same lo, hi and floats as plane_value's chunked passes),
// then its sums; else converted, then plane_value.
inline float plane_soft_halves(Isa isa, const half_t* h, int64_t P, float beta, FloatScratch& plane,
                               FloatScratch& buf) {
  float* f = plane.get(P);
  float lo, hi;
  if (plane_halves_range(isa, h, P, f, &lo, &hi)) return plane_soft_given_range(isa, f, P, beta, lo, hi, buf);
  halves_to_floats(isa, h, f, P);
  return plane_value(Op::kSoft, isa, f, P, beta, buf);
}

// SoftPool of a group whose extremes and transposed planes t are known (plane_lanes_range):
// the sums, then the planes the fast math cannot take (bit l of exact) by the shared math.
template <class T>
inline void lanes_soft_finish(Isa isa, const T* p, int64_t P, int64_t n, float beta, bool narrow, const float* c,
                              uint32_t exact, const float* t, const void* next, int64_t next_bytes, float* out) {
  plane_lanes_soft_sums(isa, t, P, beta, narrow, c, next, next_bytes, out);
  for (int64_t l = 0; l < n; ++l)
    if (exact >> l & 1u) out[l] = plane_exact(Op::kSoft, p + l * P, P, beta);
}

// Small planes (at most kReduceLanePlaneSoft / kReduceLanePlaneMoments elements): one plane
// per vector lane (reduce_plane.inc), n <= plane_lanes(isa) planes at f (float) into out;
// t holds lanes * P floats (SoftPool); next: the next group's input, fetched into the cache
// while this one computes. A plane's bits depend on its own values only, so neither the
// thread split nor the planes sharing its group change them. Planes the fast math cannot
// take (soft: plane_shift's exact; expectation: a non-finite ratio) take plane_exact.
inline void planes_by_lane(Op op, Isa isa, const float* f, int64_t P, int64_t n, float beta, float* t,
                           const void* next, int64_t next_bytes, float* out) {
  alignas(64) float c[16];
  if (op == Op::kExpectation) {
    plane_lanes_expectation(isa, f, P, n, out);
    for (int64_t l = 0; l < n; ++l)  // sum(r^2) overflowed (or NaN): the shared math's scaled path
      if (!(out[l] - out[l] == 0.0f)) out[l] = plane_exact(op, f + l * P, P, beta);
    return;
  }
  uint32_t exact;  // (lanes >= n hold a plane of 0)
  const bool narrow = plane_lanes_range(isa, f, P, n, beta, t, c, &exact);
  lanes_soft_finish(isa, f, P, n, beta, narrow, c, exact, t, next, next_bytes, out);
}

template <class T, class PFor>
void reduce_planes_by_lane(Op op, const T* x, T* y, int64_t planes, int64_t P, float beta, PFor&& pfor) {
  const Isa isa = cpu_isa();
  const int64_t lanes = plane_lanes(isa), groups = (planes + lanes - 1) / lanes;
  // groups per item: all of them up to kReduceLaneOneItem units of cost, else what the cost
  // asks for (the pools cut work into items of about 2^15 units), fewer where that leaves under
  // kReduceLaneItems items
  const int64_t grain = int64_t(1) << 15, cost = lanes * ((op == Op::kSoft ? 4 : 1) * P + 1);
  const int64_t per = groups * cost <= limits::kReduceLaneOneItem
                          ? groups
                          : std::max<int64_t>(1, std::min(grain / cost, groups / limits::kReduceLaneItems));
  pfor(groups, grain / per, [&](int64_t b, int64_t e) {
    FloatScratch t_scratch, buf_scratch;
    float* const t = op == Op::kSoft ? t_scratch.get(2 * lanes * P) : nullptr;
    if (op == Op::kSoft) {  // the item's groups in one run, each group's sums alongside the next one's transpose
      const int64_t first = b * lanes, count = std::min(planes, e * lanes) - first;
      FloatScratch res_scratch;
      float* const res = res_scratch.get((e - b) * lanes);
      std::vector<uint32_t> exact(e - b);
      if (plane_lanes_soft_run(isa, x + first * P, P, e - b, count - (e - b - 1) * lanes, beta, t, res, exact.data())) {
        for (int64_t g = 0; g < e - b; ++g)
          for (int64_t l = 0; l < lanes && g * lanes + l < count; ++l)
            if (exact[g] >> l & 1u) res[g * lanes + l] = plane_exact(Op::kSoft, x + (first + g * lanes + l) * P, P, beta);
        from_floats(isa, res, y + first, count);
        return;
      }
    }
    float* const buf = std::is_same<T, float>::value ? nullptr : buf_scratch.get(lanes * P);
    alignas(64) float out[16];
    for (int64_t g = b; g < e; ++g) {
      const int64_t first = g * lanes, n = std::min(lanes, planes - first);
      const int64_t next_n = std::max<int64_t>(0, std::min(lanes, planes - first - lanes));
      const void* next = x + (first + n) * P;
      const int64_t next_bytes = next_n * P * (int64_t)sizeof(T);
      const float* f;
      if constexpr (std::is_same<T, float>::value) {
        f = x + first * P;
      } else {
        alignas(64) float c[16];
        uint32_t exact;
        bool narrow;
        if (op == Op::kSoft && plane_lanes_range_halves(isa, x + first * P, P, n, beta, t, c, &exact, &narrow)) {
          // the float16 rows converted as they are transposed (the same t as from a float copy)
          lanes_soft_finish(isa, x + first * P, P, n, beta, narrow, c, exact, t, next, next_bytes, out);
          from_floats(isa, out, y + first, n);
          continue;
        }
        // converted once; the shared math, plane_exact, then reads this copy (the same values)
        halves_to_floats(isa, x + first * P, buf, n * P);
        f = buf;
      }
      planes_by_lane(op, isa, f, P, n, beta, t, next, next_bytes, out);
      from_floats(isa, out, y + first, n);
    }
  });
}

template <class T, class PFor>
void reduce_planes_forward(Op op, const T* x, T* y, int64_t planes, int64_t P, float beta, PFor&& pfor) {
  if (P <= (op == Op::kSoft ? limits::kReduceLanePlaneSoft : limits::kReduceLanePlaneMoments))
    return reduce_planes_by_lane(op, x, y, planes, P, beta, pfor);
  const Isa isa = cpu_isa();
  const int64_t chunks = (P + kReduceChunk - 1) / kReduceChunk;
  // cost per element: an exp is worth a few adds (so that even 1 x 576 x 7 x 7 is shared)
  const int64_t cost = (op == Op::kSoft ? 4 : 1) * P + 1;
  if constexpr (!std::is_same<T, float>::value) {
    if (chunks == 1) {
      // float16 planes of one chunk: converted a chunk's worth of planes at a time (one
      // conversion call instead of one per small plane), then each plane as above
      const int64_t batch = std::max<int64_t>(1, kReduceChunk / P);
      pfor(planes, cost, [&](int64_t b, int64_t e) {
        FloatScratch buf, unused;
        float* const f = buf.get(std::min(batch, e - b) * P);
        for (int64_t i = b; i < e; i += batch) {
          const int64_t k = std::min(batch, e - i);
          halves_to_floats(isa, x + i * P, f, k * P);
          // (the shared math, plane_exact, then reads the plane's float copy: the same values)
          for (int64_t q = 0; q < k; ++q) store(y, i + q, plane_value(op, isa, f + q * P, P, beta, unused));
        }
      });
      return;
    }
  }
  if (chunks == 1 || planes >= kReduceSplitPlanes) {
    pfor(planes, cost, [&](int64_t b, int64_t e) {
      FloatScratch buf, plane;
      if (op == Op::kSoft) {  // the item's planes in one run, each plane's sums alongside the next one's extremes
        FloatScratch res;
        float* const out = res.get(e - b);
        std::vector<uint8_t> exact(e - b);
        if (plane_soft_run(isa, x + b * P, P, e - b, beta, plane.get(2 * P), out, exact.data())) {
          for (int64_t i = b; i < e; ++i) store(y, i, exact[i - b] ? plane_exact(op, x + i * P, P, beta) : out[i - b]);
          return;
        }
      }
      for (int64_t i = b; i < e; ++i) {
        if constexpr (std::is_same<T, float>::value) {
          store(y, i, plane_value(op, isa, x + i * P, P, beta, buf));
        } else if (op == Op::kSoft) {
          store(y, i, plane_soft_halves(isa, x + i * P, P, beta, plane, buf));
        } else {  // float16: the plane converted once, not once per pass over its chunks (same values)
          float* const f = plane.get(P);
          halves_to_floats(isa, x + i * P, f, P);
          store(y, i, plane_value(op, isa, f, P, beta, buf));
        }
      }
    });
    return;
  }
  // threads share the chunks; item = plane * chunks + chunk
  const int64_t items = planes * chunks;
  std::vector<float> pa(items), pb(items);
  auto each_chunk = [&](auto&& f) {
    pfor(items, (op == Op::kSoft ? 4 : 1) * kReduceChunk + 1, [&](int64_t b, int64_t e) {
      FloatScratch buf;
      for (int64_t i = b; i < e; ++i) {
        const int64_t j = i % chunks, n = std::min(kReduceChunk, P - j * kReduceChunk);
        f(i, chunk_floats(isa, x + (i / chunks) * P + j * kReduceChunk, n, buf), n);
      }
    });
  };
  std::vector<PlaneShift> sh;
  if (op == Op::kSoft) {
    each_chunk([&](int64_t i, const float* f, int64_t n) { plane_chunk_range(isa, f, n, &pa[i], &pb[i]); });
    sh.resize(planes);
    for (int64_t q = 0; q < planes; ++q) {
      float lo = __builtin_huge_valf(), hi = -lo;
      for (int64_t j = 0; j < chunks; ++j) {
        lo = pa[q * chunks + j] < lo ? pa[q * chunks + j] : lo;
        hi = pb[q * chunks + j] > hi ? pb[q * chunks + j] : hi;
      }
      sh[q] = plane_shift(lo, hi, beta);
    }
    each_chunk([&](int64_t i, const float* f, int64_t n) {
      const PlaneShift& s = sh[i / chunks];
      if (!s.exact) plane_chunk_soft_sums(isa, f, n, s, beta, &pa[i], &pb[i]);
    });
  } else {
    each_chunk([&](int64_t i, const float* f, int64_t n) { plane_chunk_moments(isa, f, n, &pa[i], &pb[i]); });
  }
  for (int64_t q = 0; q < planes; ++q) {
    if (op == Op::kSoft && sh[q].exact) {
      store(y, q, plane_exact(op, x + q * P, P, beta));
      continue;
    }
    float sa = 0.0f, sb = 0.0f;
    for (int64_t j = 0; j < chunks; ++j) {
      sa += pa[q * chunks + j];
      sb += pb[q * chunks + j];
    }
    float v;
    if (op == Op::kSoft) {
      v = sh[q].c + sb / sa;
    } else {
      v = stochastic_ratio(sb, sa);
      if (!(v - v == 0.0f)) v = plane_exact(op, x + q * P, P, beta);
    }
    store(y, q, v);
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

// SoftPool over blocks of kSharedRows output rows of one plane: the block's input rows go
// once through the shared-shift kernel (one exp per input element, cpu_soft_shared.h);
// a block whose range of beta*x is too wide, or holds inf/NaN, takes the per-window path.
// Blocks are fixed by the geometry alone, so results do not depend on the thread count.
using limits::kSharedRows;

// Which input rows a block of output rows reads: the same for every plane, so planned once
// per call (planning per block, with a 64-bit division per row, cost as much as a tenth of
// the block's arithmetic).
struct BlockPlan {
  std::vector<int64_t> offs;  // its distinct input rows, as plane offsets, in first-use order
  std::vector<int32_t> start, idx;  // output row q adds rows idx[start[q] .. start[q+1])
  int64_t first = 0, span = 0;      // the lowest offset and the elements up to the end of the last row
};

inline std::vector<BlockPlan> plan_blocks(const Window3& w) {
  const int64_t rows_per_plane = w.out[0] * w.out[1];
  std::vector<BlockPlan> plans((rows_per_plane + kSharedRows - 1) / kSharedRows);
  std::vector<int32_t> local(w.in[0] * w.in[1], -1);  // input row -> its index in the block
  for (BlockPlan& p : plans) {
    const int64_t q0 = (&p - plans.data()) * kSharedRows, q1 = std::min(q0 + kSharedRows, rows_per_plane);
    p.start.assign(1, 0);
    for (int64_t q = q0; q < q1; ++q) {
      for_each_window_row_index(w, q / w.out[1], q % w.out[1], [&](int64_t row) {
        if (local[row] < 0) {
          local[row] = (int32_t)p.offs.size();
          p.offs.push_back(row);
        }
        p.idx.push_back(local[row]);
      });
      p.start.push_back((int32_t)p.idx.size());
    }
    for (int64_t row : p.offs) local[row] = -1;
    int64_t lo = w.in[0] * w.in[1], hi = 0;
    for (int64_t& row : p.offs) {
      lo = std::min(lo, row), hi = std::max(hi, row);
      row *= w.in[2];  // plane offsets from here
    }
    p.first = lo * w.in[2];
    p.span = p.offs.empty() ? 0 : (hi + 1 - lo) * w.in[2];
  }
  return plans;
}

template <class T, class PFor>
void soft_window_forward(const T* x, T* y, int64_t N, int64_t C, const RowArgs& args, Isa isa, PFor&& pfor) {
  const Window3& w = args.w;
  const int64_t rows_per_plane = w.out[0] * w.out[1];
  const int64_t plane_in = w.in[0] * w.in[1] * w.in[2], out_w = w.out[2];
  const std::vector<BlockPlan> plans = plan_blocks(w);
  const int64_t blocks = (int64_t)plans.size();
  const int64_t cost = kSharedRows * (out_w * w.k[0] * w.k[1] * w.k[2] + 1);
  pfor(N * C * blocks, cost, [&](int64_t b, int64_t e) {
    std::vector<const float*> rows;
    std::vector<float> rows_f, out_f, buf;  // float copies of fp16 rows / outputs; kernel scratch
    Scratch fallback;
    for (int64_t item = b; item < e; ++item) {
      const int64_t plane = item / blocks, q0 = item % blocks * kSharedRows;
      const int64_t q1 = std::min(q0 + kSharedRows, rows_per_plane);
      const BlockPlan& p = plans[item % blocks];
      const T* xp = x + plane * plane_in;
      T* yb = y + (plane * rows_per_plane + q0) * out_w;
      const int64_t nrows = (int64_t)p.offs.size();
      rows.resize(nrows);
      if (!std::is_same<T, float>::value) rows_f.resize(nrows * w.in[2]);
      for (int64_t r = 0; r < nrows; ++r) {
        if (std::is_same<T, float>::value) {
          rows[r] = reinterpret_cast<const float*>(xp) + p.offs[r];
        } else {
          float* d = rows_f.data() + r * w.in[2];
          to_floats(isa, xp + p.offs[r], d, w.in[2]);
          rows[r] = d;
        }
      }
      // the next block's input follows this one's in memory (the next plane's after the last)
      const SharedBlock blk{rows.data(), nrows, p.start.data(), p.idx.data(), q1 - q0,
                            xp + p.first + p.span, p.span * (int64_t)sizeof(T)};
      float* yf = reinterpret_cast<float*>(yb);
      if (!std::is_same<T, float>::value) {
        out_f.resize((q1 - q0) * out_w);
        yf = out_f.data();
      }
      const SharedResult got = nrows > 0 ? soft_shared_block(isa, blk, w, args.beta, yf, buf) : SharedResult::kWide;
      if (got == SharedResult::kDone) {
        if (!std::is_same<T, float>::value) from_floats(isa, yf, yb, (q1 - q0) * out_w);
      } else if (got == SharedResult::kHuge) {
        // max |x| above kSoftScaleAbove (or inf/NaN): every window through the shared
        // math, whose scaled path keeps the sums finite
        for (int64_t q = q0; q < q1; ++q)
          for (int64_t ow = 0; ow < out_w; ++ow) {
            auto visit = [&](auto&& f) {
              for_each_in_window(w, q / w.out[1], q % w.out[1], ow, [&](int64_t i) { f(load(xp, i)); });
            };
            store(y, (plane * rows_per_plane + q) * out_w + ow, soft_pool_value(visit, args.beta));
          }
      } else {
        for (int64_t q = q0; q < q1; ++q)
          run_row(Op::kSoft, xp, y + (plane * rows_per_plane + q) * out_w, plane * rows_per_plane + q, args, fallback,
                  isa);
      }
    }
  });
}

// Whole-tensor forwards, shared by the ONNX Runtime kernels and the torch ops' C ABI
// (custom_ops/torch), so both give the same bits. pfor(n, cost_per_item, f) runs
// f(begin, end) over [0, n) on the caller's threads. The output is not empty.
template <class T, class PFor>
void window_forward(Op kind, const T* x, T* y, int64_t N, int64_t C, const RowArgs& args, PFor&& pfor) {
  const Isa isa = cpu_isa();
  if (kind == Op::kSoft) return soft_window_forward(x, y, N, C, args, isa, pfor);
  const Window3& w = args.w;
  const int64_t rows = N * C * w.out[0] * w.out[1];
  const int64_t plane_in = w.in[0] * w.in[1] * w.in[2];
  const int64_t rows_per_plane = w.out[0] * w.out[1];
  const int64_t cost = w.out[2] * w.k[0] * w.k[1] * w.k[2] + 1;
  pfor(rows, cost, [&](int64_t b, int64_t e) {
    Scratch sc;
    for (int64_t r = b; r < e; ++r) {
      const T* xp = x + r / rows_per_plane * plane_in;
      T* yr = y + r * w.out[2];
      run_row(kind, xp, yr, r, args, sc, isa);
      if (kind != Op::kExpectation || !std::is_same<T, float>::value) continue;  // float16: r^2 <= 4.3e9
      if (!any_nonfinite(reinterpret_cast<const float*>(yr), w.out[2])) continue;
      // sum(r^2) overflowed (max r above ~2^64 / sqrt(window)) or NaN: that output again
      // through the shared math, whose scaled path keeps the sums finite
      const int64_t q = r % rows_per_plane;
      for (int64_t ow = 0; ow < w.out[2]; ++ow) {
        const float v = load(yr, ow);
        if (v - v == 0.0f) continue;
        auto visit = [&](auto&& f) {
          for_each_in_window(w, q / w.out[1], q % w.out[1], ow, [&](int64_t i) { f(load(xp, i)); });
        };
        store(yr, ow, stochastic_expectation_value(visit));
      }
    }
  });
}

template <class T, class PFor>
void reduce_forward(Op kind, const T* x, T* y, const Reduce6& g, float beta, uint32_t lo, uint32_t hi, PFor&& pfor) {
  if (g.window == 0) {
    for (int64_t e = 0; e < g.outputs; ++e) store(y, e, 0.0f);
    return;
  }
  const int64_t inner = g.dim[5];
  int from;
  if (kind != Op::kSample && reduce_run(g, &from) == g.window)  // one contiguous run per output
    return reduce_planes_forward(kind, x, y, g.outputs, g.window, beta, pfor);
  if (kind != Op::kSample && !(g.mask & (1 << 5)) && inner >= 8) {
    pfor(g.outputs / inner, g.window * inner + 1, [&](int64_t b, int64_t e) {
      Scratch sc;
      for (int64_t r = b; r < e; ++r) run_reduce_inner(kind, x, y, r, g, beta, sc);
    });
  } else if (kind != Op::kSample && (g.mask & (1 << 5)) && inner >= 16) {
    pfor(g.outputs, g.window + 1, [&](int64_t b, int64_t e) {
      Scratch sc;
      for (int64_t i = b; i < e; ++i) run_reduce_segments(kind, x, y, i, g, beta, sc);
    });
  } else {
    pfor(g.outputs, g.window + 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) run_reduce(kind, x, y, i, g, beta, lo, hi);
    });
  }
}

}  // namespace cpu
}  // namespace poolexport
