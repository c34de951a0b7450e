// The adaPool family's torch ops on CPU (EdscwPool, IdwPool, AdaPool): the forward is the
// ONNX Runtime kernel's own code (ada_forward_cpu of ada_kernels.h, on the caller's pool),
// so eval outputs match the ORT op bit for bit; the backward is here.
//
// Backward: one (n, c) plane per work item, so each plane's gradient is summed by one
// thread in a fixed order (deterministic, no atomics, float32 accumulation). Within a
// plane, every output window (output order) takes its state once from the per-window math
// of ada_pool.h (edscw_grad_state / idw_grad_state; soft_pool.h's for adaPool's eM part)
// and adds g * dy/da_j to each of its inputs' accumulators, in window order.
// AdaPool: dX = eDSCW's backward with g * beta plus SoftPool's (beta 1) with g * (1 - beta);
// dBeta = sum over Beta's broadcast of (eDSCW - eM) * g, whose terms come per output in
// float32 from the windows' own float32 values (float16 X too: never from rounded halves),
// summed in output order in double (a scalar Beta sums every output).
#pragma once

#include <vector>

#include "../ort/ada_kernels.h"

namespace poolexport {
namespace cpu {

// Beta's element offset of output o (row-major over Y's shape N, C, *out), by Beta's
// broadcast strides (ada_kernels.h beta_strides): linear in Y's multi-index, so a plane's
// part plus an output row's part plus the column times the last stride.
struct AdaBetaIndex {
  std::vector<int64_t> plane, row;
  int64_t col = 0, out_w = 1, rows_per_plane = 1;

