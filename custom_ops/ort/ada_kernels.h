// The adaPool family's ONNX Runtime CPU kernels: EdscwPool and IdwPool (X -> Y) and
// AdaPool (X, Beta -> Y, Beta broadcast to Y), float and float16 (converted to float32
// once per input row, float32 math). Output rows on ORT's intra-op pool, each vectorised
// across its output columns (ada_rows.inc, AVX-512 / AVX2 / portable, SoftPool's shared
// exp); the windows it cannot take go through the per-window math of ada_pool.h.
#pragma once

#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "attrs.h"
#include "cpu_soft_shared.h"
#include "onnxruntime_lite_custom_op.h"
#include "ops.h"
#include "poolexport/ada_pool.h"
#include "poolexport/soft_pool.h"

namespace poolexport {

enum class AdaKind { kEdscw, kIdw, kAda };

// Per-window path: windows of at most this many positions are gathered into a local buffer first.
constexpr int64_t kAdaWindowBuffer = 64;

template <class S>
PX_HD float ada_load(S v) {
  if constexpr (std::is_same<S, float>::value) return v;
  else return half_bits_to_float(v);
}
template <class S>
PX_HD S ada_store(float v) {
  if constexpr (std::is_same<S, float>::value) return v;
  else return float_to_half_bits(v);
}

// The element strides of `in` broadcast (numpy rules, right-aligned) to `target`: 0 on a
// broadcast axis; false when it does not broadcast.
inline bool broadcast_strides(const std::vector<int64_t>& in, const std::vector<int64_t>& target,
                              std::vector<int64_t>* strides) {
  strides->assign(target.size(), 0);
  if (in.size() > target.size()) return false;
  int64_t st = 1;
  for (size_t i = 0; i < in.size(); ++i) {
    const size_t a = in.size() - 1 - i, t = target.size() - 1 - i;
    if (in[a] != 1 && in[a] != target[t]) return false;
    (*strides)[t] = in[a] == 1 ? 0 : st;
    st *= in[a];
  }
  return true;
}

// Beta's element offset for every output index, by numpy broadcasting (Beta's dims
// right-aligned with Y's, each 1 or equal); "" or the reason it does not broadcast.
inline std::string beta_strides(const std::string& op, const std::vector<int64_t>& beta,
                                const std::vector<int64_t>& out, std::vector<int64_t>* strides) {
  if (broadcast_strides(beta, out, strides)) return "";
  return op + ": Beta of shape " + list_str(beta) + " does not broadcast to the output " + list_str(out);
}

// Output rows ahead whose input rows are prefetched (SoftPool's kernel does the same per
// block): the row kernel itself reads each input row once, so without it every row waits
// for memory first.
constexpr int64_t kAdaPrefetchRows = 2;

// Windows that neither overlap nor pad along the width nor run past the row (k2 s2 type):
// up to this many outputs of consecutive output rows make one row for ada_row (the input
// rows side by side), so short rows fill their lanes (28 outputs are 2 vectors of 16 with 4
// lanes idle, 4 rows of 28 are 7 full vectors) and the per-row work is paid once per pack.
// EdscwPool and IdwPool only: AdaPool measured no gain on 2-D k2 s2 rows of 28 and 10%
// slower on 3-D rows of 14 (shared machine, A/B runs).
constexpr int64_t kAdaPackedOutputs = 128;

// ---- the vectorised row kernel (ada_rows.inc), compiled once per instruction set ----

// eDSCW's DSC denominator u^2 + v^2 (u, v: a and m over the window's max |a|) is kept at
// least this (2^-100): only where |a| and |m| are both under 2^-50 max|a| does it apply.
constexpr float kAdaDscDenMin = 7.88860905221011805e-31f;

// exp(t) for eDSCW's arguments t = DSC - 1 (ada_rows.inc's exp_unit): t >= -1 exactly (an fma
// of non-negative DSC parts with -1) and t <= 2^-20 (DSC <= 1 up to the rounding of its
// parts and of the reciprocal), so no range reduction: exp(t) = (1 + t) + t^2 q(t) with
// q a degree-5 polynomial (relative-error fit on [-1, 2^-18], approximation error 1.2e-9,
// float32 coefficients tuned by measurement). 1 + t is exact where t is near -1 (there the
// result is smallest, so the final rounding counts most). Measured against float64 on every
// 31st float of [-1, 2^-18]: at most 1.50 ulp with fused multiply-adds (AVX2, AVX-512), 1.78
// on the portable path (two roundings each); the shared exp_shifted: 2 ulp over [-60, 0],
// 0.72 on [-1, 0]. 8 vector operations instead of exp_shifted's 12. tests/test_ada_pool.py.
constexpr float kAdaExpUnitMin = -1.0f;
constexpr float kAdaExpUnitMax = 3.81469727e-06f;  // 2^-18
constexpr float kAdaExpUnitC2 = 0.49999946f;
constexpr float kAdaExpUnitC3 = 0.16665983f;
constexpr float kAdaExpUnitC4 = 0.041633297f;
constexpr float kAdaExpUnitC5 = 0.008251865f;
constexpr float kAdaExpUnitC6 = 0.001281432f;
constexpr float kAdaExpUnitC7 = 0.00012305279f;

namespace cpu {

// One output row for ada_row: the window's valid input rows split into stride phases
// (padding 0), tap kw of outputs [o, o + W) at rows[i] + off[kw] + o; valid (all-ones bits
// or 0) and pad_inf (0 or inf) mark the padding at the same offsets; interior[v] is set
// where every tap of vector v's outputs is valid (lanes past the row's outputs aside). n: outputs rounded up to the lane width; y, bad,
// beta, inv_count hold n values.
struct AdaRow {
  const float* const* rows;
  int64_t nrows, kw;
  const int64_t* off;
  const float* valid;
  const float* pad_inf;
  const uint8_t* interior;
  const float* inv_count;
  const float* beta;
  int64_t n;
  float* y;
  int64_t* bad;  // where ada_row lists the columns it leaves to the per-window path
};

// Stride phases of one input row: phase p, index t <- padded column s*t + p (half per
// phase, a multiple of the lane width; lp = s * half).
struct AdaSplit {
  int64_t in_w, pad, s, half, lp;

