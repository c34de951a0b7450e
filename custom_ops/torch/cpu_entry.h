// One forward-or-backward entry per op form over the shared CPU kernels, for both ways the
// torch ops reach them: the compiled registration (stable_ops.cc, on torch's thread pool)
// and the plain C ABI (torch_abi.cc, on the library's own pool). `pool(n, cost, f)` runs
// f(begin, end) over [0, n).
#pragma once

#include "cpu_backward.h"

namespace poolexport {
namespace cpu {

// gy == nullptr: forward into out (Y); otherwise backward into out (dX, X's shape).
template <class T, class Pool>
void run_window(Op op, const T* x, const T* gy, T* out, int64_t N, int64_t C, const RowArgs& args, Pool& pool) {
  const Window3& w = args.w;
  const int64_t in_n = N * C * w.in[0] * w.in[1] * w.in[2], out_n = N * C * w.out[0] * w.out[1] * w.out[2];
  if (!gy) {
    if (out_n > 0) window_forward(op, x, out, N, C, args, pool);
  } else if (in_n > 0) {
    window_backward(op, x, gy, out, N, C, args, pool);
  }
}

template <class T, class Pool>
void run_reduce(Op op, const T* x, const T* gy, T* out, const Reduce6& g, float beta, uint32_t lo, uint32_t hi,
                Pool& pool) {
  if (!gy) {
    if (g.outputs > 0) reduce_forward(op, x, out, g, beta, lo, hi, pool);
  } else if (g.outputs > 0 && g.window > 0) {
    reduce_backward(op, x, gy, out, g, beta, lo, hi, pool);
  }
}

}  // namespace cpu
}  // namespace poolexport
