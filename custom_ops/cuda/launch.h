// Host launchers of the CUDA kernels in kernel_abi.h, used by the ORT CUDA kernels and
// (through ctypes, on torch CUDA tensors) by the GPU tests. They apply the one launch
// rule of kernel_abi.h on the given stream and return a cudaError_t (0 = success).
//
// Window params p[23]: N, C, in[3], out[3], k[3], s[3], dil[3], pad[3] (d, h, w order),
//   then beta_bits (SoftPool) or sample (StochasticPool), seed_lo, seed_hi.
// Reduce params p[11]: rank, d0..d5, reduce_mask, then beta_bits or sample, seed_lo, seed_hi.
// op: 0 = soft pool, 1 = stochastic pool; dtype: 0 = float32, 1 = float16.
// adaPool params p[25]: the 20 window params, then Beta's 5-D dims (b_n, b_c, b_d, b_h,
//   b_w; kernel_abi.h); op: 0 = EdscwPool, 1 = IdwPool, 2 = AdaPool (Beta unused otherwise).
// AdaUnpool params p[17]: N, C, in[3], out[3], me_n, me_c, mm_n, mm_c, Beta's 5-D dims.
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

int poolexport_cuda_launch_window(int op, int dtype, const void* X, void* Y, const int32_t* p, void* stream);
int poolexport_cuda_launch_reduce(int op, int dtype, const void* X, void* Y, const int32_t* p, void* stream);
int poolexport_cuda_launch_ada(int op, int dtype, const void* X, const void* Beta, void* Y, const int32_t* p,
                               void* stream);
int poolexport_cuda_launch_ada_unpool(int dtype, const void* X, const void* MaskEdscw, const void* MaskEm,
                                      const void* Beta, void* Y, const int32_t* p, void* stream);
const char* poolexport_cuda_error_string(int rc);
// NULL when the installed driver can run this library's CUDA runtime; else one line that
// names the driver's CUDA version and the runtime's (checked once, before any launch)
const char* poolexport_cuda_version_error(void);

#ifdef __cplusplus
}
#endif