  // dst[p * half + t] = src[s * t + p - pad] inside the row, fill outside
  void split(const float* src, float fill, float* dst) const {
    for (int64_t p = 0; p < s; ++p) {
      float* d = dst + p * half;
      int64_t t0 = pad > p ? (pad - p + s - 1) / s : 0, t1 = pad + in_w > p ? (pad + in_w - p + s - 1) / s : 0;
      t0 = t0 < half ? t0 : half;
      t1 = t1 < half ? t1 : half;
      for (int64_t t = 0; t < t0; ++t) d[t] = fill;
      const float* b = src + p - pad;
      if (s == 1) std::memcpy(d + t0, b + t0, (t1 > t0 ? t1 - t0 : 0) * sizeof(float));
      else for (int64_t t = t0; t < t1; ++t) d[t] = b[s * t];
      for (int64_t t = t1 > t0 ? t1 : t0; t < half; ++t) d[t] = fill;
    }
  }

};

// The lane operations ada_rows.inc needs beyond cpu_simd.h's.
struct AdaExtPortable {
  using R = LanesPortable::R;
  static inline R bits(uint32_t b) {
    float f;
    memcpy(&f, &b, 4);
    return LanesPortable::set1(f);
  }
  static inline R and_bits(R a, R m) {
    for (int l = 0; l < 16; ++l) {
      uint32_t x, y;
      memcpy(&x, &a.v[l], 4);
      memcpy(&y, &m.v[l], 4);
      x &= y;
      memcpy(&a.v[l], &x, 4);
    }
    return a;
  }
  static inline R recip(R a) {
    for (int l = 0; l < 16; ++l) a.v[l] = 1.0f / a.v[l];
    return a;
  }
  // some lane with !(a <= b) (NaN included)
  static inline bool any_not_le(R a, R b) {
    bool any = false;
    for (int l = 0; l < 16; ++l) any |= !(a.v[l] <= b.v[l]);
    return any;
  }
  // c == 0 ? a : b, lane-wise
  static inline R where_zero(R c, R a, R b) {
    for (int l = 0; l < 16; ++l) a.v[l] = c.v[l] == 0.0f ? a.v[l] : b.v[l];
    return a;
  }
  // 0 <= t <= 1 ? a : b, lane-wise
  static inline R where_unit(R t, R a, R b) {
    for (int l = 0; l < 16; ++l) a.v[l] = t.v[l] >= 0.0f && t.v[l] <= 1.0f ? a.v[l] : b.v[l];
    return a;
  }
};

#ifdef PX_HAVE_X86_LANES
// recip: the hardware estimate and one Newton step, r + r (1 - d r): about 2^-22 relative
// (2 ulp) for normal d; 0 gives NaN (the callers replace or mask those lanes)
struct AdaExtAvx2 {
  using R = __m256;
  PX_TARGET_AVX2 static inline R bits(uint32_t b) { return _mm256_castsi256_ps(_mm256_set1_epi32((int32_t)b)); }
  PX_TARGET_AVX2 static inline R and_bits(R a, R m) { return _mm256_and_ps(a, m); }
  PX_TARGET_AVX2 static inline R recip(R d) {
    const R r = _mm256_rcp_ps(d);
    return _mm256_fmadd_ps(r, _mm256_fnmadd_ps(d, r, _mm256_set1_ps(1.0f)), r);
  }
  PX_TARGET_AVX2 static inline bool any_not_le(R a, R b) { return _mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_NLE_UQ)) != 0; }
  PX_TARGET_AVX2 static inline R where_zero(R c, R a, R b) {
    return _mm256_blendv_ps(b, a, _mm256_cmp_ps(c, _mm256_setzero_ps(), _CMP_EQ_OQ));
  }
  PX_TARGET_AVX2 static inline R where_unit(R t, R a, R b) {
    const R in = _mm256_and_ps(_mm256_cmp_ps(t, _mm256_setzero_ps(), _CMP_GE_OQ),
                               _mm256_cmp_ps(t, _mm256_set1_ps(1.0f), _CMP_LE_OQ));
    return _mm256_blendv_ps(b, a, in);
  }
};
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
struct AdaExtAvx512 {
  using R = __m512;
  PX_TARGET_AVX512 static inline R bits(uint32_t b) { return _mm512_castsi512_ps(_mm512_set1_epi32((int32_t)b)); }
  PX_TARGET_AVX512 static inline R and_bits(R a, R m) {
    return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a), _mm512_castps_si512(m)));
  }
  PX_TARGET_AVX512 static inline R recip(R d) {
    const R r = _mm512_rcp14_ps(d);
    return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(1.0f)), r);
  }
  PX_TARGET_AVX512 static inline bool any_not_le(R a, R b) { return _mm512_cmp_ps_mask(a, b, _CMP_NLE_UQ) != 0; }
  PX_TARGET_AVX512 static inline R where_zero(R c, R a, R b) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(c, _mm512_setzero_ps(), _CMP_EQ_OQ), b, a);
  }
  PX_TARGET_AVX512 static inline R where_unit(R t, R a, R b) {
    const __mmask16 in = _mm512_cmp_ps_mask(t, _mm512_setzero_ps(), _CMP_GE_OQ) &
                         _mm512_cmp_ps_mask(t, _mm512_set1_ps(1.0f), _CMP_LE_OQ);
    return _mm512_mask_blend_ps(in, b, a);
  }
};
#pragma GCC diagnostic pop
#endif

