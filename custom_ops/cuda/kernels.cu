// CUDA kernels of the poolexport ops: the extern "C" entry points of kernel_abi.h (the
// same PTX TensorRT's AOT plugins launch) and their host launchers. One thread per output
// element, grid-stride loop, except the soft and expectation reductions over the
// innermost axis: 32 or 256 lanes per output (reduce_lanes). The per-window math is the
// shared header code.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>

// POOLEXPORT_HOST_EMULATION: tests compile this file as C++ against a small shim of the
// CUDA headers (tests/test_kernels_emulated*.py) whose px_emulated_launch runs every thread
// of the launch's real grid on the CPU, so the kernels' indexing, grid-stride loops and
// the launchers' geometry and argument order are tested even where no GPU is lent. The
// cooperative reduce kernels need a block's threads to run together at __syncthreads: a
// shim that does so defines __shared__ and __syncthreads itself; these fallbacks only fit
// a shim whose blocks are too small for the cooperative path (it then takes the
// one-thread-per-output path).
#ifdef POOLEXPORT_HOST_EMULATION
#ifndef PX_LAUNCH
#define PX_LAUNCH(kernel, grid, block, stream) px_emulated_launch(kernel, grid, block)
#endif
#ifndef __shared__
#define __shared__ static
#endif
#ifndef __syncthreads
#define __syncthreads()
#endif
#else
#define PX_LAUNCH(kernel, grid, block, stream) kernel<<<grid, block, 0, stream>>>
#endif

#include "poolexport/kernel_abi.h"
#include "poolexport/reduce.h"
#include "poolexport/soft_pool.h"
#include "poolexport/stochastic_pool.h"
#include "poolexport/window.h"
#include "elements.h"
#include "launch.h"

namespace {

using namespace poolexport;


__device__ __forceinline__ Window3 make_window(POOLEXPORT_WINDOW_PARAMS) {
  Window3 w;
  w.in[0] = in_d; w.in[1] = in_h; w.in[2] = in_w;
  w.out[0] = out_d; w.out[1] = out_h; w.out[2] = out_w;
  w.k[0] = k_d; w.k[1] = k_h; w.k[2] = k_w;
  w.s[0] = s_d; w.s[1] = s_h; w.s[2] = s_w;
  w.dil[0] = dil_d; w.dil[1] = dil_h; w.dil[2] = dil_w;
  w.pad[0] = pad_d; w.pad[1] = pad_h; w.pad[2] = pad_w;
  return w;
}

// op: 0 soft (scalar = beta bits), 1 stochastic (scalar = sample flag)
template <int Op, class T>
__device__ __forceinline__ void window_kernel(const T* X, const Window3& w, int64_t N, int64_t C, int32_t scalar,
                                              uint32_t seed_lo, uint32_t seed_hi, T* Y) {
  int64_t plane_out = w.out[0] * w.out[1] * w.out[2];
  int64_t plane_in = w.in[0] * w.in[1] * w.in[2];
  int64_t total = N * C * plane_out;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
    int64_t nc = e / plane_out, r = e - nc * plane_out;
    int64_t ow = r % w.out[2];
    int64_t oh = (r / w.out[2]) % w.out[1];
    int64_t od = r / (w.out[2] * w.out[1]);
    const T* x = X + nc * plane_in;
    auto visit = [&](auto&& g) { for_each_in_window(w, od, oh, ow, [&](int64_t i) { g(ld(x, i)); }); };
    float v;
    if (Op == 0) v = soft_pool_value(visit, bits_to_float(scalar));
    else if (scalar) v = stochastic_sample_value(visit, (uint64_t)e, seed_lo, seed_hi);
    else v = stochastic_expectation_value(visit);
    st(Y, e, v);
  }
}

// Per-lane partial state of a cooperative reduction. Soft: an online softmax (m = the
// lane's running maximum of beta*a, s = sum exp(beta*a - m), t = sum exp(beta*a - m) * a);
// expectation: s = sum r, t = sum r^2 (m unused). Merging two lanes rescales to the larger
// maximum, so the result is the softmax-weighted mean whatever the order.
struct Partial {
  float m, s, t, amax;  // amax: max |a| (soft) or max r (expectation), for the scaled path's check; NaN sticks
};

