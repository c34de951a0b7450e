// CUDA backward kernels of the adaPool family's torch ops (EdscwPool, IdwPool, AdaPool),
// included by backward.cu after SoftPool's (it uses that file's prod3 and for_each_window_holding and
// its launch macro). SoftPool's two passes, deterministic and free of atomics:
//   1. ada_state, one thread per output window: the window's gradient state from
//      ada_pool.h (edscw_grad_state / idw_grad_state; AdaPool adds SoftPool's stats with
//      beta 1 and the output's grad split by Beta) into a float workspace, and for AdaPool
//      the output's term of dBeta, (eDSCW - eM) * g, as float32 (the caller reduces it
//      over Beta's broadcast axes);
//   2. ada_gather, one thread per input element: the sum, in a fixed order, over the
//      windows that hold it of g_w * local(a) (edscw_grad_local / idw_grad_local, and
//      soft_pool_grad for AdaPool's eM part).
#include "poolexport/ada_pool.h"

namespace {

// Workspace floats per output, by kind (0 eDSCW, 1 IDW, 2 adaPool):
//   eDSCW: k, mk, s, yk, t;  IDW: the same, then dmin, n;
//   adaPool: eDSCW's five, SoftPool's three (soft_pool_pack), g * beta, g * (1 - beta).
constexpr int kAdaStateFloats[3] = {5, 7, 10};

__device__ __forceinline__ void edscw_grad_pack(const EdscwGrad& g, float* w) {
  w[0] = g.st.mean.k, w[1] = g.st.mean.mk, w[2] = g.st.s, w[3] = g.st.yk, w[4] = g.t;
}

// What edscw_grad_local reads; amax, n and y are not needed there.
__device__ __forceinline__ EdscwGrad edscw_grad_unpack(const float* w) {
  return EdscwGrad{EdscwStats{AdaWindowMean{w[0], w[1], 0.0f, 0}, w[2], w[3], 0.0f}, w[4]};
}

__device__ __forceinline__ void idw_grad_pack(const IdwGrad& g, float* w) {
  w[0] = g.st.mean.k, w[1] = g.st.mean.mk, w[2] = g.st.s, w[3] = g.st.yk, w[4] = g.t;
  w[5] = g.st.dmin, w[6] = (float)g.st.mean.n;  // n <= the kernel's size: exact
}

__device__ __forceinline__ IdwGrad idw_grad_unpack(const float* w) {
  return IdwGrad{IdwStats{AdaWindowMean{w[0], w[1], 0.0f, (int64_t)w[6]}, w[5], w[2], w[3], 0.0f}, w[4]};
}

// Beta's element for output (n, c, d, h, w): dims is Beta's 5-D view (kernel_abi.h), each
// axis 1 (broadcast) or the output's size.
struct Beta5 {
  int64_t dims[5];
};

__device__ __forceinline__ int64_t beta5_offset(const Beta5& b, const int64_t idx[5]) {
  int64_t off = 0;
  for (int i = 0; i < 5; ++i) off = off * b.dims[i] + (b.dims[i] == 1 ? 0 : idx[i]);
  return off;
}

// dBeta's term of one output, (eDSCW - eM) * g, without the overflow of e - s where both
// are near FLT_MAX with opposite signs (then by halves: exact for such normal numbers).
// Non-finite e or s give what the plain product gives.
__device__ __forceinline__ float ada_dbeta_term(float e, float s, float g) {
  const float d = e - s;
  if (d - d == 0.0f) return d * g;
  return (0.5f * e - 0.5f * s) * g * 2.0f;
}

template <int Kind, class T>
__global__ void ada_state(const T* X, const T* dY, const T* Beta, Window3 w, int64_t C, int64_t planes, Beta5 bd,
                          float* ws, float* dbeta_terms) {
  const int64_t out3 = prod3(w.out), in3 = prod3(w.in), total = planes * out3;
  for (int64_t o = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; o < total; o += (int64_t)gridDim.x * blockDim.x) {
    const int64_t plane = o / out3, r = o - plane * out3;
    const int64_t ow = r % w.out[2], oh = r / w.out[2] % w.out[1], od = r / (w.out[2] * w.out[1]);
    const T* xp = X + plane * in3;
    auto visit = [&](auto&& g) { for_each_in_window(w, od, oh, ow, [&](int64_t i) { g(ld(xp, i)); }); };
    float* s = ws + kAdaStateFloats[Kind] * o;
    if (Kind == 0) {
      edscw_grad_pack(edscw_grad_state(visit), s);
    } else if (Kind == 1) {
      idw_grad_pack(idw_grad_state(visit), s);
    } else {
      const EdscwGrad e = edscw_grad_state(visit);
      const SoftPoolStats m = soft_pool_stats(visit, 1.0f);
      const int64_t idx[5] = {plane / C, plane % C, od, oh, ow};
      const float g = ld(dY, o), b = ld(Beta, beta5_offset(bd, idx));
      edscw_grad_pack(e, s);
      soft_pool_pack(m, s + 5);
      s[8] = g * b;
      s[9] = g * (1.0f - b);
      dbeta_terms[o] = ada_dbeta_term(e.st.y, m.y, g);
    }
  }
}

template <int Kind, class T>
__global__ void ada_gather(const T* X, const T* dY, Window3 w, int64_t planes, const float* ws, T* dX) {
  const int64_t out3 = prod3(w.out), in3 = prod3(w.in), total = planes * in3;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const float a = ld(X, i);
    float acc = 0.0f;
    for_each_window_holding(i, w, in3, out3, [&](int64_t o) {
      const float* s = ws + kAdaStateFloats[Kind] * o;
      if (Kind == 0) acc += ld(dY, o) * edscw_grad_local(edscw_grad_unpack(s), a);
      else if (Kind == 1) acc += ld(dY, o) * idw_grad_local(idw_grad_unpack(s), a);
      else acc += s[8] * edscw_grad_local(edscw_grad_unpack(s), a) +
                  soft_pool_grad(a, 1.0f, soft_pool_unpack(s + 5, 1.0f), s[9]);
    });
    st(dX, i, acc);
  }
}

