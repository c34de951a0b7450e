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

// ---- the vectorised row kernel (ada_rows.inc), compiled once per instruction set ----

// eDSCW's DSC denominator u^2 + v^2 (u, v: a and m over the window's max |a|) is kept at
// least this (2^-100): only where |a| and |m| are both under 2^-50 max|a| does it apply.
constexpr float kAdaDscDenMin = 7.88860905221011805e-31f;

namespace cpu {

// One output row for ada_row: the window's valid input rows split into stride phases
// (padding 0), tap kw of outputs [o, o + W) at rows[i] + off[kw] + o; valid (all-ones bits
// or 0) and pad_inf (0 or inf) mark the padding at the same offsets; interior[v] is set
// where every tap of vector v is valid. n: outputs rounded up to the lane width; y, bad,
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
    interior.assign(n / lanes, 1);
    for (int64_t ow = 0; ow < n; ++ow)
      if (ow >= out_w || cols[ow] != k) interior[ow / lanes] = 0;
    const int64_t max_rows = w.k[0] * w.k[1];
    inv_count.resize(max_rows * n);
    for (int64_t r = 1; r <= max_rows; ++r)
      for (int64_t ow = 0; ow < n; ++ow)
        inv_count[(r - 1) * n + ow] = cols[ow] ? 1.0f / (float)(r * cols[ow]) : 0.0f;
  }
};

}  // namespace cpu

// Every output of planes [0, N*C), one output row per step on ORT's intra-op pool: the
// window rows are converted to float once and split into phases (kept for the next
// output row, which shares them when windows overlap), then ada_row across the row's
// outputs; the lanes it flags (inf/NaN, max |x| above kSoftScaleAbove, a result that is
// not finite) and rows without a valid input row take the per-window math of ada_pool.h.
template <AdaKind Kind, class S>
void ada_forward_cpu(OrtKernelContext* ctx, const S* x, S* y, const S* beta, const std::vector<int64_t>& bstrides,
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
  parallel_for(ctx, rows, cost * w.out[2], [&](int64_t begin, int64_t end) {
    std::vector<int64_t> offs, kept_offs;
    std::vector<std::vector<float>> bufs, kept_bufs;
    std::vector<const float*> ptrs;
    std::vector<float> row_f(w.in[2]), yrow(g.n), brow(g.n, 0.0f);
    std::vector<int64_t> bad(g.n);
    int64_t kept_plane = -1;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t plane = r / rows_per_plane, q = r % rows_per_plane;
      const int64_t od = q / w.out[1], oh = q % w.out[1];
      const S* xp = x + plane * in_plane;
      const int64_t o0 = r * w.out[2];
      // one window by the per-window math (flagged lanes)
      auto one = [&](int64_t ow) {
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
      if (r + kAdaPrefetchRows < end) {  // a later row's input, on its way while this one computes
        const int64_t rn = r + kAdaPrefetchRows, qn = rn % rows_per_plane;
        const char* pn = reinterpret_cast<const char*>(x + rn / rows_per_plane * in_plane);
        for_each_window_row(w, qn / w.out[1], qn % w.out[1], [&](int64_t off) {
          for (int64_t b = 0; b < w.in[2] * (int64_t)sizeof(S); b += 64) __builtin_prefetch(pn + off * sizeof(S) + b);
        });
      }
      offs.clear();
      for_each_window_row(w, od, oh, [&](int64_t off) { offs.push_back(off); });
      if (offs.empty()) {  // a window of padding rows only
        for (int64_t ow = 0; ow < w.out[2]; ++ow) one(ow);
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
      if constexpr (Kind == AdaKind::kAda) {
        const int64_t b0 = beta_plane[plane] + beta_row[q], bs = bstrides.back();
        for (int64_t ow = 0; ow < w.out[2]; ++ow) brow[ow] = ada_load(beta[b0 + ow * bs]);
      }
      const int64_t nrows = (int64_t)offs.size();
      const cpu::AdaRow row{ptrs.data(), nrows, w.k[2], g.off.data(), g.valid.data(), g.pad_inf.data(),
                            g.interior.data(), g.inv_count.data() + (nrows - 1) * g.n, brow.data(), g.n,
                            yrow.data(), bad.data()};
      const int64_t nbad = cpu::ada_row<Kind>(isa, row);
      if constexpr (std::is_same<S, float>::value) std::memcpy(y + o0, yrow.data(), w.out[2] * sizeof(float));
      else cpu::floats_to_halves(isa, yrow.data(), y + o0, w.out[2]);
      for (int64_t i = 0; i < nbad; ++i)
        if (bad[i] < w.out[2]) one(bad[i]);
      std::swap(kept_offs, offs);
      std::swap(kept_bufs, bufs);
      kept_plane = plane;
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
      ada_forward_cpu<Kind>(ctx, x, y, beta, bstrides, out_shape, shape[0] * shape[1], w);
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
