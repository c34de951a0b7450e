// AdaUnpool's ONNX Runtime CPU kernel (X, MaskEdscw, MaskEm, Beta -> Y), float and float16
// (float16 storage, float32 math):
//   Y = A(X Beta) clip(MaskEdscw, 0, 1) + A(X (1 - Beta)) clip(MaskEm, 0, 1),
// A area interpolation from X's spatial shape I to the masks' O (O >= I on every axis), so
// each output reads one or two cells per axis. Per output o it sums w X_c t_c over those
// cells, t_c = Beta_c m_e + (1 - Beta_c) m_m kept between the two masks where Beta_c is in
// [0, 1], w a product of 1 and 1/2: finite for finite input. The torch twin is
// poolexport/ops/ada_unpool.py.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "ada_kernels.h"  // ada_load, ada_store, broadcast_strides
#include "onnxruntime_lite_custom_op.h"
#include "ops.h"
#include "poolexport/attributes.h"
#include "poolexport/common.h"

namespace poolexport {

// Checks the shapes (the torch op's messages) and fills the output shape; "" when fine.
inline std::string ada_unpool_shapes(const std::vector<int64_t>& x, const std::vector<int64_t>& me,
                                     const std::vector<int64_t>& mm, const std::vector<int64_t>& beta,
                                     std::vector<int64_t>* out) {
  const std::string op = "AdaUnpool";
  if (x.size() < 3 || x.size() > 5)
    return op + ": X must be N x C x D1..Dk with k = 1, 2 or 3, got shape " + list_str(x);
  for (size_t d = 2; d < x.size(); ++d)
    if (x[d] < 1) return op + ": X's spatial axes must not be empty, got shape " + list_str(x);
  const char* names[2] = {"MaskEdscw", "MaskEm"};
  const std::vector<int64_t>* masks[2] = {&me, &mm};
  for (int i = 0; i < 2; ++i) {
    const auto& m = *masks[i];
    if (m.size() != x.size())
      return op + ": " + names[i] + " must have X's rank " + std::to_string(x.size()) +
             " (N or 1, C or 1, then the output's spatial shape), got shape " + list_str(m);
    if ((m[0] != 1 && m[0] != x[0]) || (m[1] != 1 && m[1] != x[1]))
      return op + ": " + names[i] + " of shape " + list_str(m) + " must have N = " + std::to_string(x[0]) +
             " or 1 and C = " + std::to_string(x[1]) + " or 1";
  }
  for (size_t d = 2; d < x.size(); ++d) {
    if (me[d] != mm[d])
      return op + ": MaskEdscw and MaskEm must have the same spatial shape, got " + list_str(me) + " and " +
             list_str(mm);
    if (me[d] < x[d])
      return op + ": the masks' spatial shape must be at least X's on every axis (unpooling upsamples), got " +
             list_str(me) + " for X " + list_str(x);
  }
  std::vector<int64_t> unused;
  if (!broadcast_strides(beta, x, &unused))
    return op + ": Beta of shape " + list_str(beta) + " does not broadcast to X " + list_str(x);
  out->assign({x[0], x[1]});
  for (size_t d = 2; d < x.size(); ++d) out->push_back(me[d]);
  return "";
}

// NaN-keeping clip to [0, 1] (torch.clamp's rule).
inline float unpool_clip01(float m) { return m != m ? m : (m < 0.0f ? 0.0f : (m > 1.0f ? 1.0f : m)); }

template <class S, class Pfor>
void ada_unpool_cpu(Pfor&& pfor, const S* x, const S* me, const S* mm, const S* beta,
                    const std::vector<int64_t>& xs, const std::vector<int64_t>& mes, const std::vector<int64_t>& mms,
                    const std::vector<int64_t>& bstrides, S* y) {
  // 5-D view: missing spatial axes have size 1 (they interpolate to themselves)
  const size_t k = xs.size() - 2;
  int64_t in[3] = {1, 1, 1}, out[3] = {1, 1, 1}, bs[3] = {0, 0, 0};
  for (size_t d = 0; d < k; ++d)
    in[3 - k + d] = xs[2 + d], out[3 - k + d] = mes[2 + d], bs[3 - k + d] = bstrides[2 + d];
  const int64_t N = xs[0], C = xs[1];
  const int64_t in_plane = in[0] * in[1] * in[2], out_plane = out[0] * out[1] * out[2];
  // per axis and output index: first cell and whether a second one follows
  std::vector<int64_t> lo[3];
  std::vector<char> two[3];
  for (int d = 0; d < 3; ++d) {
    lo[d].resize(out[d]);
    two[d].resize(out[d]);
    for (int64_t o = 0; o < out[d]; ++o) {
      lo[d][o] = o * in[d] / out[d];
      const int64_t hi = ((o + 1) * in[d] + out[d] - 1) / out[d] - 1;
      two[d][o] = hi > lo[d][o];
    }
  }
  const int64_t me_n = mes[0] == 1 ? 0 : mes[1] * out_plane, me_c = mes[1] == 1 ? 0 : out_plane;
  const int64_t mm_n = mms[0] == 1 ? 0 : mms[1] * out_plane, mm_c = mms[1] == 1 ? 0 : out_plane;
  const int64_t rows = N * C * out[0] * out[1];
  pfor(rows, 16 * out[2], [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t oh = r % out[1], od = (r / out[1]) % out[0], plane = r / (out[0] * out[1]);
      const int64_t n = plane / C, c = plane % C;
      const S* xp = x + plane * in_plane;
      const int64_t boff = n * bstrides[0] + c * bstrides[1];
      const int64_t mrow = (od * out[1] + oh) * out[2];
      const S* mep = me + n * me_n + c * me_c + mrow;
      const S* mmp = mm + n * mm_n + c * mm_c + mrow;
      S* yp = y + plane * out_plane + mrow;
      const int nd = two[0][od] ? 2 : 1, nh = two[1][oh] ? 2 : 1;
      const float wdh = (nd == 2 ? 0.5f : 1.0f) * (nh == 2 ? 0.5f : 1.0f);
      for (int64_t ow = 0; ow < out[2]; ++ow) {
        const float e = unpool_clip01(ada_load(mep[ow])), m = unpool_clip01(ada_load(mmp[ow]));
        const float tlo = e < m ? e : m, thi = e < m ? m : e;
        const int nw = two[2][ow] ? 2 : 1;
        const float w = wdh * (nw == 2 ? 0.5f : 1.0f);
        float acc = 0.0f;
        for (int a = 0; a < nd; ++a)
          for (int b = 0; b < nh; ++b)
            for (int cc = 0; cc < nw; ++cc) {
              const int64_t id = lo[0][od] + a, ih = lo[1][oh] + b, iw = lo[2][ow] + cc;
              const float xv = ada_load(xp[(id * in[1] + ih) * in[2] + iw]);
              const float bv = ada_load(beta[boff + id * bs[0] + ih * bs[1] + iw * bs[2]]);
              float t = bv * e + (1.0f - bv) * m;
              if (bv >= 0.0f && bv <= 1.0f && t == t) t = t < tlo ? tlo : (t > thi ? thi : t);
              acc += xv * t * w;
            }
        yp[ow] = ada_store<S>(acc);
      }
    }
  });
}

