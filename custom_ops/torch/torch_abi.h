// The plain C ABI through which the torch ops (poolexport/ops/_native.py, ctypes) run the
// library's CPU kernels: forward = the ONNX Runtime kernels' own code, backward =
// cpu_backward.h. Nothing here depends on a torch build, so the wheel works with any torch.
//
// op: 0 SoftPool, 1 StochasticPool expectation, 2 StochasticPool sample.
// dtype: 0 float32, 1 float16 (IEEE binary16 bits); all arithmetic in float32.
// dY == NULL: forward, out = Y. dY != NULL: backward, out = dX (X's shape).
// geom[20] (windowed): N, C, in[3], out[3], k[3], s[3], dil[3], pad[3] (d, h, w; 1-D and
//   2-D inputs use leading size-1 axes), resolved as in kernel_abi.h.
// dims[6], mask (reduce): the padded shape and reduced-axes mask of kernel_abi.h.
// threads: how many threads may work (torch.get_num_threads()); the caller is one.
// Returns 0, or 1 for bad arguments, 2 for a failure inside a kernel (out of memory).
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

int poolexport_torch_abi_version(void);
int poolexport_torch_window(int op, int dtype, const void* X, const void* dY, void* out, const int64_t* geom,
                            float beta, int64_t seed, int threads);
int poolexport_torch_reduce(int op, int dtype, const void* X, const void* dY, void* out, const int64_t* dims,
                            int32_t mask, float beta, int64_t seed, int threads);
// The adaPool family (op: 0 EdscwPool, 1 IdwPool, 2 AdaPool), forward or backward as above;
// rank: the spatial rank (1 to 3) of Y = (N, C, *out), against which Beta (AdaPool only, X's
// dtype, contiguous, beta_dim sizes in beta_shape) broadcasts by numpy rules. An AdaPool
// backward also writes dBeta (Beta's shape) to dbeta. Returns 1 also where Beta does not
// broadcast.
int poolexport_torch_ada(int op, int dtype, const void* X, const void* Beta, const int64_t* beta_shape, int beta_dim,
                         const void* dY, void* out, void* dbeta, const int64_t* geom, int rank, int threads);
// diagnostics: the CPU path in use ("avx512" | "avx2" | "portable", capped by the
// POOLEXPORT_CPU_ISA variable) and SoftPool's exp on it, for arguments in [-60, 0]
const char* poolexport_cpu_isa(void);
void poolexport_cpu_exp_shifted(const float* t, float* out, int64_t n);

#ifdef __cplusplus
}
#endif
