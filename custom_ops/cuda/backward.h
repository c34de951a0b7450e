// Host launchers of the CUDA backward kernels of the torch ops (backward.cu), called
// through ctypes by poolexport/ops/_native.py on torch's current stream. They return a
// cudaError_t (0 = success). op: 0 SoftPool, 1 StochasticPool expectation, 2 sample
// (the codes of custom_ops/torch/torch_abi.h).
//
// Window params p[23]: as launch.h (N, C, in[3], out[3], k[3], s[3], dil[3], pad[3], then
//   beta_bits, seed_lo, seed_hi). workspace: 3 floats per output element, device memory.
// Reduce params p[11]: as launch.h (rank, d0..d5, reduce_mask, beta_bits, seed_lo, seed_hi).
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

int poolexport_cuda_launch_window_backward(int op, int dtype, const void* X, const void* dY, void* dX,
                                           void* workspace, const int32_t* p, void* stream);
int poolexport_cuda_launch_reduce_backward(int op, int dtype, const void* X, const void* dY, void* dX,
                                           const int32_t* p, void* stream);

// adaPool family (ada_backward.cu). op: 0 EdscwPool, 1 IdwPool, 2 AdaPool; p[25]: the
// adaPool params of launch.h (the window params, then Beta's 5-D dims, read for op 2 only).
// workspace: poolexport_cuda_ada_backward_workspace(op) floats per output element, device
// memory. dbeta_terms (op 2; Beta and it unused otherwise): float32 of the output's shape,
// set to (eDSCW - eM) * dY per output; dBeta is its sum over Beta's broadcast axes.
int poolexport_cuda_ada_backward_workspace(int op);
int poolexport_cuda_launch_ada_backward(int op, int dtype, const void* X, const void* Beta, const void* dY, void* dX,
                                        void* dbeta_terms, void* workspace, const int32_t* p, void* stream);

#ifdef __cplusplus
}
#endif
