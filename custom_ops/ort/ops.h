// The four poolexport ops as ONNX Runtime lite custom-op structs: the constructor reads
// and validates attributes once; a typed Compute runs the CPU kernels on ORT's thread
// pool, or (Cuda = true) launches the shared CUDA kernels on the stream ORT gives.
#pragma once

#include <string>
#include <vector>

#include "attrs.h"
#include "cpu_kernels.h"
#include "onnxruntime_lite_custom_op.h"
#ifdef POOLEXPORT_WITH_CUDA
#include "../cuda/launch.h"
#endif

namespace poolexport {

template <class T>
struct Storage {
  using type = float;
};
template <>
struct Storage<Ort::Float16_t> {
  using type = uint16_t;
};

inline Ort::Status invalid(const std::string& msg) { return Ort::Status(msg.c_str(), ORT_INVALID_ARGUMENT); }

// Runs f(begin, end) over [0, n) on ORT's intra-op pool in chunks of roughly `grain`
// work units; serially when small or when the pool is unavailable.
template <class F>
void parallel_for(OrtKernelContext* ctx, int64_t n, int64_t cost_per_item, F&& f) {
  if (n <= 0) return;
  const int64_t grain = 1 << 15;
  int64_t per = std::max<int64_t>(1, grain / std::max<int64_t>(1, cost_per_item));
  int64_t chunks = (n + per - 1) / per;
  if (chunks > 1024) {
    chunks = 1024;
    per = (n + chunks - 1) / chunks;
    chunks = (n + per - 1) / per;
  }
  if (chunks <= 1) {
    f(int64_t{0}, n);
    return;
  }
  struct Job {
    F* f;
    int64_t n, per;
  } job{&f, n, per};
  auto fn = [](void* data, size_t i) {
    Job* j = static_cast<Job*>(data);
    int64_t b = (int64_t)i * j->per;
    (*j->f)(b, std::min(j->n, b + j->per));
  };
  OrtStatus* st = Ort::GetApi().KernelContext_ParallelFor(ctx, fn, (size_t)chunks, 0, &job);
  if (st) {  // no pool (or an older runtime): do it here
    Ort::GetApi().ReleaseStatus(st);
    f(int64_t{0}, n);
  }
}

// parallel_for on ORT's pool as the pfor of the shared whole-tensor CPU forwards
inline auto ort_pfor(OrtKernelContext* ctx) {
  return [ctx](int64_t n, int64_t cost, auto&& f) { parallel_for(ctx, n, cost, std::forward<decltype(f)>(f)); };
}

inline int64_t numel(const std::vector<int64_t>& s) {
  int64_t n = 1;
  for (auto v : s) n *= v;
  return n;
}

#ifdef POOLEXPORT_WITH_CUDA
inline std::string fits_int32(const std::string& op, const std::vector<int64_t>& in, const std::vector<int64_t>& out) {
  if (numel(in) > INT32_MAX || numel(out) > INT32_MAX)
    return op + ": the CUDA kernels take int32 sizes; the tensor has more than 2^31-1 elements";
  return "";
}
#endif

// A CUDA kernel refuses to run, with the one-line reason, when the driver is older than
// the library's CUDA runtime: found when the session creates the kernel, reported when it runs.
inline void cuda_check(const std::string& op, bool cuda, std::string* error) {
#ifdef POOLEXPORT_WITH_CUDA
  if (const char* why = cuda && error->empty() ? poolexport_cuda_version_error() : nullptr) *error = op + ": " + why;
#else
  (void)op, (void)cuda, (void)error;
#endif
}

// The pool's own attributes (not its window's): beta for SoftPool, mode and seed for
// stochastic pooling; read once per kernel with the schema's defaults.
template <bool Stochastic>
struct PoolAttrs {
  float beta = 1.0f;
  bool sample = false;
  int64_t seed = 0;

  void read(const OrtKernelInfo* info, const std::string& op, std::string* error) {
    if (!Stochastic) {
      beta = scalar_attr<float>(info, "beta", 1.0f);
      return;
    }
    std::string mode = string_attr(info, "mode", "expectation");
    if (!parse_mode(mode, &sample) && error->empty())
      *error = op + ": mode must be 'expectation' or 'sample', got '" + mode + "'";
    seed = scalar_attr<int64_t>(info, "seed", 0);
    // a tensorrt-target file carries the seed as two int32 words (TensorRT's parser
    // narrows INT attributes); read them so that file gives the same picks here
    const int64_t absent = INT64_MIN, hi = scalar_attr<int64_t>(info, "seed_hi", absent);
    if (hi != absent) seed = (int64_t)((uint64_t)hi << 32 | (uint32_t)scalar_attr<int64_t>(info, "seed_lo", 0));
  }
  // the Philox key: the seed as two's-complement 64 bits, split in halves
  uint32_t seed_lo() const { return (uint32_t)(uint64_t)seed; }
  uint32_t seed_hi() const { return (uint32_t)((uint64_t)seed >> 32); }
  cpu::Op kind() const { return !Stochastic ? cpu::Op::kSoft : (sample ? cpu::Op::kSample : cpu::Op::kExpectation); }
};

// ------------------------------------------------------------------ windowed ops
template <class T, bool Cuda, bool Stochastic>
struct WindowedOp {
  std::string op = Stochastic ? "StochasticPool" : "SoftPool";
  WindowAttrs wa;
  PoolAttrs<Stochastic> pa;
  std::string error;