#define PX_ADA_NS ada_portable
#define PX_ADA_TARGET
#define PX_ADA_LANES LanesPortable
#define PX_ADA_EXT AdaExtPortable
#define PX_ADA_EXP shared_portable
#include "ada_rows.inc"
#undef PX_ADA_NS
#undef PX_ADA_TARGET
#undef PX_ADA_LANES
#undef PX_ADA_EXT
#undef PX_ADA_EXP

#ifdef PX_HAVE_X86_LANES
#define PX_ADA_NS ada_avx2
#define PX_ADA_TARGET PX_TARGET_AVX2
#define PX_ADA_LANES LanesAvx2
#define PX_ADA_EXT AdaExtAvx2
#define PX_ADA_EXP shared_avx2
#include "ada_rows.inc"
#undef PX_ADA_NS
#undef PX_ADA_TARGET
#undef PX_ADA_LANES
#undef PX_ADA_EXT
#undef PX_ADA_EXP

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#define PX_ADA_NS ada_avx512
#define PX_ADA_TARGET PX_TARGET_AVX512
#define PX_ADA_LANES LanesAvx512
#define PX_ADA_EXT AdaExtAvx512
#define PX_ADA_EXP shared_avx512
#include "ada_rows.inc"
#undef PX_ADA_NS
#undef PX_ADA_TARGET
#undef PX_ADA_LANES
#undef PX_ADA_EXT
#undef PX_ADA_EXP
#pragma GCC diagnostic pop
#endif

