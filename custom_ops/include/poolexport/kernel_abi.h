// The CUDA kernel ABI of the poolexport ops: one extern "C" __global__ entry point per
// op x dtype, shared by the ONNX Runtime CUDA kernels and TensorRT's ahead-of-time
// plugins (which launch PTX with parameters = input pointers, int32 scalars, output
// pointers; nothing else reaches the kernel at engine run time).
//
// Launch rule (both sides must use it; see poolexport_launch_grid below):
//   block = (POOLEXPORT_BLOCK = 256, 1, 1)
//   grid  = (min(cdiv(total, 256), POOLEXPORT_MAX_GRID = 65535), 1, 1), and no launch
//           when total == 0. Kernels loop grid-stride, so any grid covers every element.
//   total = number of OUTPUT elements (N*C*out_d*out_h*out_w, or the reduced output's
//           element count), times, for the reduce ops, the lanes per output of
//           poolexport::reduce_lanes (reduce.h): 32 or 256 when mode is soft or
//           expectation, the innermost axis (bit 5) is reduced and the window has at least
//           32 or 1024 elements, else 1. Dynamic shared memory 0 (the cooperative reduce
//           kernels use a static 256-entry array). A kernel launched with another grid
//           or a block that cannot hold whole lane groups still covers every output.
//
// Windowed ops: 1-D and 2-D inputs are expressed as 3-D with leading size-1 spatial axes
// (in = 1, out = 1, k = 1, s = 1, dil = 1, pad = 0 on the missing axes). out_* and pad_*
// are the RESOLVED output sizes and effective begin pads (auto_pad / ceil_mode already
// applied on the host, exactly as poolexport/_window.py). Padded positions are not part
// of a window; a window with no valid position outputs 0. Window order is row-major
// (d, h, w), which the stochastic pick depends on.
//
// Reduce ops: the input shape is padded on the left to 6 axes with 1s (d0..d5; ranks
// above 6 are first collapsed by merging neighbouring axes with the same reduced/kept
// status, which changes neither the output order nor the window order). Bit i of
// reduce_mask set = axis i of the PADDED shape (0 = d0) is reduced. Output elements are
// the kept axes in row-major order; each window is the reduced axes in row-major order.
//
// Scalars: beta_bits is the float32 bit pattern of beta. sample = 0 for
// mode="expectation", 1 for mode="sample". (seed_lo, seed_hi) are the low and high 32
// bits of the int64 seed (two's complement). The Philox counter of output element e is
// (e lo, e hi, 0, 0) with e the flat row-major output index.
//
// adaPool family (ada_pool.h): EdscwPool / IdwPool take the window parameters alone;
// AdaPool adds its Beta pointer after X and, after the window parameters, Beta's shape in
// the 5-D view of the output (b_n, b_c, b_d, b_h, b_w: Beta's dims right-aligned with the
// output's N x C x spatial (numpy rules), the missing leading spatial axes of 1-D/2-D
// inserted as 1; each is 1 (broadcast) or the output's size on that axis). AdaUnpool takes
// X, MaskEdscw, MaskEm, Beta (in that order), then N, C, in_* (X's spatial), out_* (the
// masks' spatial, >= in_*), me_n, me_c, mm_n, mm_c (the masks' N and C: 1 or X's), then
// Beta's shape in the 5-D view of X (the same rule, against X). total = its output's
// N*C*out_d*out_h*out_w elements; one thread per output element for all four.
//
// T is float for _f32 and __half (IEEE binary16, passed as its 16 bits) for _f16; all
// arithmetic is float32.
#pragma once

#include <stdint.h>

#include "limits.h"  // POOLEXPORT_BLOCK, POOLEXPORT_MAX_GRID

