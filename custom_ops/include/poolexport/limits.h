// Every number a kernel branches on, in one place. tests/_limits.py parses this file, and
// the boundary tests draw inputs at each limit - 1, limit, limit + 1 (lane widths +- 1),
// so a limit changed here is a limit the tests move with. Keep one definition per line:
// `constexpr <type> kName = <value>;` or `#define POOLEXPORT_NAME <value>`.
#pragma once

// CUDA launch rule (kernel_abi.h, C): threads per block and the grid's x limit; grids
// past it wrap with a grid-stride loop.
#define POOLEXPORT_BLOCK 256
#define POOLEXPORT_MAX_GRID 65535

#ifdef __cplusplus
#include <stdint.h>

namespace poolexport {
namespace limits {

// fast_exp (common.h) clamps its argument to [kExpArgMin, kExpArgMax]: below, the result
// stays a normal float (~1.6e-38) instead of 0; above, it would overflow.
constexpr float kExpArgMin = -87.0f;
constexpr float kExpArgMax = 88.0f;

// Forward SoftPool, shared-shift path (soft_shared.inc): a block of output rows shares one
// shift when its range of beta*x is at most this; wider blocks take the per-window path.
constexpr float kSharedRange = 60.0f;
// Output rows per shared-shift block (cpu_kernels.h).
constexpr int64_t kSharedRows = 8;

// Backward SoftPool (torch/cpu_backward.h): a plane shares one shift when its range of
// beta*x is at most this.
constexpr float kSoftShiftRange = 60.0f;

// SIMD lane widths (cpu_simd.h): rows are processed in vectors of this many floats, with
// a tail of fewer.
constexpr int kLanesPortable = 16;
constexpr int kLanesAvx2 = 8;
constexpr int kLanesAvx512 = 16;

// CUDA reduce forms (reduce.h reduce_lanes): lanes that share one output when the
// innermost axis is reduced: 32 from a window of kReduceWarpWindow, kReduceBlockLanes
// from kReduceBlockWindow.
constexpr int64_t kReduceWarpWindow = 32;
constexpr int64_t kReduceBlockWindow = 1024;
constexpr int kReduceWarpLanes = 32;
constexpr int kReduceBlockLanes = 256;

}  // namespace limits
}  // namespace poolexport
#endif
