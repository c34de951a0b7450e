// CUDA backward kernels of the torch ops (ONNX Runtime and TensorRT run forward only).
// Windowed ops in two passes, both deterministic and free of atomics:
//   1. one thread per output window: its state from the shared math (SoftPoolStats,
//      StochasticStats, or the sampled pick's input offset) into a workspace;
//   2. one thread per input element: a gather over the windows that contain it (per axis,
//      the taps k with (i + pad - k * dil) divisible by the stride), summing the shared
//      per-element gradient in a fixed order.
// Reduce forms: every input element lies in exactly one window, so one thread per output
// computes its window's state and writes its window's gradients.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "backward.h"
#include "poolexport/kernel_abi.h"
#include "poolexport/reduce.h"
#include "poolexport/soft_pool.h"
#include "poolexport/stochastic_pool.h"
#include "poolexport/window.h"
#include "elements.h"

namespace {

using namespace poolexport;


__host__ __device__ inline int64_t prod3(const int64_t* v) { return v[0] * v[1] * v[2]; }

template <class T>
__global__ void window_state(const T* X, Window3 w, int64_t planes, int op, float beta, uint32_t lo, uint32_t hi,
                             float* ws) {
  const int64_t out3 = prod3(w.out), in3 = prod3(w.in), total = planes * out3;
  for (int64_t o = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; o < total; o += (int64_t)gridDim.x * blockDim.x) {
    const int64_t plane = o / out3, r = o - plane * out3;
    const int64_t ow = r % w.out[2], oh = r / w.out[2] % w.out[1], od = r / (w.out[2] * w.out[1]);
    const T* xp = X + plane * in3;
    auto visit = [&](auto&& g) { for_each_in_window(w, od, oh, ow, [&](int64_t i) { g(ld(xp, i)); }); };
    if (op == 0) {
      soft_pool_pack(soft_pool_stats(visit, beta), ws + 3 * o);  // c, +-s, d
    } else if (op == 1) {
      const StochasticStats s = stochastic_expectation_stats(visit);
      ws[3 * o] = s.s1;
      ws[3 * o + 1] = s.y;
      ws[3 * o + 2] = s.k;
    } else {
      int64_t pick, n = 0, at = -1;
      stochastic_sample_pick(visit, (uint64_t)o, lo, hi, &pick);
      for_each_in_window(w, od, oh, ow, [&](int64_t i) {
        if (n++ == pick) at = i;
      });
      reinterpret_cast<int32_t*>(ws)[3 * o] = (int32_t)at;  // the picked plane offset, -1 for none
    }
  }
}

// Output indices o of one axis whose window holds input index i: o * s - pad + k * dil = i.
__device__ __forceinline__ bool tap_output(int64_t i, int64_t k, const Window3& w, int axis, int64_t* o) {
  const int64_t t = i + w.pad[axis] - k * w.dil[axis];
  if (t < 0 || t % w.s[axis]) return false;
  *o = t / w.s[axis];
  return *o < w.out[axis];
}

template <class T>
__global__ void window_gather(const T* X, const T* dY, Window3 w, int64_t planes, int op, float beta, const float* ws,
                              T* dX) {
  const int64_t out3 = prod3(w.out), in3 = prod3(w.in), total = planes * in3;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t plane = i / in3, r = i - plane * in3;
    const int64_t iw = r % w.in[2], ih = r / w.in[2] % w.in[1], id = r / (w.in[2] * w.in[1]);
    const float a = ld(X, i);
    float acc = 0.0f;
    int64_t od, oh, ow;
    for (int64_t kd = 0; kd < w.k[0]; ++kd) {
      if (!tap_output(id, kd, w, 0, &od)) continue;
      for (int64_t kh = 0; kh < w.k[1]; ++kh) {
        if (!tap_output(ih, kh, w, 1, &oh)) continue;
        for (int64_t kw = 0; kw < w.k[2]; ++kw) {
          if (!tap_output(iw, kw, w, 2, &ow)) continue;
          const int64_t o = plane * out3 + (od * w.out[1] + oh) * w.out[2] + ow;
          const float g = ld(dY, o);
          if (op == 0) acc += soft_pool_grad(a, beta, soft_pool_unpack(ws + 3 * o, beta), g);
          else if (op == 1) acc += stochastic_expectation_grad(a, ws[3 * o], ws[3 * o + 1], ws[3 * o + 2], g);
          else if (reinterpret_cast<const int32_t*>(ws)[3 * o] == (int32_t)r) acc += g;
        }
      }
    }
    st(dX, i, acc);
  }
}