template <int Kind, class T>
void launch_ada_backward(const void* X, const void* Beta, const void* dY, void* dX, void* dbeta_terms, float* ws,
                         const int32_t* p, cudaStream_t s) {
  const Window3 w = window_from_params(p);
  const int64_t planes = (int64_t)p[0] * p[1], outputs = planes * prod3(w.out), inputs = planes * prod3(w.in);
  Beta5 bd;
  for (int i = 0; i < 5; ++i) bd.dims[i] = p[20 + i];
  const auto state = ada_state<Kind, T>;  // (a template's comma would split the macro's arguments)
  const auto gather = ada_gather<Kind, T>;
  if (outputs > 0)
    PX_LAUNCH(state, dim3(poolexport_launch_grid(outputs)), dim3(POOLEXPORT_BLOCK), s)(
        (const T*)X, (const T*)dY, (const T*)Beta, w, (int64_t)p[1], planes, bd, ws, (float*)dbeta_terms);
  if (inputs > 0)
    PX_LAUNCH(gather, dim3(poolexport_launch_grid(inputs)), dim3(POOLEXPORT_BLOCK), s)(
        (const T*)X, (const T*)dY, w, planes, ws, (T*)dX);
}

template <class T>
void launch_ada_backward_kind(int op, const void* X, const void* Beta, const void* dY, void* dX, void* dbeta_terms,
                              float* ws, const int32_t* p, cudaStream_t s) {
  if (op == 0) launch_ada_backward<0, T>(X, Beta, dY, dX, dbeta_terms, ws, p, s);
  else if (op == 1) launch_ada_backward<1, T>(X, Beta, dY, dX, dbeta_terms, ws, p, s);
  else launch_ada_backward<2, T>(X, Beta, dY, dX, dbeta_terms, ws, p, s);
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) int poolexport_cuda_ada_backward_workspace(int op) {
  return op >= 0 && op <= 2 ? kAdaStateFloats[op] : 0;
}

__attribute__((visibility("default"))) int poolexport_cuda_launch_ada_backward(int op, int dtype, const void* X,
                                                                               const void* Beta, const void* dY,
                                                                               void* dX, void* dbeta_terms,
                                                                               void* workspace, const int32_t* p,
                                                                               void* stream) {
  if (op < 0 || op > 2 || dtype < 0 || dtype > 1) return (int)cudaErrorInvalidValue;
  cudaStream_t s = (cudaStream_t)stream;
  if (dtype == 0) launch_ada_backward_kind<float>(op, X, Beta, dY, dX, dbeta_terms, (float*)workspace, p, s);
  else launch_ada_backward_kind<__half>(op, X, Beta, dY, dX, dbeta_terms, (float*)workspace, p, s);
  return (int)cudaGetLastError();
}

}  // extern "C"