inline int64_t ada_lanes(Isa isa) {
  return isa == Isa::kAvx2 ? limits::kLanesAvx2 : (isa == Isa::kAvx512 ? limits::kLanesAvx512 : limits::kLanesPortable);
}

template <AdaKind Kind>
int64_t ada_row(Isa isa, const AdaRow& r) {
#ifdef PX_HAVE_X86_LANES
  if (isa == Isa::kAvx512) return ada_avx512::ada_row<Kind>(r);
  if (isa == Isa::kAvx2) return ada_avx2::ada_row<Kind>(r);
#endif
  return ada_portable::ada_row<Kind>(r);
}

inline void ada_split_row(Isa isa, const float* src, const AdaSplit& g, float* dst) {
#ifdef PX_HAVE_X86_LANES
  if (isa == Isa::kAvx512) return ada_avx512::split_row(src, g, dst);
  if (isa == Isa::kAvx2) return ada_avx2::split_row(src, g, dst);
#endif
  ada_portable::split_row(src, g, dst);
}

inline void ada_split_packed(Isa isa, const float* const* src, int64_t nsrc, int64_t ow, const AdaSplit& g,
                             float* dst) {
#ifdef PX_HAVE_X86_LANES
  if (isa == Isa::kAvx512) return ada_avx512::split_packed(src, nsrc, ow, g, dst);
  if (isa == Isa::kAvx2) return ada_avx2::split_packed(src, nsrc, ow, g, dst);
#endif
  ada_portable::split_packed(src, nsrc, ow, g, dst);
}

inline void ada_exp_unit_n(Isa isa, const float* t, float* out, int64_t n) {
#ifdef PX_HAVE_X86_LANES
  if (isa == Isa::kAvx512) return ada_avx512::exp_unit_n(t, out, n);
  if (isa == Isa::kAvx2) return ada_avx2::exp_unit_n(t, out, n);
#endif
  ada_portable::exp_unit_n(t, out, n);
}

// The column geometry shared by every output row of a call: stride phases of one padded
// input row (phase p, index t <- padded column s*t + p), the taps' offsets into them, the
// padding masks, and per window-row count the reciprocal of every output's valid count.
struct AdaGeom : AdaSplit {
  int64_t lanes, n;
  std::vector<int64_t> off;
  std::vector<float> valid, pad_inf, inv_count;  // inv_count: (nrows - 1) * n + ow
  std::vector<uint8_t> interior;