#ifdef __cplusplus
extern "C" {
#endif

// The one launch-grid rule (host side). TensorRT: grid_x = min(cdiv(total, 256), 65535).
static inline int32_t poolexport_launch_grid(int64_t total) {
  int64_t g = (total + POOLEXPORT_BLOCK - 1) / POOLEXPORT_BLOCK;
  return (int32_t)(g < POOLEXPORT_MAX_GRID ? g : POOLEXPORT_MAX_GRID);
}

// A broadcast operand's shape (rank <= target_rank, numpy rules) in the 5-D view of a rank
// 3-5 target, as the adaPool kernels take it (b_n, b_c, b_d, b_h, b_w below): right-aligned,
// missing leading axes 1, then 1 for each of the target's missing leading spatial axes.
static inline void poolexport_broadcast_dims5(const int64_t* shape, int rank, int target_rank, int32_t* dims5) {
  int32_t full[5] = {1, 1, 1, 1, 1};
  for (int i = 0; i < target_rank; ++i) {
    const int j = i - (target_rank - rank);
    if (j >= 0) full[i] = (int32_t)shape[j];
  }
  const int lead = 5 - target_rank;
  dims5[0] = full[0];
  dims5[1] = full[1];
  for (int d = 0; d < 3; ++d) dims5[2 + d] = d < lead ? 1 : full[2 + d - lead];
}

#if defined(__CUDACC__)
#include <cuda_fp16.h>
typedef __half poolexport_half;
#define POOLEXPORT_GLOBAL __global__
#else
typedef uint16_t poolexport_half;  // declarations only, for host code reading the ABI
#define POOLEXPORT_GLOBAL
#endif

#define POOLEXPORT_WINDOW_PARAMS                                                        \
  int32_t N, int32_t C, int32_t in_d, int32_t in_h, int32_t in_w, int32_t out_d,        \
      int32_t out_h, int32_t out_w, int32_t k_d, int32_t k_h, int32_t k_w, int32_t s_d,  \
      int32_t s_h, int32_t s_w, int32_t dil_d, int32_t dil_h, int32_t dil_w,             \
      int32_t pad_d, int32_t pad_h, int32_t pad_w

#define POOLEXPORT_REDUCE_PARAMS                                                       \
  int32_t rank, int32_t d0, int32_t d1, int32_t d2, int32_t d3, int32_t d4, int32_t d5, \
      int32_t reduce_mask

POOLEXPORT_GLOBAL void poolexport_soft_pool_f32(const float* X, POOLEXPORT_WINDOW_PARAMS,
                                                int32_t beta_bits, float* Y);
POOLEXPORT_GLOBAL void poolexport_soft_pool_f16(const poolexport_half* X, POOLEXPORT_WINDOW_PARAMS,
                                                int32_t beta_bits, poolexport_half* Y);

POOLEXPORT_GLOBAL void poolexport_stochastic_pool_f32(const float* X, POOLEXPORT_WINDOW_PARAMS,
                                                      int32_t sample, int32_t seed_lo,
                                                      int32_t seed_hi, float* Y);
POOLEXPORT_GLOBAL void poolexport_stochastic_pool_f16(const poolexport_half* X,
                                                      POOLEXPORT_WINDOW_PARAMS, int32_t sample,
                                                      int32_t seed_lo, int32_t seed_hi,
                                                      poolexport_half* Y);

#define POOLEXPORT_BETA_PARAMS int32_t b_n, int32_t b_c, int32_t b_d, int32_t b_h, int32_t b_w

#define POOLEXPORT_UNPOOL_PARAMS                                                              \
  int32_t N, int32_t C, int32_t in_d, int32_t in_h, int32_t in_w, int32_t out_d, int32_t out_h, \
      int32_t out_w, int32_t me_n, int32_t me_c, int32_t mm_n, int32_t mm_c

POOLEXPORT_GLOBAL void poolexport_edscw_pool_f32(const float* X, POOLEXPORT_WINDOW_PARAMS, float* Y);
POOLEXPORT_GLOBAL void poolexport_edscw_pool_f16(const poolexport_half* X, POOLEXPORT_WINDOW_PARAMS,
                                                 poolexport_half* Y);
POOLEXPORT_GLOBAL void poolexport_idw_pool_f32(const float* X, POOLEXPORT_WINDOW_PARAMS, float* Y);
POOLEXPORT_GLOBAL void poolexport_idw_pool_f16(const poolexport_half* X, POOLEXPORT_WINDOW_PARAMS,
                                               poolexport_half* Y);
POOLEXPORT_GLOBAL void poolexport_ada_pool_f32(const float* X, const float* Beta, POOLEXPORT_WINDOW_PARAMS,
                                               POOLEXPORT_BETA_PARAMS, float* Y);
POOLEXPORT_GLOBAL void poolexport_ada_pool_f16(const poolexport_half* X, const poolexport_half* Beta,
                                               POOLEXPORT_WINDOW_PARAMS, POOLEXPORT_BETA_PARAMS,
                                               poolexport_half* Y);
POOLEXPORT_GLOBAL void poolexport_ada_unpool_f32(const float* X, const float* MaskEdscw, const float* MaskEm,
                                                 const float* Beta, POOLEXPORT_UNPOOL_PARAMS,
                                                 POOLEXPORT_BETA_PARAMS, float* Y);
POOLEXPORT_GLOBAL void poolexport_ada_unpool_f16(const poolexport_half* X, const poolexport_half* MaskEdscw,
                                                 const poolexport_half* MaskEm, const poolexport_half* Beta,
                                                 POOLEXPORT_UNPOOL_PARAMS, POOLEXPORT_BETA_PARAMS,
                                                 poolexport_half* Y);

// rank: the original rank (informational; the kernel only uses d0..d5 and the mask).
POOLEXPORT_GLOBAL void poolexport_reduce_soft_pool_f32(const float* X, POOLEXPORT_REDUCE_PARAMS,
                                                       int32_t beta_bits, float* Y);
POOLEXPORT_GLOBAL void poolexport_reduce_soft_pool_f16(const poolexport_half* X,
                                                       POOLEXPORT_REDUCE_PARAMS, int32_t beta_bits,
                                                       poolexport_half* Y);

POOLEXPORT_GLOBAL void poolexport_reduce_stochastic_pool_f32(const float* X, POOLEXPORT_REDUCE_PARAMS,
                                                             int32_t sample, int32_t seed_lo,
                                                             int32_t seed_hi, float* Y);
POOLEXPORT_GLOBAL void poolexport_reduce_stochastic_pool_f16(const poolexport_half* X,
                                                             POOLEXPORT_REDUCE_PARAMS, int32_t sample,
                                                             int32_t seed_lo, int32_t seed_hi,
                                                             poolexport_half* Y);

#ifdef __cplusplus
}
#endif