  WindowedOp(const OrtApi*, const OrtKernelInfo* info) {
    try {
      read_window_attrs(info, op, &wa);
      error = wa.error;
      pa.read(info, op, &error);
    } catch (const std::exception& e) {
      error = op + ": " + e.what();
    }
    cuda_check(op, Cuda, &error);
  }

  Ort::Status Compute(OrtKernelContext* ctx, const Ort::Custom::Tensor<T>& X, Ort::Custom::Tensor<T>& Y) {
    try {
      if (!error.empty()) return invalid(error);
      std::vector<int64_t> shape = X.Shape(), out_shape;
      Window3 w;
      std::string msg = wa.resolve(op, shape, &w, &out_shape);
      if (!msg.empty()) return invalid(msg);
      using S = typename Storage<T>::type;
      S* y = reinterpret_cast<S*>(Y.Allocate(out_shape));
      if (numel(out_shape) == 0) return Ort::Status{nullptr};
      const S* x = reinterpret_cast<const S*>(X.Data());
      const float beta = pa.beta;
      const uint32_t lo = pa.seed_lo(), hi = pa.seed_hi();
      if (Cuda) {
#ifdef POOLEXPORT_WITH_CUDA
        msg = fits_int32(op, shape, out_shape);
        if (!msg.empty()) return invalid(msg);
        int32_t p[24];
        window_to_params(shape[0], shape[1], w, p);
        p[20] = Stochastic ? (int32_t)pa.sample : float_to_bits(beta);
        p[21] = (int32_t)lo;
        p[22] = (int32_t)hi;
        void* stream = Ort::KernelContext(ctx).GetGPUComputeStream();
        int rc = poolexport_cuda_launch_window(Stochastic ? 1 : 0, std::is_same<T, float>::value ? 0 : 1, x, y, p, stream);
        if (rc) return Ort::Status((op + ": CUDA launch failed: " + poolexport_cuda_error_string(rc)).c_str(), ORT_FAIL);
        return Ort::Status{nullptr};
#else
        return invalid(op + ": built without CUDA");
#endif
      }
      cpu::RowArgs args{w, beta, lo, hi};
      cpu::window_forward(pa.kind(), x, y, shape[0], shape[1], args, ort_pfor(ctx));
      return Ort::Status{nullptr};
    } catch (const std::exception& e) {
      return Ort::Status((op + ": " + e.what()).c_str(), ORT_FAIL);
    }
  }
};

// ------------------------------------------------------------------ reduce ops
template <class T, bool Cuda, bool Stochastic>
struct ReduceOp {
  std::string op = Stochastic ? "ReduceStochasticPool" : "ReduceSoftPool";
  ReduceAttrs ra;
  PoolAttrs<Stochastic> pa;
  std::string error;

  ReduceOp(const OrtApi*, const OrtKernelInfo* info) {
    try {
      read_reduce_attrs(info, op, &ra);
      error = ra.error;
      pa.read(info, op, &error);
    } catch (const std::exception& e) {
      error = op + ": " + e.what();
    }
    cuda_check(op, Cuda, &error);
  }

  Ort::Status Compute(OrtKernelContext* ctx, const Ort::Custom::Tensor<T>& X, Ort::Custom::Tensor<T>& Y) {
    try {
      if (!error.empty()) return invalid(error);
      std::vector<int64_t> shape = X.Shape(), out_shape;
      Reduce6 g;
      std::string msg = ra.resolve(op, shape, &g, &out_shape);
      if (!msg.empty()) return invalid(msg);
      using S = typename Storage<T>::type;
      S* y = reinterpret_cast<S*>(Y.Allocate(out_shape));
      if (numel(out_shape) == 0) return Ort::Status{nullptr};
      const S* x = reinterpret_cast<const S*>(X.Data());
      const float beta = pa.beta;
      const uint32_t lo = pa.seed_lo(), hi = pa.seed_hi();
      if (Cuda) {
#ifdef POOLEXPORT_WITH_CUDA
        msg = fits_int32(op, shape, out_shape);
        if (!msg.empty()) return invalid(msg);
        int32_t p[12];
        p[0] = (int32_t)shape.size();
        for (int i = 0; i < 6; ++i) p[1 + i] = (int32_t)g.dim[i];
        p[7] = g.mask;
        p[8] = Stochastic ? (int32_t)pa.sample : float_to_bits(beta);
        p[9] = (int32_t)lo;
        p[10] = (int32_t)hi;
        void* stream = Ort::KernelContext(ctx).GetGPUComputeStream();
        int rc = poolexport_cuda_launch_reduce(Stochastic ? 1 : 0, std::is_same<T, float>::value ? 0 : 1, x, y, p, stream);
        if (rc) return Ort::Status((op + ": CUDA launch failed: " + poolexport_cuda_error_string(rc)).c_str(), ORT_FAIL);
        return Ort::Status{nullptr};
#else
        return invalid(op + ": built without CUDA");
#endif
      }
      cpu::reduce_forward(pa.kind(), x, y, g, beta, lo, hi, ort_pfor(ctx));
      return Ort::Status{nullptr};
    } catch (const std::exception& e) {
      return Ort::Status((op + ": " + e.what()).c_str(), ORT_FAIL);
    }
  }
};

}  // namespace poolexport
