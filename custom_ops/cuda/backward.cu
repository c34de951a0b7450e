// CUDA backward kernels of the torch ops (ONNX Runtime and TensorRT run forward only).
// Windowed ops in two passes, both deterministic and free of atomics:
//   1. one thread per output window: its state from the shared math (SoftPoolStats,
//      StochasticStats, or the sampled pick's input offset) into a workspace;
//   2. one thread per input element: a gather over the windows that contain it (per axis,
//      the taps k with (i + pad - k * dil) divisible by the stride), summing the shared
//      per-element gradient in a fixed order.
// Reduce forms: every input element lies in exactly one window. With the innermost axis
// reduced, the soft and expectation forms take the forward's lanes per output (reduce.h
// reduce_lanes: 32 or 256): each lane reads every lanes-th element of the window's
// contiguous runs (coalesced), the lanes' partial state is merged in shared memory, and
// each lane writes its own elements' gradients. Otherwise (innermost axis kept: neighbouring
// threads already read neighbouring elements; and sample mode, sequential by definition)
// one thread per output computes its window's state and writes its window's gradients.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

// POOLEXPORT_HOST_EMULATION: tests/test_backward_emulated.py compiles this file as C++
// against the CUDA shim of tests/test_kernels_emulated.py, which runs every thread of the
// real launch grid on the CPU (blocks' threads as fibers meeting at __syncthreads).
#ifdef POOLEXPORT_HOST_EMULATION
#define PX_LAUNCH(kernel, grid, block, stream) px_emulated_launch(kernel, grid, block)
#else
#define PX_LAUNCH(kernel, grid, block, stream) kernel<<<grid, block, 0, stream>>>
#endif

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

// f(o) for every output o (an index into the whole output) whose window holds input i
// (an index into the whole input), in one fixed order: the gathers' deterministic sums.
template <class F>
__device__ __forceinline__ void for_each_window_holding(int64_t i, const Window3& w, int64_t in3, int64_t out3, F&& f) {
  const int64_t plane = i / in3, r = i - plane * in3;
  const int64_t iw = r % w.in[2], ih = r / w.in[2] % w.in[1], id = r / (w.in[2] * w.in[1]);
  int64_t od, oh, ow;
  for (int64_t kd = 0; kd < w.k[0]; ++kd) {
    if (!tap_output(id, kd, w, 0, &od)) continue;
    for (int64_t kh = 0; kh < w.k[1]; ++kh) {
      if (!tap_output(ih, kh, w, 1, &oh)) continue;
      for (int64_t kw = 0; kw < w.k[2]; ++kw) {
        if (!tap_output(iw, kw, w, 2, &ow)) continue;
        f(plane * out3 + (od * w.out[1] + oh) * w.out[2] + ow);
      }
    }
  }
}