  AdaGeom(const Window3& w, Isa isa) {
    lanes = ada_lanes(isa);
    in_w = w.in[2], pad = w.pad[2], s = w.s[2];
    const int64_t out_w = w.out[2], k = w.k[2], dil = w.dil[2];
    n = (out_w + lanes - 1) / lanes * lanes;
    half = (n + (k - 1) * dil / s + lanes - 1) / lanes * lanes;  // the last tap's last load ends before
    lp = s * half;
    off.resize(k);
    for (int64_t kw = 0; kw < k; ++kw) off[kw] = (kw * dil) % s * half + kw * dil / s;
    const std::vector<float> ones(in_w, bits_to_float(-1)), zeros(in_w, 0.0f);
    valid.resize(lp);
    pad_inf.resize(lp);
    split(ones.data(), 0.0f, valid.data());
    split(zeros.data(), __builtin_huge_valf(), pad_inf.data());
    std::vector<int64_t> cols(n);
    for (int64_t ow = 0; ow < n; ++ow) {
      cols[ow] = 0;
      for (int64_t kw = 0; kw < k; ++kw) {
        const int64_t c = ow * s - pad + kw * dil;
        cols[ow] += c >= 0 && c < in_w;
      }
    }
    // a vector is interior when its outputs' windows have no padding; the lanes past out_w
    // are not outputs (their results are dropped, and they read only the phases' zeros and
    // the row's finite values, which pass 1 checks anyway), so they do not count: a row of
    // 28 outputs keeps its second vector on the path without padding masks
    interior.assign(n / lanes, 1);
    for (int64_t ow = 0; ow < out_w; ++ow)
      if (cols[ow] != k) interior[ow / lanes] = 0;
    const int64_t max_rows = w.k[0] * w.k[1];
    inv_count.resize(max_rows * n);
    for (int64_t r = 1; r <= max_rows; ++r)
      for (int64_t ow = 0; ow < n; ++ow)
        inv_count[(r - 1) * n + ow] = cols[ow] ? 1.0f / (float)(r * cols[ow]) : 0.0f;
  }
};

}  // namespace cpu