  AdaBetaIndex(const std::vector<int64_t>& bstrides, const std::vector<int64_t>& out_shape, int64_t planes,
               const Window3& w) {
    if (bstrides.empty()) return;
    auto offset = [&](int64_t o) {
      int64_t rest = o, off = 0;
      for (size_t i = out_shape.size(); i-- > 0;) {
        off += (rest % out_shape[i]) * bstrides[i];
        rest /= out_shape[i];
      }
      return off;
    };
    out_w = w.out[2];
    rows_per_plane = w.out[0] * w.out[1];
    plane.resize(planes);
    row.resize(rows_per_plane);
    for (int64_t p = 0; p < planes; ++p) plane[p] = offset(p * rows_per_plane * out_w);
    for (int64_t q = 0; q < rows_per_plane; ++q) row[q] = offset(q * out_w);
    col = bstrides.back();
  }
  int64_t operator()(int64_t p, int64_t q, int64_t ow) const { return plane[p] + row[q] + ow * col; }
};

struct AdaBackwardScratch {
  std::vector<float> G, a;   // the plane's gradient accumulator; one window's values
  std::vector<int64_t> at;   // their plane offsets
};

// dX of plane p (x, gy, gx point at the plane); AdaPool also writes its outputs' dBeta terms
// (eDSCW - eM) * g to dterm (the plane's outputs).
template <AdaKind Kind, class S>
void ada_plane_backward(const S* x, const S* gy, S* gx, const S* beta, const AdaBetaIndex& bi, int64_t p,
                        const Window3& w, float* dterm, AdaBackwardScratch& sc) {
  const int64_t in_plane = w.in[0] * w.in[1] * w.in[2];
  sc.G.assign(in_plane, 0.0f);
  float* G = sc.G.data();
  float* a = sc.a.data();
  int64_t* at = sc.at.data();
  int64_t o = 0;
  for (int64_t od = 0; od < w.out[0]; ++od)
    for (int64_t oh = 0; oh < w.out[1]; ++oh)
      for (int64_t ow = 0; ow < w.out[2]; ++ow, ++o) {
        const float g = load(gy, o);
        int64_t n = 0;
        for_each_in_window(w, od, oh, ow, [&](int64_t i) {
          at[n] = i;
          a[n++] = load(x, i);
        });
        auto visit = [&](auto&& f) {
          for (int64_t j = 0; j < n; ++j) f(a[j]);
        };
        if constexpr (Kind == AdaKind::kEdscw) {
          const EdscwGrad st = edscw_grad_state(visit);
          for (int64_t j = 0; j < n; ++j) G[at[j]] += g * edscw_grad_local(st, a[j]);
        } else if constexpr (Kind == AdaKind::kIdw) {
          const IdwGrad st = idw_grad_state(visit);
          for (int64_t j = 0; j < n; ++j) G[at[j]] += g * idw_grad_local(st, a[j]);
        } else {
          const float b = load(beta, bi(p, od * w.out[1] + oh, ow));
          const float ge = g * b, gs = g * (1.0f - b);
          const EdscwGrad se = edscw_grad_state(visit);
          const SoftPoolStats ss = soft_pool_stats(visit, 1.0f);
          for (int64_t j = 0; j < n; ++j)
            G[at[j]] += ge * edscw_grad_local(se, a[j]) + soft_pool_grad(a[j], 1.0f, ss, gs);
          dterm[o] = (se.st.y - ss.y) * g;
        }
      }
  for (int64_t i = 0; i < in_plane; ++i) store(gx, i, G[i]);
}

// The whole backward: dX into gx (X's shape); AdaPool also dBeta into dbeta (Beta's
// beta_numel elements, Beta's dtype = X's).
template <AdaKind Kind, class S, class Pfor>
void ada_backward_cpu(Pfor&& pfor, const S* x, const S* gy, S* gx, const S* beta, S* dbeta,
                      const std::vector<int64_t>& bstrides, int64_t beta_numel, const std::vector<int64_t>& out_shape,
                      int64_t planes, const Window3& w) {
  const int64_t in_plane = w.in[0] * w.in[1] * w.in[2], out_plane = w.out[0] * w.out[1] * w.out[2];
  const int64_t window_size = w.k[0] * w.k[1] * w.k[2];
  std::vector<float> dterm(Kind == AdaKind::kAda ? planes * out_plane : 0);
  const AdaBetaIndex bi(bstrides, out_shape, planes, w);
  if (out_plane == 0) {  // no window: no gradient
    for (int64_t i = 0; i < planes * in_plane; ++i) store(gx, i, 0.0f);
  } else {
    const int64_t cost = out_plane * window_size * (Kind == AdaKind::kAda ? 120 : 60) + in_plane;
    pfor(planes, cost, [&](int64_t begin, int64_t end) {
      AdaBackwardScratch sc;
      sc.a.resize(window_size);
      sc.at.resize(window_size);
      for (int64_t p = begin; p < end; ++p)
        ada_plane_backward<Kind>(x + p * in_plane, gy + p * out_plane, gx + p * in_plane, beta, bi, p, w,
                                 Kind == AdaKind::kAda ? dterm.data() + p * out_plane : nullptr, sc);
    });
  }
  if constexpr (Kind == AdaKind::kAda) {
    // Beta's broadcast summed in output order: the same bits for any thread count
    std::vector<double> acc(beta_numel, 0.0);
    if (out_plane > 0) {
      int64_t o = 0;
      for (int64_t p = 0; p < planes; ++p)
        for (int64_t q = 0; q < bi.rows_per_plane; ++q)
          for (int64_t ow = 0; ow < w.out[2]; ++ow, ++o) acc[bi(p, q, ow)] += dterm[o];
    }
    for (int64_t i = 0; i < beta_numel; ++i) store(dbeta, i, (float)acc[i]);
  }
}

// One forward-or-backward entry for both ways the torch ops reach the kernels (stable_ops.cc
// on torch's pool, torch_abi.cc on the library's own): gy == nullptr is a forward (out = Y),
// otherwise a backward (out = dX; AdaPool's dBeta into dbeta). out_shape: Y's shape (N, C,
// *out, true rank), against which Beta broadcasts by bstrides.
template <AdaKind Kind, class S, class Pool>
void run_ada(const S* x, const S* beta, const std::vector<int64_t>& bstrides, int64_t beta_numel, const S* gy, S* out,
             S* dbeta, const std::vector<int64_t>& out_shape, const Window3& w, Pool& pool) {
  const int64_t planes = out_shape[0] * out_shape[1];
  const int64_t in_n = planes * w.in[0] * w.in[1] * w.in[2], out_n = planes * w.out[0] * w.out[1] * w.out[2];
  if (!gy) {
    if (out_n > 0) ada_forward_cpu<Kind>(pool, x, out, beta, bstrides, out_shape, planes, w);
  } else if (in_n > 0 || (Kind == AdaKind::kAda && beta_numel > 0)) {
    ada_backward_cpu<Kind>(pool, x, gy, out, beta, dbeta, bstrides, beta_numel, out_shape, planes, w);
  }
}

}  // namespace cpu
}  // namespace poolexport