template <class T>
__global__ void window_gather(const T* X, const T* dY, Window3 w, int64_t planes, int op, float beta, const float* ws,
                              T* dX) {
  const int64_t out3 = prod3(w.out), in3 = prod3(w.in), total = planes * in3;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i % in3;
    const float a = ld(X, i);
    float acc = 0.0f;
    for_each_window_holding(i, w, in3, out3, [&](int64_t o) {
      const float g = ld(dY, o);
      if (op == 0) acc += soft_pool_grad(a, beta, soft_pool_unpack(ws + 3 * o, beta), g);
      else if (op == 1) acc += stochastic_expectation_grad(a, ws[3 * o], ws[3 * o + 1], ws[3 * o + 2], g);
      else if (reinterpret_cast<const int32_t*>(ws)[3 * o] == (int32_t)r) acc += g;
    });
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

// The lanes' shared memory of reduce_backward_lanes: one slot per thread.
struct LaneSlots {
  float f[5][POOLEXPORT_BLOCK];
  int64_t pos[POOLEXPORT_BLOCK];
};

// Soft and expectation reduce backward with `lanes` threads per output (lanes > 1, a
// divisor of blockDim.x). The state equals soft_pool_stats / stochastic_expectation_stats
// of the shared headers but for the sums' order: SoftPool's c is the first maximal beta*a
// in window order, so c, m and the scaled path's choice are the serial loop's bits. The
// loop over outputs advances whole blocks, so every thread of a block reaches every
// __syncthreads.
template <class T>
__global__ void reduce_backward_lanes(const T* X, const T* dY, Reduce6 g, int op, int lanes, float beta, T* dX) {
  __shared__ LaneSlots sh;
  const int tid = threadIdx.x, lane = tid % lanes, groups = blockDim.x / lanes, head = tid - lane;
  int from;
  const int64_t run = reduce_run(g, &from), runs = g.window / run;
  for (int64_t first = (int64_t)blockIdx.x * groups; first < g.outputs; first += (int64_t)gridDim.x * groups) {
    const int64_t e = first + tid / lanes;
    const bool live = e < g.outputs;
    const int64_t base = live ? reduce_base(g, e) : 0;
    // f(input offset, window position) for this lane's elements, in window order
    auto each = [&](auto&& f) {
      if (!live) return;
      for (int64_t q = 0; q < runs; ++q) {
        const int64_t at = base + reduce_run_offset(g, from, q);
        for (int64_t r = lane; r < run; r += lanes) f(at + r, q * run + r);
      }
    };
    auto merge = [&](auto&& combine) {  // a tree over the output's lanes; the result in slot `head`
      __syncthreads();
      for (int half = lanes / 2; half > 0; half /= 2) {
        if (lane < half) combine(tid, tid + half);
        __syncthreads();
      }
    };
    const float gv = live ? ld(dY, e) : 0.0f;
    if (op == 0) {
      float m = -3.402823466e38f, c = 0.0f, amax = 0.0f;
      int64_t at = -1;  // window position of the lane's first maximum; -1: none (or only NaN beta*a)
      each([&](int64_t i, int64_t p) {
        const float a = ld(X, i), z = beta * a, v = a < 0.0f ? -a : a;
        if (z == z && (at < 0 || z > m)) m = z, c = a, at = p;
        amax = v > amax ? v : amax;
      });
      sh.f[0][tid] = m, sh.f[1][tid] = c, sh.f[2][tid] = amax, sh.pos[tid] = at;
      merge([&](int i, int j) {
        if (sh.pos[j] >= 0 && (sh.pos[i] < 0 || sh.f[0][j] > sh.f[0][i] || (sh.f[0][j] == sh.f[0][i] && sh.pos[j] < sh.pos[i])))
          sh.f[0][i] = sh.f[0][j], sh.f[1][i] = sh.f[1][j], sh.pos[i] = sh.pos[j];
        sh.f[2][i] = sh.f[2][j] > sh.f[2][i] ? sh.f[2][j] : sh.f[2][i];
      });
      // (the serial loop keeps a NaN beta*a of the first element as m; here NaN is skipped,
      // but its weight turns s NaN either way, so every gradient of the window is NaN)
      m = sh.f[0][head], c = sh.f[1][head], amax = sh.f[2][head];
      const bool scaled = !(amax <= limits::kSoftScaleAbove);
      const float k = scaled ? limits::kSoftScale : 1.0f, ck = c * k;
      float s = 0.0f, sd = 0.0f;
      each([&](int64_t i, int64_t) {
        const float a = ld(X, i), w = soft_weight(beta * a - m, scaled);
        s += w;
        sd += w == 0.0f ? 0.0f : w * (a * k - ck);
      });
      __syncthreads();  // every lane has read slot `head` of the first merge
      sh.f[0][tid] = s, sh.f[1][tid] = sd;
      merge([&](int i, int j) { sh.f[0][i] += sh.f[0][j], sh.f[1][i] += sh.f[1][j]; });
      const SoftPoolStats st_{m, sh.f[0][head], 0.0f, c, sh.f[1][head] / sh.f[0][head], scaled};
      each([&](int64_t i, int64_t) { st(dX, i, soft_pool_grad(ld(X, i), beta, st_, gv)); });
    } else {
      const float K = limits::kMomentScale;
      float s1 = 0.0f, s2 = 0.0f, s1k = 0.0f, s2k = 0.0f, rmax = 0.0f;
      each([&](int64_t i, int64_t) {
        const float r = stochastic_r(ld(X, i)), rk = r * K;
        s1 += r, s2 += r * r, s1k += rk, s2k += rk * rk;
        rmax = r > rmax ? r : rmax;  // skips NaN: the sums carry it
      });
      sh.f[0][tid] = s1, sh.f[1][tid] = s2, sh.f[2][tid] = s1k, sh.f[3][tid] = s2k, sh.f[4][tid] = rmax;
      merge([&](int i, int j) {
        for (int q = 0; q < 4; ++q) sh.f[q][i] += sh.f[q][j];
        sh.f[4][i] = sh.f[4][j] > sh.f[4][i] ? sh.f[4][j] : sh.f[4][i];
      });
      rmax = sh.f[4][head];
      StochasticStats ss{sh.f[0][head], stochastic_ratio(sh.f[1][head], sh.f[0][head]), 1.0f};
      if (!(rmax <= limits::kMomentScaleAbove)) {  // the scaled sums (stochastic_pool.h)
        const float yk = sh.f[3][head] / sh.f[2][head], rk = rmax * K;
        ss = StochasticStats{sh.f[2][head], (yk > rk ? rk : yk) / K, K};
      }
      each([&](int64_t i, int64_t) { st(dX, i, stochastic_expectation_grad(ld(X, i), ss.s1, ss.y, ss.k, gv)); });
    }
    __syncthreads();  // the slots are rewritten by the next round
  }
}

template <class T>
void launch_window(int op, const void* X, const void* dY, void* dX, float* ws, const int32_t* p, cudaStream_t s) {
  const Window3 w = window_from_params(p);
  const int64_t planes = (int64_t)p[0] * p[1], outputs = planes * prod3(w.out), inputs = planes * prod3(w.in);
  const float beta = bits_to_float(p[20]);
  const uint32_t lo = (uint32_t)p[21], hi = (uint32_t)p[22];
  if (outputs > 0)
    PX_LAUNCH(window_state<T>, dim3(poolexport_launch_grid(outputs)), dim3(POOLEXPORT_BLOCK), s)((const T*)X, w, planes,
                                                                                                 op, beta, lo, hi, ws);
  if (inputs > 0)
    PX_LAUNCH(window_gather<T>, dim3(poolexport_launch_grid(inputs)), dim3(POOLEXPORT_BLOCK), s)((const T*)X,
                                                                                                 (const T*)dY, w, planes,
                                                                                                 op, beta, ws, (T*)dX);
}

template <class T>
void launch_reduce(int op, const void* X, const void* dY, void* dX, const Reduce6& g, float beta, uint32_t lo,
                   uint32_t hi, cudaStream_t s) {
  // the forward's launch rule (kernel_abi.h): one thread per lane of each output
  const int lanes = reduce_lanes(g.window, g.mask, op == 2);
  const dim3 grid(poolexport_launch_grid(g.outputs * lanes)), block(POOLEXPORT_BLOCK);
  if (lanes > 1)
    PX_LAUNCH(reduce_backward_lanes<T>, grid, block, s)((const T*)X, (const T*)dY, g, op, lanes, beta, (T*)dX);
  else
    PX_LAUNCH(reduce_backward<T>, grid, block, s)((const T*)X, (const T*)dY, g, op, beta, lo, hi, (T*)dX);
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
  if (dtype == 0) launch_reduce<float>(op, X, dY, dX, g, beta, lo, hi, s);
  else launch_reduce<__half>(op, X, dY, dX, g, beta, lo, hi, s);
  return (int)cudaGetLastError();
}

}  // extern "C"

#include "ada_backward.cu"  // the adaPool family's backward (after the helpers above)