// Every output of planes [0, N*C), one output row per step on `pfor` (ort_pfor(ctx) for ONNX
// Runtime; the torch ops pass their own pool): the
// window rows are converted to float once and split into phases (kept for the next
// output row, which shares them when windows overlap), then ada_row across the row's
// outputs; the lanes it flags (inf/NaN, max |x| above kSoftScaleAbove, a result that is
// not finite) and rows without a valid input row take the per-window math of ada_pool.h.
template <AdaKind Kind, class S, class Pfor>
void ada_forward_cpu(Pfor&& pfor, const S* x, S* y, const S* beta, const std::vector<int64_t>& bstrides,
                     const std::vector<int64_t>& out_shape, int64_t planes, const Window3& w) {
  const cpu::Isa isa = cpu::cpu_isa();
  const cpu::AdaGeom g(w, isa);
  const int64_t in_plane = w.in[0] * w.in[1] * w.in[2];
  const int64_t window_size = w.k[0] * w.k[1] * w.k[2];
  const int64_t cost = window_size * (Kind == AdaKind::kAda ? 40 : 20) + 8;
  auto beta_offset = [&](int64_t o) {  // Y's multi-index (row-major over out_shape) dotted with Beta's strides
    int64_t rest = o, boff = 0;
    for (size_t i = out_shape.size(); i-- > 0;) {
      boff += (rest % out_shape[i]) * bstrides[i];
      rest /= out_shape[i];
    }
    return boff;
  };
  const int64_t rows_per_plane = w.out[0] * w.out[1];
  const int64_t rows = planes * rows_per_plane;
  // Beta's offset is linear in Y's multi-index: a plane's part plus an output row's part
  std::vector<int64_t> beta_plane, beta_row;
  if (Kind == AdaKind::kAda) {
    beta_plane.resize(planes);
    beta_row.resize(rows_per_plane);
    for (int64_t p = 0; p < planes; ++p) beta_plane[p] = beta_offset(p * rows_per_plane * w.out[2]);
    for (int64_t q = 0; q < rows_per_plane; ++q) beta_row[q] = beta_offset(q * w.out[2]);
  }
  // the packed rows: `pack` output rows side by side, one virtual row of pack * out_w outputs
  // (every window inside its row: ceil mode's partial last window would read the next row)
  const bool packable = w.pad[2] == 0 && (w.k[2] - 1) * w.dil[2] < w.s[2] &&
                        w.s[2] * (w.out[2] - 1) + (w.k[2] - 1) * w.dil[2] < w.in[2];
  const int64_t pack =
      Kind != AdaKind::kAda && packable && w.out[2] < kAdaPackedOutputs ? kAdaPackedOutputs / w.out[2] : 1;
  Window3 wp = w;
  wp.in[2] = pack * w.in[2];
  wp.out[2] = pack * w.out[2];
  const cpu::AdaGeom gp(wp, isa);
  const int64_t full_rows = w.k[0] * w.k[1];
  pfor(rows, cost * w.out[2], [&](int64_t begin, int64_t end) {
    std::vector<int64_t> offs, kept_offs;
    std::vector<std::vector<float>> bufs, kept_bufs;
    std::vector<const float*> ptrs;
    std::vector<float> row_f(pack > 1 ? gp.in_w : w.in[2]), yrow(gp.n > g.n ? gp.n : g.n);
    std::vector<float> brow(yrow.size(), 0.0f);
    std::vector<uint16_t> yhalf(std::is_same<S, float>::value ? 0 : yrow.size());
    std::vector<int64_t> bad(yrow.size()), pack_offs(pack > 1 ? pack * full_rows : 0);
    // the packed rows' phases: zeros past the packed outputs, written once here
    std::vector<std::vector<float>> pack_bufs(pack > 1 ? full_rows : 0, std::vector<float>(gp.lp, 0.0f));
    std::vector<const float*> pack_src(pack);
    int64_t kept_plane = -1;
    // output ow of row r by the per-window math (flagged lanes)
    auto one = [&](int64_t r, int64_t ow) {
      const int64_t plane = r / rows_per_plane, q = r % rows_per_plane;
      const int64_t od = q / w.out[1], oh = q % w.out[1];
      const S* xp = x + plane * in_plane;
      const int64_t o0 = r * w.out[2];
      float buf[kAdaWindowBuffer];  // the values gathered once: the math visits them 3 to 6 times
      int64_t count = 0;
      const bool buffered = window_size <= kAdaWindowBuffer;
      if (buffered) for_each_in_window(w, od, oh, ow, [&](int64_t off) { buf[count++] = ada_load(xp[off]); });
      auto visit = [&](auto&& f) {
        if (buffered) {
          for (int64_t i = 0; i < count; ++i) f(buf[i]);
        } else {
          for_each_in_window(w, od, oh, ow, [&](int64_t off) { f(ada_load(xp[off])); });
        }
      };
      float v;
      if constexpr (Kind == AdaKind::kEdscw) {
        v = edscw_pool_value(visit);
      } else if constexpr (Kind == AdaKind::kIdw) {
        v = idw_pool_value(visit);
      } else {
        v = ada_blend(ada_load(beta[beta_offset(o0 + ow)]), edscw_pool_value(visit), soft_pool_value(visit, 1.0f));
      }
      y[o0 + ow] = ada_store<S>(v);
    };
    auto prefetch_row = [&](int64_t rn) {  // a later row's input, on its way while this one computes
      const int64_t qn = rn % rows_per_plane;
      const char* pn = reinterpret_cast<const char*>(x + rn / rows_per_plane * in_plane);
      for_each_window_row(w, qn / w.out[1], qn % w.out[1], [&](int64_t off) {
        for (int64_t b = 0; b < w.in[2] * (int64_t)sizeof(S); b += 64) __builtin_prefetch(pn + off * sizeof(S) + b);
      });
    };
    // Beta's values for output row r; a row of contiguous float16 goes through the vector
    // conversion (one by one, its integer conversion cost as much as the row's math)
    auto load_beta = [&](int64_t r, float* dst) {
      const int64_t b0 = beta_plane[r / rows_per_plane] + beta_row[r % rows_per_plane], bs = bstrides.back();
      if (bs == 1 && w.out[2] > 1) {
        if constexpr (std::is_same<S, float>::value) std::memcpy(dst, beta + b0, w.out[2] * sizeof(float));
        else cpu::halves_to_floats(isa, beta + b0, dst, w.out[2]);
      } else {
        for (int64_t ow = 0; ow < w.out[2]; ++ow) dst[ow] = ada_load(beta[b0 + ow * bs]);
      }
    };
    auto run_row = [&](const cpu::AdaGeom& gg, int64_t nrows, int64_t r0, int64_t nr) {
      const cpu::AdaRow row{ptrs.data(), nrows, w.k[2], gg.off.data(), gg.valid.data(), gg.pad_inf.data(),
                            gg.interior.data(), gg.inv_count.data() + (nrows - 1) * gg.n, brow.data(), gg.n,
                            yrow.data(), bad.data()};
      const int64_t nbad = cpu::ada_row<Kind>(isa, row), count = nr * w.out[2];
      if constexpr (std::is_same<S, float>::value) {
        std::memcpy(y + r0 * w.out[2], yrow.data(), count * sizeof(float));
      } else {  // whole vectors (gg.n is a multiple of 8) into yhalf: no scalar tail conversion
        cpu::floats_to_halves(isa, yrow.data(), yhalf.data(), (count + 7) / 8 * 8);
        std::memcpy(y + r0 * w.out[2], yhalf.data(), count * sizeof(S));
      }
      for (int64_t i = 0; i < nbad; ++i)
        if (bad[i] < count) one(r0 + bad[i] / w.out[2], bad[i] % w.out[2]);
    };
    // rows r .. r + pack - 1 as one packed row; false (nothing done) where a row lacks a full
    // set of window rows (padding, ceil mode)
    auto packed_step = [&](int64_t r) {
      int64_t n = 0;
      for (int64_t b = 0; b < pack; ++b) {
        const int64_t q = (r + b) % rows_per_plane, base = (r + b) / rows_per_plane * in_plane;
        const int64_t before = n;
        for_each_window_row(w, q / w.out[1], q % w.out[1], [&](int64_t off) {
          if (n < pack * full_rows) pack_offs[n] = base + off;
          ++n;
        });
        if (n - before != full_rows) return false;
      }
      if (r + 2 * pack <= end)
        for (int64_t b = 0; b < pack; ++b) prefetch_row(r + pack + b);
      ptrs.resize(full_rows);
      for (int64_t i = 0; i < full_rows; ++i) {  // window row i of every packed row, side by side
        for (int64_t b = 0; b < pack; ++b) {
          const S* src = x + pack_offs[b * full_rows + i];
          if constexpr (std::is_same<S, float>::value) {
            pack_src[b] = src;
          } else {
            cpu::halves_to_floats(isa, src, row_f.data() + b * w.in[2], w.in[2]);
            pack_src[b] = row_f.data() + b * w.in[2];
          }
        }
        cpu::ada_split_packed(isa, pack_src.data(), pack, w.out[2], gp, pack_bufs[i].data());
        ptrs[i] = pack_bufs[i].data();
      }
      if constexpr (Kind == AdaKind::kAda)
        for (int64_t b = 0; b < pack; ++b) load_beta(r + b, brow.data() + b * w.out[2]);
      run_row(gp, full_rows, r, pack);
      return true;
    };
    for (int64_t r = begin; r < end;) {
      if (pack > 1 && r + pack <= end && packed_step(r)) {
        r += pack;
        continue;
      }
      const int64_t plane = r / rows_per_plane, q = r % rows_per_plane;
      const int64_t od = q / w.out[1], oh = q % w.out[1];
      const S* xp = x + plane * in_plane;
      if (r + kAdaPrefetchRows < end) prefetch_row(r + kAdaPrefetchRows);
      offs.clear();
      for_each_window_row(w, od, oh, [&](int64_t off) { offs.push_back(off); });
      if (offs.empty()) {  // a window of padding rows only
        for (int64_t ow = 0; ow < w.out[2]; ++ow) one(r, ow);
        ++r;
        continue;
      }
      // the window rows as float phases; the previous output row's are reused
      bufs.resize(offs.size());
      for (size_t i = 0; i < offs.size(); ++i) {
        size_t j = 0;
        while (kept_plane == plane && j < kept_offs.size() && kept_offs[j] != offs[i]) ++j;
        if (kept_plane == plane && j < kept_offs.size() && !kept_bufs[j].empty()) {
          std::swap(bufs[i], kept_bufs[j]);
          continue;
        }
        bufs[i].resize(g.lp);
        const float* src;
        if constexpr (std::is_same<S, float>::value) {
          src = xp + offs[i];
        } else {
          cpu::halves_to_floats(isa, xp + offs[i], row_f.data(), w.in[2]);
          src = row_f.data();
        }
        cpu::ada_split_row(isa, src, g, bufs[i].data());
      }
      ptrs.resize(offs.size());
      for (size_t i = 0; i < offs.size(); ++i) ptrs[i] = bufs[i].data();
      if constexpr (Kind == AdaKind::kAda) load_beta(r, brow.data());
      run_row(g, (int64_t)offs.size(), r, 1);
      std::swap(kept_offs, offs);
      std::swap(kept_bufs, bufs);
      kept_plane = plane;
      ++r;
    }
  });
}

