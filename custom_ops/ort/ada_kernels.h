// The adaPool family's ONNX Runtime CPU kernels: EdscwPool and IdwPool (X -> Y) and
// AdaPool (X, Beta -> Y, Beta broadcast to Y), float and float16 (float16 storage,
// float32 math). One output window per step, the per-window math of ada_pool.h, on ORT's
// intra-op pool.
#pragma once

#include <string>
#include <type_traits>
#include <vector>

#include "attrs.h"
#include "onnxruntime_lite_custom_op.h"
#include "ops.h"
#include "poolexport/ada_pool.h"
#include "poolexport/soft_pool.h"

namespace poolexport {

enum class AdaKind { kEdscw, kIdw, kAda };

// Windows of at most this many positions are gathered into a local buffer first.
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

// Beta's element offset for every output index, by numpy broadcasting (Beta's dims
// right-aligned with Y's, each 1 or equal); "" or the reason it does not broadcast.
inline std::string beta_strides(const std::string& op, const std::vector<int64_t>& beta,
                                const std::vector<int64_t>& out, std::vector<int64_t>* strides) {
  strides->assign(out.size(), 0);
  if (beta.size() > out.size())
    return op + ": Beta of shape " + list_str(beta) + " does not broadcast to the output " + list_str(out);
  int64_t st = 1;
  for (size_t i = 0; i < beta.size(); ++i) {
    const size_t bi = beta.size() - 1 - i, oi = out.size() - 1 - i;
    if (beta[bi] != 1 && beta[bi] != out[oi])
      return op + ": Beta of shape " + list_str(beta) + " does not broadcast to the output " + list_str(out);
    (*strides)[oi] = beta[bi] == 1 ? 0 : st;
    st *= beta[bi];
  }
  return "";
}

// Interior runs: along an output row, the windows whose every W tap is inside the input
// share one set of valid taps (the valid (kd, kh) rows times all kw). Up to kAdaRun of them
// are gathered tap-major (a[t][j]) and the per-window math runs across j, branch-free, so
// the compiler vectorizes it. Same math as ada_pool.h: scaled mean, DSC on a / q, m / q,
// IDW weights dmin / dist, eM with its window maximum subtracted.
constexpr int64_t kAdaRun = 32;

template <AdaKind Kind>
void ada_run(const float (*a)[kAdaRun], int64_t taps, int64_t n, const float* beta, float* out) {
  float amax[kAdaRun], k[kAdaRun], mk[kAdaRun], s[kAdaRun], sy[kAdaRun], aux[kAdaRun];
  for (int64_t j = 0; j < n; ++j) amax[j] = 0.0f, mk[j] = 0.0f;
  for (int64_t t = 0; t < taps; ++t)
    for (int64_t j = 0; j < n; ++j) {
      const float v = a[t][j] < 0.0f ? -a[t][j] : a[t][j];
      amax[j] = v > amax[j] ? v : amax[j];
    }
  for (int64_t j = 0; j < n; ++j) k[j] = !(amax[j] <= limits::kSoftScaleAbove) ? limits::kSoftScale : 1.0f;
  for (int64_t t = 0; t < taps; ++t)
    for (int64_t j = 0; j < n; ++j) mk[j] += a[t][j] * k[j];
  for (int64_t j = 0; j < n; ++j) mk[j] = mk[j] / (float)taps, s[j] = 0.0f, sy[j] = 0.0f;
  if constexpr (Kind == AdaKind::kIdw) {
    for (int64_t j = 0; j < n; ++j) aux[j] = 3.402823466e38f;
    for (int64_t t = 0; t < taps; ++t)
      for (int64_t j = 0; j < n; ++j) {
        float d = a[t][j] * k[j] - mk[j];
        d = d < 0.0f ? -d : d;
        aux[j] = d < aux[j] ? d : aux[j];
      }
    for (int64_t t = 0; t < taps; ++t)
      for (int64_t j = 0; j < n; ++j) {
        const float ak = a[t][j] * k[j];
        float d = ak - mk[j];
        d = d < 0.0f ? -d : d;
        const float wgt = aux[j] / (d > 0.0f ? d : 1.0f);  // the dmin = 0 lanes are replaced below
        s[j] += wgt;
        sy[j] += wgt * ak;
      }
    for (int64_t j = 0; j < n; ++j) aux[j] = aux[j] == 0.0f ? mk[j] : sy[j] / s[j];
  } else {
    for (int64_t t = 0; t < taps; ++t)
      for (int64_t j = 0; j < n; ++j) {
        const float ak = a[t][j] * k[j];
        const float aa = ak < 0.0f ? -ak : ak, am = mk[j] < 0.0f ? -mk[j] : mk[j];
        const float q = aa > am ? aa : am;
        const float inv_q = 1.0f / (q == 0.0f ? 1.0f : q);  // one division, two products
        const float u = ak * inv_q, v = mk[j] * inv_q;
        const float uv = u * v;
        const float r2 = u * u + v * v;
        const float d = q == 0.0f ? 1.0f : 2.0f * (uv < 0.0f ? -uv : uv) / (r2 > 0.0f ? r2 : 1.0f);
        const float e = fast_exp(d);
        s[j] += e;
        sy[j] += e * ak;
      }
    for (int64_t j = 0; j < n; ++j) aux[j] = sy[j] / s[j];
  }
  for (int64_t j = 0; j < n; ++j) {
    const float ak = amax[j] * k[j];
    const float yk = aux[j] > ak ? ak : (aux[j] < -ak ? -ak : aux[j]);
    out[j] = yk / k[j];
  }
  if constexpr (Kind == AdaKind::kAda) {  // eM (SoftPool, beta 1), then the blend
    float m[kAdaRun];
    for (int64_t j = 0; j < n; ++j) m[j] = -3.402823466e38f, s[j] = 0.0f, sy[j] = 0.0f;
    for (int64_t t = 0; t < taps; ++t)
      for (int64_t j = 0; j < n; ++j) m[j] = a[t][j] > m[j] ? a[t][j] : m[j];
    for (int64_t t = 0; t < taps; ++t)
      for (int64_t j = 0; j < n; ++j) {
        const float e = fast_exp(a[t][j] - m[j]);
        s[j] += e;
        sy[j] += e * (a[t][j] * k[j]);
      }
    for (int64_t j = 0; j < n; ++j) {
      const float ak = amax[j] * k[j], q = sy[j] / s[j];
      const float em = (q > ak ? ak : (q < -ak ? -ak : q)) / k[j];
      out[j] = ada_blend(beta[j], out[j], em);
    }
  }
}

// Every output of planes [0, N*C): y[o] = f(visit over o's window, o's flat index).
template <AdaKind Kind, class S>
void ada_forward_cpu(OrtKernelContext* ctx, const S* x, S* y, const S* beta, const std::vector<int64_t>& bstrides,
                     const std::vector<int64_t>& out_shape, int64_t planes, const Window3& w) {
  const int64_t in_plane = w.in[0] * w.in[1] * w.in[2];
  const int64_t window_size = w.k[0] * w.k[1] * w.k[2];
  const int64_t cost = window_size * (Kind == AdaKind::kAda ? 6 : 3) + 8;
  auto beta_offset = [&](int64_t o) {  // Y's multi-index (row-major over out_shape) dotted with Beta's strides
    int64_t rest = o, boff = 0;
    for (size_t i = out_shape.size(); i-- > 0;) {
      boff += (rest % out_shape[i]) * bstrides[i];
      rest /= out_shape[i];
    }
    return boff;
  };
  const int64_t rows = planes * w.out[0] * w.out[1];
  parallel_for(ctx, rows, cost * w.out[2], [&](int64_t begin, int64_t end) {
    float a[kAdaWindowBuffer][kAdaRun], b[kAdaRun], res[kAdaRun];
    int64_t row_off[kAdaWindowBuffer];
    for (int64_t r = begin; r < end; ++r) {
      const int64_t plane = r / (w.out[0] * w.out[1]), oh = r % w.out[1], od = (r / w.out[1]) % w.out[0];
      const S* xp = x + plane * in_plane;
      const int64_t o0 = r * w.out[2];
      // one window by the per-window math (borders, large windows)
      auto one = [&](int64_t ow) {
        float buf[kAdaWindowBuffer];  // the values gathered once: the math visits them 3 to 6 times
        int64_t count = 0;
        const bool buffered = window_size <= kAdaWindowBuffer;
        if (buffered) for_each_in_window(w, od, oh, ow, [&](int64_t off) { buf[count++] = ada_load(xp[off]); });
        auto visit = [&](auto&& g) {
          if (buffered) {
            for (int64_t i = 0; i < count; ++i) g(buf[i]);
          } else {
            for_each_in_window(w, od, oh, ow, [&](int64_t off) { g(ada_load(xp[off])); });
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
      // the interior run: windows whose W taps are all inside the input
      int64_t nrows = 0;
      for_each_window_row(w, od, oh, [&](int64_t off) {
        if (nrows < kAdaWindowBuffer) row_off[nrows] = off;
        ++nrows;
      });
      const int64_t taps = nrows * w.k[2];
      const int64_t span = (w.k[2] - 1) * w.dil[2];
      int64_t lo = (w.pad[2] + w.s[2] - 1) / w.s[2];
      int64_t hi = w.in[2] - 1 - span + w.pad[2] < 0 ? -1 : (w.in[2] - 1 - span + w.pad[2]) / w.s[2];
      hi = hi < w.out[2] - 1 ? hi : w.out[2] - 1;
      if (taps == 0 || taps > kAdaWindowBuffer || lo > hi) lo = w.out[2], hi = w.out[2] - 1;
      for (int64_t ow = 0; ow < lo && ow < w.out[2]; ++ow) one(ow);
      for (int64_t ow0 = lo; ow0 <= hi; ow0 += kAdaRun) {
        const int64_t n = hi + 1 - ow0 < kAdaRun ? hi + 1 - ow0 : kAdaRun;
        for (int64_t ri = 0; ri < nrows; ++ri)
          for (int64_t kw = 0; kw < w.k[2]; ++kw) {
            const S* src = xp + row_off[ri] + ow0 * w.s[2] - w.pad[2] + kw * w.dil[2];
            float* dst = a[ri * w.k[2] + kw];
            for (int64_t j = 0; j < n; ++j) dst[j] = ada_load(src[j * w.s[2]]);
          }
        if constexpr (Kind == AdaKind::kAda)
          for (int64_t j = 0; j < n; ++j) b[j] = ada_load(beta[beta_offset(o0 + ow0 + j)]);
        ada_run<Kind>(a, taps, n, b, res);
        for (int64_t j = 0; j < n; ++j) y[o0 + ow0 + j] = ada_store<S>(res[j]);
      }
      for (int64_t ow = hi + 1 > lo ? hi + 1 : lo; ow < w.out[2]; ++ow) one(ow);
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