// max(a, b) that keeps a NaN of either (a NaN amax sends the output to the shared math)
__device__ __forceinline__ float max_keep_nan(float a, float b) { return a > b || a != a ? a : b; }

template <int Op>
__device__ __forceinline__ void accumulate(Partial& p, float a, float beta) {
  const float v = Op == 0 ? (a < 0.0f ? -a : a) : a;
  p.amax = max_keep_nan(v, p.amax);
  if (Op == 0) {
    float z = beta * a;
    if (z > p.m) {
      float c = fast_exp(p.m - z);
      p.s = p.s * c + 1.0f;
      p.t = p.t * c + a;
      p.m = z;
    } else {
      float w = fast_exp(z - p.m);
      p.s += w;
      p.t += w * a;
    }
  } else {
    float r = stochastic_r(a);  // NaN kept (stochastic_pool.h)
    p.s += r;
    p.t += r * r;
  }
}

template <int Op>
__device__ __forceinline__ Partial merge(Partial a, Partial b) {
  const float amax = max_keep_nan(a.amax, b.amax);
  if (Op != 0) return Partial{0.0f, a.s + b.s, a.t + b.t, amax};
  float m = a.m > b.m ? a.m : b.m;
  float ca = fast_exp(a.m - m), cb = fast_exp(b.m - m);
  return Partial{m, a.s * ca + b.s * cb, a.t * ca + b.t * cb, amax};
}

// One output per `lanes` consecutive threads of a block (reduce_lanes): each lane reads
// every lanes-th element of the window's contiguous runs (coalesced), then a tree in
// shared memory merges the lanes. The loop over outputs advances whole blocks, so every
// thread of a block reaches every __syncthreads.
template <int Op, class T>
__device__ __forceinline__ void reduce_cooperative(const T* X, const Reduce6& g, int lanes, float beta, T* Y) {
  __shared__ Partial part[POOLEXPORT_BLOCK];
  const int tid = threadIdx.x, lane = tid % lanes, groups = blockDim.x / lanes;
  int from;
  const int64_t run = reduce_run(g, &from), runs = g.window / run;
  for (int64_t first = (int64_t)blockIdx.x * groups; first < g.outputs; first += (int64_t)gridDim.x * groups) {
    const int64_t e = first + tid / lanes;
    Partial p{-3.402823466e38f, 0.0f, 0.0f, 0.0f};
    if (e < g.outputs) {
      const int64_t base = reduce_base(g, e);
      for (int64_t q = 0; q < runs; ++q) {
        const T* x = X + base + reduce_run_offset(g, from, q);
        for (int64_t r = lane; r < run; r += lanes) accumulate<Op>(p, ld(x, r), beta);
      }
    }
    part[tid] = p;
    __syncthreads();
    for (int half = lanes / 2; half > 0; half /= 2) {
      if (lane < half) part[tid] = merge<Op>(part[tid], part[tid + half]);
      __syncthreads();
    }
    if (lane == 0 && e < g.outputs) {
      Partial r = part[tid];
      float v = Op == 0 ? (r.s > 0.0f ? r.t / r.s : 0.0f) : stochastic_ratio(r.t, r.s);
      // above the scaled path's limit (or NaN): the lane sums may have overflowed (or, for
      // SoftPool, weighed a clamped exp against a huge value): this output again, serially,
      // through the shared math (soft_pool.h / stochastic_pool.h)
      if (!(r.amax <= (Op == 0 ? limits::kSoftScaleAbove : limits::kMomentScaleAbove))) {
        auto visit = [&](auto&& f) { for_each_in_reduce(g, e, [&](int64_t i) { f(ld(X, i)); }); };
        v = Op == 0 ? soft_pool_value(visit, beta) : stochastic_expectation_value(visit);
      }
      st(Y, e, v);
    }
    __syncthreads();  // part[] is rewritten by the next round
  }
}