template <class T, AdaKind Kind>
struct AdaOpBase {
  std::string op = Kind == AdaKind::kEdscw ? "EdscwPool" : (Kind == AdaKind::kIdw ? "IdwPool" : "AdaPool");
  WindowAttrs wa;
  std::string error;

  AdaOpBase(const OrtApi*, const OrtKernelInfo* info) {
    try {
      read_window_attrs(info, op, &wa);
      error = wa.error;
    } catch (const std::exception& e) {
      error = op + ": " + e.what();
    }
  }

  Ort::Status run(OrtKernelContext* ctx, const Ort::Custom::Tensor<T>& X, const Ort::Custom::Tensor<T>* Beta,
                  Ort::Custom::Tensor<T>& Y) {
    try {
      if (!error.empty()) return invalid(error);
      std::vector<int64_t> shape = X.Shape(), out_shape, bstrides;
      Window3 w;
      std::string msg = wa.resolve(op, shape, &w, &out_shape);
      if (!msg.empty()) return invalid(msg);
      using S = typename Storage<T>::type;
      const S* beta = nullptr;
      if (Beta) {
        msg = beta_strides(op, Beta->Shape(), out_shape, &bstrides);
        if (!msg.empty()) return invalid(msg);
        beta = reinterpret_cast<const S*>(Beta->Data());
      }
      S* y = reinterpret_cast<S*>(Y.Allocate(out_shape));
      if (numel(out_shape) == 0) return Ort::Status{nullptr};
      const S* x = reinterpret_cast<const S*>(X.Data());
      ada_forward_cpu<Kind>(ort_pfor(ctx), x, y, beta, bstrides, out_shape, shape[0] * shape[1], w);
      return Ort::Status{nullptr};
    } catch (const std::exception& e) {
      return Ort::Status((op + ": " + e.what()).c_str(), ORT_FAIL);
    }
  }
};

