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

// CPU reduce forms over one contiguous run of elements (global pooling over a plane,
// cpu_reduce_plane.h): a plane is summed in chunks of kReduceChunk floats, whose partial
// sums are combined in chunk order (the same bits whichever thread runs a chunk). Fewer
// than kReduceSplitPlanes planes of more than one chunk: threads share a plane's chunks;
// otherwise one thread takes whole planes. kReduceUnroll vectors per step, each with its own
// accumulators.
constexpr int64_t kReduceChunk = 1024;
constexpr int64_t kReduceSplitPlanes = 32;
constexpr int kReduceUnroll = 2;
// Small planes (SE / CBAM descriptors on 7 x 7 .. 16 x 16 maps) are reduced one plane per
// vector lane instead (no horizontal sums, no tails; a transpose): SoftPool planes of at
// most kReduceLanePlaneSoft elements, expectation planes of at most kReduceLanePlaneMoments
// (its sums are cheap, so the transpose pays off only on smaller planes).
constexpr int64_t kReduceLanePlaneSoft = 256;
constexpr int64_t kReduceLanePlaneMoments = 64;
// Their groups of a lane width of planes are handed to the threads in at least
// kReduceLaneItems items where there are that many groups and more work than one item holds
// (fewer, bigger items otherwise), so that two or more threads taking whole items finish
// together (SoftPool over 1 x 576 x 7 x 7: 36 groups, 4 items before).
constexpr int64_t kReduceLaneItems = 32;
// A call of at most kReduceLaneOneItem units of cost (the pools' items hold 2^15) runs as one
// item on the calling thread: waking a second thread (ONNX Runtime without spinning) costs
// more than half its work saves (SoftPool over 1 x 576 x 7 x 7, ~8 us: 1.4x GlobalAveragePool
// on one thread, 1.7x split in two).
constexpr int64_t kReduceLaneOneItem = 262144;  // 8 x 2^15

// Finite limits. A SoftPool window (or shared-shift block, or backward plane)
// whose max |x| exceeds kSoftScaleAbove (2^64) computes its weighted sums on x * kSoftScale
// (2^-64, exact but for subnormal bits far below the result's ulp) and flushes weights
// exp(t), t < kExpArgMin, to 0; the result is scaled back. Below it, |x| <= 2^64 keeps
// every sum of up to 2^63 terms finite.
constexpr float kSoftScaleAbove = 18446744073709551616.0f;  // 2^64
constexpr float kSoftScale = 5.42101086242752217e-20f;     // 2^-64
// StochasticPool expectation: a window whose max r exceeds kMomentScaleAbove (2^48) sums
// r * kMomentScale (2^-80) and r^2 of that, so sum(r^2) stays finite for 2^32 terms.
constexpr float kMomentScaleAbove = 281474976710656.0f;  // 2^48
constexpr float kMomentScale = 8.27180612553027675e-25f;  // 2^-80

}  // namespace limits
}  // namespace poolexport
#endif
