// Element access of the CUDA kernels (kernels.cu, backward.cu): float32 or float16 in
// memory, float32 in registers (all arithmetic is float32).
#pragma once

#include <cuda_fp16.h>
#include <stdint.h>

namespace poolexport {

__device__ __forceinline__ float ld(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float ld(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ __forceinline__ void st(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void st(__half* p, int64_t i, float v) { p[i] = __float2half_rn(v); }

}  // namespace poolexport
