// CUDA kernels of the adaPool family (kernel_abi.h): EdscwPool, IdwPool, AdaPool and
// AdaUnpool, and their host launchers (launch.h). Included by kernels.cu (one translation
// unit: the TensorRT PTX holds every entry point), after its launch macros and helpers.
// One thread per output element, grid-stride loop. The pools use the per-window math of
// ada_pool.h (the ORT CPU kernels' per-window path), so both give the same numbers up to
// float32 contraction; AdaUnpool the per-cell form of the CPU kernel (ada_unpool_kernels.h).
#include "poolexport/ada_pool.h"

namespace {

using namespace poolexport;

// A broadcast operand's element offset: dims[5] is its shape in the 5-D view
// (N, C, d, h, w), each axis 1 (broadcast) or the target's size; idx the target's index.
__device__ __forceinline__ int64_t broadcast_offset(const int64_t dims[5], const int64_t idx[5]) {
  int64_t off = 0;
  for (int i = 0; i < 5; ++i) off = off * dims[i] + (dims[i] == 1 ? 0 : idx[i]);
  return off;
}

// Kind: 0 eDSCW, 1 IDW, 2 adaPool (Beta broadcast to Y by beta_dims)
template <int Kind, class T>
__device__ __forceinline__ void ada_window_kernel(const T* X, const T* Beta, const Window3& w, int64_t N, int64_t C,
                                                  const int64_t beta_dims[5], T* Y) {
  const int64_t plane_out = w.out[0] * w.out[1] * w.out[2];
  const int64_t plane_in = w.in[0] * w.in[1] * w.in[2];
  const int64_t total = N * C * plane_out;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t nc = e / plane_out, r = e - nc * plane_out;
    const int64_t ow = r % w.out[2];
    const int64_t oh = (r / w.out[2]) % w.out[1];
    const int64_t od = r / (w.out[2] * w.out[1]);
    const T* x = X + nc * plane_in;
    // the math visits the window 2 (eDSCW) to 4 (adaPool) times: re-read from memory (cached)
    auto visit = [&](auto&& g) { for_each_in_window(w, od, oh, ow, [&](int64_t i) { g(ld(x, i)); }); };
    float v;
    if (Kind == 0) {
      v = edscw_pool_value(visit);
    } else if (Kind == 1) {
      v = idw_pool_value(visit);
    } else {
      const int64_t idx[5] = {nc / C, nc % C, od, oh, ow};
      v = ada_blend(ld(Beta, broadcast_offset(beta_dims, idx)), edscw_pool_value(visit), soft_pool_value(visit, 1.0f));
    }
    st(Y, e, v);
  }
}

// NaN-keeping clip to [0, 1] (torch.clamp's rule)
__device__ __forceinline__ float unpool_clip01(float m) {
  return m != m ? m : (m < 0.0f ? 0.0f : (m > 1.0f ? 1.0f : m));
}