template <int Op, class T>
__device__ __forceinline__ void reduce_kernel(const T* X, int32_t d0, int32_t d1, int32_t d2, int32_t d3, int32_t d4,
                                              int32_t d5, int32_t mask, int32_t scalar, uint32_t seed_lo,
                                              uint32_t seed_hi, T* Y) {
  int64_t dims[6] = {d0, d1, d2, d3, d4, d5};
  Reduce6 g = make_reduce6(dims, mask);
  const bool sample = Op == 1 && scalar;
  const int lanes = reduce_lanes(g.window, mask, sample ? 1 : 0);
  // any launch stays correct: a block that cannot hold whole lane groups runs a thread per output
  if (lanes > 1 && blockDim.x % lanes == 0 && blockDim.x <= POOLEXPORT_BLOCK) {
    reduce_cooperative<Op>(X, g, lanes, Op == 0 ? bits_to_float(scalar) : 0.0f, Y);
    return;
  }
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < g.outputs; e += (int64_t)gridDim.x * blockDim.x) {
    auto visit = [&](auto&& f) { for_each_in_reduce(g, e, [&](int64_t i) { f(ld(X, i)); }); };
    float v;
    if (Op == 0) v = soft_pool_value(visit, bits_to_float(scalar));
    else if (sample) v = stochastic_sample_value(visit, (uint64_t)e, seed_lo, seed_hi);
    else v = stochastic_expectation_value(visit);
    st(Y, e, v);
  }
}

}  // namespace

#define PX_WINDOW_ARGS                                                                                  \
  N, C, in_d, in_h, in_w, out_d, out_h, out_w, k_d, k_h, k_w, s_d, s_h, s_w, dil_d, dil_h, dil_w, pad_d, \
      pad_h, pad_w