template <class T>
struct AdaUnpoolOp {
  AdaUnpoolOp(const OrtApi*, const OrtKernelInfo*) {}

  Ort::Status Compute(OrtKernelContext* ctx, const Ort::Custom::Tensor<T>& X, const Ort::Custom::Tensor<T>& MaskEdscw,
                      const Ort::Custom::Tensor<T>& MaskEm, const Ort::Custom::Tensor<T>& Beta,
                      Ort::Custom::Tensor<T>& Y) {
    try {
      const std::vector<int64_t> xs = X.Shape(), mes = MaskEdscw.Shape(), mms = MaskEm.Shape(), bsh = Beta.Shape();
      std::vector<int64_t> out_shape, bstrides;
      const std::string msg = ada_unpool_shapes(xs, mes, mms, bsh, &out_shape);
      if (!msg.empty()) return invalid(msg);
      broadcast_strides(bsh, xs, &bstrides);
      using S = typename Storage<T>::type;
      S* y = reinterpret_cast<S*>(Y.Allocate(out_shape));
      if (numel(out_shape) == 0) return Ort::Status{nullptr};
      ada_unpool_cpu<S>(ort_pfor(ctx), reinterpret_cast<const S*>(X.Data()), reinterpret_cast<const S*>(MaskEdscw.Data()),
                        reinterpret_cast<const S*>(MaskEm.Data()), reinterpret_cast<const S*>(Beta.Data()), xs, mes,
                        mms, bstrides, y);
      return Ort::Status{nullptr};
    } catch (const std::exception& e) {
      return Ort::Status((std::string("AdaUnpool: ") + e.what()).c_str(), ORT_FAIL);
    }
  }
};

template <class T>
void add_ada_unpool_op(std::vector<std::unique_ptr<Ort::Custom::OrtLiteCustomOp>>& ops, const char* ep) {
  ops.emplace_back(Ort::Custom::CreateLiteCustomOp<AdaUnpoolOp<T>>("AdaUnpool", ep, 1));
}

}  // namespace poolexport