// AdaUnpool: Y = A(X Beta) clip(MaskEdscw) + A(X (1 - Beta)) clip(MaskEm), A area
// interpolation in -> out (out >= in); per output the sum over its one or two cells per
// axis of w X_c t_c, t_c = Beta_c m_e + (1 - Beta_c) m_m kept between the two clipped masks
// where Beta_c is in [0, 1] (the CPU kernel's per-cell form: finite for finite input).
template <class T>
__device__ __forceinline__ void ada_unpool_kernel(const T* X, const T* Me, const T* Mm, const T* Beta, int64_t N,
                                                  int64_t C, const int64_t in[3], const int64_t out[3],
                                                  const int64_t me_nc[2], const int64_t mm_nc[2],
                                                  const int64_t beta_dims[5], T* Y) {
  const int64_t plane_out = out[0] * out[1] * out[2], plane_in = in[0] * in[1] * in[2];
  const int64_t total = N * C * plane_out;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t nc = e / plane_out, r = e - nc * plane_out, n = nc / C, c = nc % C;
    const int64_t o[3] = {r / (out[2] * out[1]), (r / out[2]) % out[1], r % out[2]};
    int64_t lo[3], cnt[3];
    float w = 1.0f;
    for (int d = 0; d < 3; ++d) {  // cells floor(o in / out) .. ceil((o + 1) in / out) - 1: one or two
      lo[d] = o[d] * in[d] / out[d];
      const int64_t hi = ((o[d] + 1) * in[d] + out[d] - 1) / out[d] - 1;
      cnt[d] = hi > lo[d] ? 2 : 1;
      if (cnt[d] == 2) w *= 0.5f;
    }
    const int64_t me_off = ((me_nc[0] == 1 ? 0 : n) * me_nc[1] + (me_nc[1] == 1 ? 0 : c)) * plane_out + r;
    const int64_t mm_off = ((mm_nc[0] == 1 ? 0 : n) * mm_nc[1] + (mm_nc[1] == 1 ? 0 : c)) * plane_out + r;
    const float me = unpool_clip01(ld(Me, me_off)), mm = unpool_clip01(ld(Mm, mm_off));
    const float tlo = me < mm ? me : mm, thi = me < mm ? mm : me;
    const T* x = X + nc * plane_in;
    float acc = 0.0f;
    for (int64_t a = 0; a < cnt[0]; ++a)
      for (int64_t b = 0; b < cnt[1]; ++b)
        for (int64_t cc = 0; cc < cnt[2]; ++cc) {
          const int64_t id = lo[0] + a, ih = lo[1] + b, iw = lo[2] + cc;
          const int64_t idx[5] = {n, c, id, ih, iw};
          const float xv = ld(x, (id * in[1] + ih) * in[2] + iw);
          const float bv = ld(Beta, broadcast_offset(beta_dims, idx));
          float t = bv * me + (1.0f - bv) * mm;
          if (bv >= 0.0f && bv <= 1.0f && t == t) t = t < tlo ? tlo : (t > thi ? thi : t);
          acc += xv * t * w;
        }
    st(Y, e, acc);
  }
}

}  // namespace

#define PX_BETA_DIMS {b_n, b_c, b_d, b_h, b_w}