extern "C" {

__global__ void poolexport_soft_pool_f32(const float* X, POOLEXPORT_WINDOW_PARAMS, int32_t beta_bits, float* Y) {
  window_kernel<0>(X, make_window(PX_WINDOW_ARGS), N, C, beta_bits, 0u, 0u, Y);
}
__global__ void poolexport_soft_pool_f16(const __half* X, POOLEXPORT_WINDOW_PARAMS, int32_t beta_bits, __half* Y) {
  window_kernel<0>(X, make_window(PX_WINDOW_ARGS), N, C, beta_bits, 0u, 0u, Y);
}
__global__ void poolexport_stochastic_pool_f32(const float* X, POOLEXPORT_WINDOW_PARAMS, int32_t sample,
                                               int32_t seed_lo, int32_t seed_hi, float* Y) {
  window_kernel<1>(X, make_window(PX_WINDOW_ARGS), N, C, sample, (uint32_t)seed_lo, (uint32_t)seed_hi, Y);
}
__global__ void poolexport_stochastic_pool_f16(const __half* X, POOLEXPORT_WINDOW_PARAMS, int32_t sample,
                                               int32_t seed_lo, int32_t seed_hi, __half* Y) {
  window_kernel<1>(X, make_window(PX_WINDOW_ARGS), N, C, sample, (uint32_t)seed_lo, (uint32_t)seed_hi, Y);
}
__global__ void poolexport_reduce_soft_pool_f32(const float* X, POOLEXPORT_REDUCE_PARAMS, int32_t beta_bits, float* Y) {
  reduce_kernel<0>(X, d0, d1, d2, d3, d4, d5, reduce_mask, beta_bits, 0u, 0u, Y);
}
__global__ void poolexport_reduce_soft_pool_f16(const __half* X, POOLEXPORT_REDUCE_PARAMS, int32_t beta_bits,
                                                __half* Y) {
  reduce_kernel<0>(X, d0, d1, d2, d3, d4, d5, reduce_mask, beta_bits, 0u, 0u, Y);
}
__global__ void poolexport_reduce_stochastic_pool_f32(const float* X, POOLEXPORT_REDUCE_PARAMS, int32_t sample,
                                                      int32_t seed_lo, int32_t seed_hi, float* Y) {
  reduce_kernel<1>(X, d0, d1, d2, d3, d4, d5, reduce_mask, sample, (uint32_t)seed_lo, (uint32_t)seed_hi, Y);
}
__global__ void poolexport_reduce_stochastic_pool_f16(const __half* X, POOLEXPORT_REDUCE_PARAMS, int32_t sample,
                                                      int32_t seed_lo, int32_t seed_hi, __half* Y) {
  reduce_kernel<1>(X, d0, d1, d2, d3, d4, d5, reduce_mask, sample, (uint32_t)seed_lo, (uint32_t)seed_hi, Y);
}

__attribute__((visibility("default"))) int poolexport_cuda_launch_window(int op, int dtype, const void* X, void* Y,
                                                                         const int32_t* p, void* stream) {
  int64_t total = (int64_t)p[0] * p[1] * p[5] * p[6] * p[7];
  if (total <= 0) return 0;
  dim3 grid(poolexport_launch_grid(total)), block(POOLEXPORT_BLOCK);
  cudaStream_t s = (cudaStream_t)stream;
#define PX_P p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11], p[12], p[13], p[14], p[15], \
             p[16], p[17], p[18], p[19]
  if (op == 0 && dtype == 0)
    PX_LAUNCH(poolexport_soft_pool_f32, grid, block, s)((const float*)X, PX_P, p[20], (float*)Y);
  else if (op == 0)
    PX_LAUNCH(poolexport_soft_pool_f16, grid, block, s)((const __half*)X, PX_P, p[20], (__half*)Y);
  else if (dtype == 0)
    PX_LAUNCH(poolexport_stochastic_pool_f32, grid, block, s)((const float*)X, PX_P, p[20], p[21], p[22], (float*)Y);
  else
    PX_LAUNCH(poolexport_stochastic_pool_f16, grid, block, s)((const __half*)X, PX_P, p[20], p[21], p[22], (__half*)Y);
#undef PX_P
  return (int)cudaGetLastError();
}

__attribute__((visibility("default"))) int poolexport_cuda_launch_reduce(int op, int dtype, const void* X, void* Y,
                                                                         const int32_t* p, void* stream) {
  int64_t total = 1, window = 1;
  for (int i = 0; i < 6; ++i) (p[7] & (1 << i) ? window : total) *= p[1 + i];
  if (total <= 0) return 0;
  // the launch rule of kernel_abi.h: one thread per lane of each output
  const int lanes = reduce_lanes(window, p[7], op == 1 ? p[8] : 0);
  dim3 grid(poolexport_launch_grid(total * lanes)), block(POOLEXPORT_BLOCK);
  cudaStream_t s = (cudaStream_t)stream;
#define PX_P p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]
  if (op == 0 && dtype == 0)
    PX_LAUNCH(poolexport_reduce_soft_pool_f32, grid, block, s)((const float*)X, PX_P, p[8], (float*)Y);
  else if (op == 0)
    PX_LAUNCH(poolexport_reduce_soft_pool_f16, grid, block, s)((const __half*)X, PX_P, p[8], (__half*)Y);
  else if (dtype == 0)
    PX_LAUNCH(poolexport_reduce_stochastic_pool_f32, grid, block, s)((const float*)X, PX_P, p[8], p[9], p[10], (float*)Y);
  else
    PX_LAUNCH(poolexport_reduce_stochastic_pool_f16, grid, block, s)((const __half*)X, PX_P, p[8], p[9], p[10],
                                                                  (__half*)Y);
#undef PX_P
  return (int)cudaGetLastError();
}

__attribute__((visibility("default"))) const char* poolexport_cuda_error_string(int rc) {
  return cudaGetErrorString((cudaError_t)rc);
}

#ifndef POOLEXPORT_HOST_EMULATION
// The runtime is linked statically (CUDART_VERSION, e.g. 13000 from CUDA 13.0); a driver
// for an older CUDA would fail every launch with "insufficient driver" and no versions.
__attribute__((visibility("default"))) const char* poolexport_cuda_version_error(void) {
  static const std::string message = [] {
    int driver = 0;
    if (cudaDriverGetVersion(&driver) != cudaSuccess || driver == 0)
      return std::string("no CUDA driver found (this library's CUDA kernels use the CUDA ") +
             std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10) + " runtime)";
    if (driver >= CUDART_VERSION) return std::string();
    return "the CUDA driver supports CUDA " + std::to_string(driver / 1000) + "." + std::to_string(driver % 1000 / 10) +
           " but this library was built with the CUDA " + std::to_string(CUDART_VERSION / 1000) + "." +
           std::to_string(CUDART_VERSION % 1000 / 10) +
           " runtime: update the driver or rebuild poolexport with this machine's CUDA toolkit";
  }();
  return message.empty() ? nullptr : message.c_str();
}
#endif

}  // extern "C"

// the adaPool family: its own file, the same translation unit (and PTX)
#include "ada_kernels.cu"
