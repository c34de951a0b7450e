// The reduction form: input shape padded on the left to 6 axes, a mask of reduced axes.
// Output elements are the kept axes in row-major order; each window is the reduced axes
// in row-major order (ReduceMean's meaning, and the order the stochastic pick uses).
#pragma once

#include "common.h"
#include "limits.h"

namespace poolexport {

struct Reduce6 {
  int64_t dim[6];
  int64_t stride[6];  // row-major element strides of the padded shape
  int32_t mask;       // bit i: axis i reduced
  int64_t outputs;    // product of kept dims
  int64_t window;     // product of reduced dims
};

PX_HD Reduce6 make_reduce6(const int64_t dims[6], int32_t mask) {
  Reduce6 g;
  int64_t st = 1;
  g.mask = mask;
  g.outputs = 1;
  g.window = 1;
  for (int i = 5; i >= 0; --i) {
    g.dim[i] = dims[i];
    g.stride[i] = st;
    st *= dims[i];
    if (mask & (1 << i))
      g.window *= dims[i];
    else
      g.outputs *= dims[i];
  }
  return g;
}

// Offset of the first window element of output e.
PX_HD int64_t reduce_base(const Reduce6& g, int64_t e) {
  int64_t off = 0;
  for (int i = 5; i >= 0; --i) {
    if (g.mask & (1 << i)) continue;
    int64_t q = e / g.dim[i];
    off += (e - q * g.dim[i]) * g.stride[i];
    e = q;
  }
  return off;
}

// Calls f(offset) for every window position of output e, row-major over reduced axes,
// with an odometer (no division in the loop).
template <class F>
PX_HD void for_each_in_reduce(const Reduce6& g, int64_t e, F&& f) {
  if (g.window == 0) return;
  int64_t base = reduce_base(g, e);
  int red[6];
  int nr = 0;
  for (int i = 0; i < 6; ++i)
    if ((g.mask & (1 << i)) && g.dim[i] != 1) red[nr++] = i;
  int64_t idx[6] = {0, 0, 0, 0, 0, 0};
  int64_t off = base;
  int inner = nr ? red[nr - 1] : 0;
  int64_t inner_n = nr ? g.dim[inner] : 1, inner_s = nr ? g.stride[inner] : 0;
  for (;;) {
    for (int64_t j = 0; j < inner_n; ++j) f(off + j * inner_s);
    int a = nr - 2;
    for (; a >= 0; --a) {
      int ax = red[a];
      off += g.stride[ax];
      if (++idx[a] < g.dim[ax]) break;
      off -= idx[a] * g.stride[ax];
      idx[a] = 0;
    }
    if (a < 0) return;
  }
}

// Lanes (threads) that share one output of the soft and expectation reductions; the
// launch rule of kernel_abi.h. 1, a thread per output, unless the innermost axis is
// reduced: then a window is runs of contiguous elements, read coalesced by 32 lanes
// (window >= 32) or a whole block of 256 (window >= 1024). Sample mode keeps its
// sequential definition: 1.
PX_HD int reduce_lanes(int64_t window, int32_t mask, int32_t sample) {
  if (sample || !(mask & 32)) return 1;
  return window >= limits::kReduceBlockWindow ? limits::kReduceBlockLanes
         : (window >= limits::kReduceWarpWindow ? limits::kReduceWarpLanes : 1);
}

// The trailing reduced axes (kept axes of size 1 do not interrupt them) are contiguous in
// memory: a window is window/run runs of `run` elements. *from = their first axis.
PX_HD int64_t reduce_run(const Reduce6& g, int* from) {
  int64_t run = 1;
  int i = 5;
  for (; i >= 0 && ((g.mask & (1 << i)) || g.dim[i] == 1); --i) run *= g.dim[i];
  *from = i + 1;
  return run;
}

// Offset, from the window's base, of run q (row-major over the reduced axes before `from`).
PX_HD int64_t reduce_run_offset(const Reduce6& g, int from, int64_t q) {
  int64_t off = 0;
  for (int i = from - 1; i >= 0 && q; --i) {
    if (!(g.mask & (1 << i))) continue;
    int64_t r = q % g.dim[i];
    q /= g.dim[i];
    off += r * g.stride[i];
  }
  return off;
}

}  // namespace poolexport