extern "C" {

__global__ void poolexport_edscw_pool_f32(const float* X, POOLEXPORT_WINDOW_PARAMS, float* Y) {
  const int64_t none[5] = {1, 1, 1, 1, 1};
  ada_window_kernel<0>(X, X, make_window(PX_WINDOW_ARGS), N, C, none, Y);
}
__global__ void poolexport_edscw_pool_f16(const __half* X, POOLEXPORT_WINDOW_PARAMS, __half* Y) {
  const int64_t none[5] = {1, 1, 1, 1, 1};
  ada_window_kernel<0>(X, X, make_window(PX_WINDOW_ARGS), N, C, none, Y);
}
__global__ void poolexport_idw_pool_f32(const float* X, POOLEXPORT_WINDOW_PARAMS, float* Y) {
  const int64_t none[5] = {1, 1, 1, 1, 1};
  ada_window_kernel<1>(X, X, make_window(PX_WINDOW_ARGS), N, C, none, Y);
}
__global__ void poolexport_idw_pool_f16(const __half* X, POOLEXPORT_WINDOW_PARAMS, __half* Y) {
  const int64_t none[5] = {1, 1, 1, 1, 1};
  ada_window_kernel<1>(X, X, make_window(PX_WINDOW_ARGS), N, C, none, Y);
}
__global__ void poolexport_ada_pool_f32(const float* X, const float* Beta, POOLEXPORT_WINDOW_PARAMS,
                                        POOLEXPORT_BETA_PARAMS, float* Y) {
  const int64_t beta_dims[5] = PX_BETA_DIMS;
  ada_window_kernel<2>(X, Beta, make_window(PX_WINDOW_ARGS), N, C, beta_dims, Y);
}
__global__ void poolexport_ada_pool_f16(const __half* X, const __half* Beta, POOLEXPORT_WINDOW_PARAMS,
                                        POOLEXPORT_BETA_PARAMS, __half* Y) {
  const int64_t beta_dims[5] = PX_BETA_DIMS;
  ada_window_kernel<2>(X, Beta, make_window(PX_WINDOW_ARGS), N, C, beta_dims, Y);
}

#define PX_UNPOOL_BODY                                                                                    \
  const int64_t in[3] = {in_d, in_h, in_w}, out[3] = {out_d, out_h, out_w};                              \
  const int64_t me_nc[2] = {me_n, me_c}, mm_nc[2] = {mm_n, mm_c}, beta_dims[5] = PX_BETA_DIMS;             \
  ada_unpool_kernel(X, MaskEdscw, MaskEm, Beta, N, C, in, out, me_nc, mm_nc, beta_dims, Y)

__global__ void poolexport_ada_unpool_f32(const float* X, const float* MaskEdscw, const float* MaskEm,
                                          const float* Beta, POOLEXPORT_UNPOOL_PARAMS, POOLEXPORT_BETA_PARAMS,
                                          float* Y) {
  PX_UNPOOL_BODY;
}
__global__ void poolexport_ada_unpool_f16(const __half* X, const __half* MaskEdscw, const __half* MaskEm,
                                          const __half* Beta, POOLEXPORT_UNPOOL_PARAMS, POOLEXPORT_BETA_PARAMS,
                                          __half* Y) {
  PX_UNPOOL_BODY;
}
#undef PX_UNPOOL_BODY

__attribute__((visibility("default"))) int poolexport_cuda_launch_ada(int op, int dtype, const void* X,
                                                                      const void* Beta, void* Y, const int32_t* p,
                                                                      void* stream) {
  const int64_t total = (int64_t)p[0] * p[1] * p[5] * p[6] * p[7];
  if (total <= 0) return 0;
  dim3 grid(poolexport_launch_grid(total)), block(POOLEXPORT_BLOCK);
  cudaStream_t s = (cudaStream_t)stream;
#define PX_P p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11], p[12], p[13], p[14], p[15], \
             p[16], p[17], p[18], p[19]
#define PX_B p[20], p[21], p[22], p[23], p[24]
  if (op == 0 && dtype == 0)
    PX_LAUNCH(poolexport_edscw_pool_f32, grid, block, s)((const float*)X, PX_P, (float*)Y);
  else if (op == 0)
    PX_LAUNCH(poolexport_edscw_pool_f16, grid, block, s)((const __half*)X, PX_P, (__half*)Y);
  else if (op == 1 && dtype == 0)
    PX_LAUNCH(poolexport_idw_pool_f32, grid, block, s)((const float*)X, PX_P, (float*)Y);
  else if (op == 1)
    PX_LAUNCH(poolexport_idw_pool_f16, grid, block, s)((const __half*)X, PX_P, (__half*)Y);
  else if (dtype == 0)
    PX_LAUNCH(poolexport_ada_pool_f32, grid, block, s)((const float*)X, (const float*)Beta, PX_P, PX_B, (float*)Y);
  else
    PX_LAUNCH(poolexport_ada_pool_f16, grid, block, s)((const __half*)X, (const __half*)Beta, PX_P, PX_B, (__half*)Y);
#undef PX_P
  return (int)cudaGetLastError();
}

__attribute__((visibility("default"))) int poolexport_cuda_launch_ada_unpool(int dtype, const void* X,
                                                                             const void* MaskEdscw, const void* MaskEm,
                                                                             const void* Beta, void* Y,
                                                                             const int32_t* p, void* stream) {
  const int64_t total = (int64_t)p[0] * p[1] * p[5] * p[6] * p[7];
  if (total <= 0) return 0;
  dim3 grid(poolexport_launch_grid(total)), block(POOLEXPORT_BLOCK);
  cudaStream_t s = (cudaStream_t)stream;
#define PX_P p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11]
  if (dtype == 0)
    PX_LAUNCH(poolexport_ada_unpool_f32, grid, block, s)((const float*)X, (const float*)MaskEdscw,
                                                         (const float*)MaskEm, (const float*)Beta, PX_P,
                                                         p[12], p[13], p[14], p[15], p[16], (float*)Y);
  else
    PX_LAUNCH(poolexport_ada_unpool_f16, grid, block, s)((const __half*)X, (const __half*)MaskEdscw,
                                                         (const __half*)MaskEm, (const __half*)Beta, PX_P,
                                                         p[12], p[13], p[14], p[15], p[16], (__half*)Y);
#undef PX_P
#undef PX_B
  return (int)cudaGetLastError();
}

}  // extern "C"

#undef PX_BETA_DIMS