template <class T>
__global__ void reduce_backward(const T* X, const T* dY, Reduce6 g, int op, float beta, uint32_t lo, uint32_t hi,
                                T* dX) {
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < g.outputs; e += (int64_t)gridDim.x * blockDim.x) {
    const float gv = ld(dY, e);
    auto visit = [&](auto&& f) { for_each_in_reduce(g, e, [&](int64_t i) { f(ld(X, i)); }); };
    if (op == 0) {
      const SoftPoolStats s = soft_pool_stats(visit, beta);
      for_each_in_reduce(g, e, [&](int64_t i) { st(dX, i, soft_pool_grad(ld(X, i), beta, s, gv)); });
    } else if (op == 1) {
      const StochasticStats s = stochastic_expectation_stats(visit);
      for_each_in_reduce(g, e, [&](int64_t i) { st(dX, i, stochastic_expectation_grad(ld(X, i), s.s1, s.y, s.k, gv)); });
    } else {
      int64_t pick, n = 0;
      stochastic_sample_pick(visit, (uint64_t)e, lo, hi, &pick);
      for_each_in_reduce(g, e, [&](int64_t i) { st(dX, i, n++ == pick ? gv : 0.0f); });
    }
  }
}

template <class T>
void launch_window(int op, const void* X, const void* dY, void* dX, float* ws, const int32_t* p, cudaStream_t s) {
  const Window3 w = window_from_params(p);
  const int64_t planes = (int64_t)p[0] * p[1], outputs = planes * prod3(w.out), inputs = planes * prod3(w.in);
  const float beta = bits_to_float(p[20]);
  const uint32_t lo = (uint32_t)p[21], hi = (uint32_t)p[22];
  if (outputs > 0)
    window_state<T><<<poolexport_launch_grid(outputs), POOLEXPORT_BLOCK, 0, s>>>((const T*)X, w, planes, op, beta, lo,
                                                                                 hi, ws);
  if (inputs > 0)
    window_gather<T><<<poolexport_launch_grid(inputs), POOLEXPORT_BLOCK, 0, s>>>((const T*)X, (const T*)dY, w, planes,
                                                                                 op, beta, ws, (T*)dX);
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) int poolexport_cuda_launch_window_backward(int op, int dtype, const void* X,
                                                                                  const void* dY, void* dX,
                                                                                  void* workspace, const int32_t* p,
                                                                                  void* stream) {
  if (op < 0 || op > 2) return (int)cudaErrorInvalidValue;
  cudaStream_t s = (cudaStream_t)stream;
  if (dtype == 0) launch_window<float>(op, X, dY, dX, (float*)workspace, p, s);
  else launch_window<__half>(op, X, dY, dX, (float*)workspace, p, s);
  return (int)cudaGetLastError();
}

__attribute__((visibility("default"))) int poolexport_cuda_launch_reduce_backward(int op, int dtype, const void* X,
                                                                                  const void* dY, void* dX,
                                                                                  const int32_t* p, void* stream) {
  if (op < 0 || op > 2) return (int)cudaErrorInvalidValue;
  int64_t dims[6];
  for (int i = 0; i < 6; ++i) dims[i] = p[1 + i];
  const Reduce6 g = make_reduce6(dims, p[7]);
  if (g.outputs == 0 || g.window == 0) return 0;
  const float beta = bits_to_float(p[8]);
  const uint32_t lo = (uint32_t)p[9], hi = (uint32_t)p[10];
  cudaStream_t s = (cudaStream_t)stream;
  const int grid = poolexport_launch_grid(g.outputs);
  if (dtype == 0)
    reduce_backward<float><<<grid, POOLEXPORT_BLOCK, 0, s>>>((const float*)X, (const float*)dY, g, op, beta, lo, hi,
                                                             (float*)dX);
  else
    reduce_backward<__half><<<grid, POOLEXPORT_BLOCK, 0, s>>>((const __half*)X, (const __half*)dY, g, op, beta, lo, hi,
                                                              (__half*)dX);
  return (int)cudaGetLastError();
}

}  // extern "C"