template <class T, AdaKind Kind>
struct AdaWindowOp : AdaOpBase<T, Kind> {
  using AdaOpBase<T, Kind>::AdaOpBase;
  Ort::Status Compute(OrtKernelContext* ctx, const Ort::Custom::Tensor<T>& X, Ort::Custom::Tensor<T>& Y) {
    return this->run(ctx, X, nullptr, Y);
  }
};

template <class T>
struct AdaBlendOp : AdaOpBase<T, AdaKind::kAda> {
  using AdaOpBase<T, AdaKind::kAda>::AdaOpBase;
  Ort::Status Compute(OrtKernelContext* ctx, const Ort::Custom::Tensor<T>& X, const Ort::Custom::Tensor<T>& Beta,
                      Ort::Custom::Tensor<T>& Y) {
    return this->run(ctx, X, &Beta, Y);
  }
};

// Appends the three ops for one element type, CPU provider.
template <class T>
void add_ada_ops(std::vector<std::unique_ptr<Ort::Custom::OrtLiteCustomOp>>& ops, const char* ep) {
  using Ort::Custom::CreateLiteCustomOp;
  ops.emplace_back(CreateLiteCustomOp<AdaWindowOp<T, AdaKind::kEdscw>>("EdscwPool", ep, 1));
  ops.emplace_back(CreateLiteCustomOp<AdaWindowOp<T, AdaKind::kIdw>>("IdwPool", ep, 1));
  ops.emplace_back(CreateLiteCustomOp<AdaBlendOp<T>>("AdaPool", ep, 1));
}

}  // namespace poolexport

// eDSCW's exp on the CPU path the kernels take now, for tests that measure its error against
// float64 (arguments in [kAdaExpUnitMin, kAdaExpUnitMax]). Defined here, inline and kept
// (used), so the symbol exists wherever the kernels are compiled.
extern "C" __attribute__((visibility("default"), used)) inline void poolexport_ada_exp_unit(const float* t, float* out,
                                                                                          int64_t n) {
  poolexport::cpu::ada_exp_unit_n(poolexport::cpu::cpu_isa(), t, out, n);
}
