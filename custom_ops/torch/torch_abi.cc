// The torch ops' C ABI (torch_abi.h) over the shared CPU kernels.
#include "torch_abi.h"

#include <exception>

#include "cpu_entry.h"
#include "thread_pool.h"

namespace {

using namespace poolexport;
using poolexport::cpu::half_t;

struct Pool {
  int threads;
  bool ok = true;
  template <class F>
  void operator()(int64_t n, int64_t cost, F&& f) {
    ok = torch_abi::ThreadPool::get().parallel_for(n, cost, threads, f) && ok;
  }
};

template <class T>
int window(cpu::Op op, const void* X, const void* dY, void* out, const int64_t* p, float beta, int64_t seed,
           int threads) {
  const Window3 w = window_from_params(p);
  const cpu::RowArgs args{w, beta, (uint32_t)(uint64_t)seed, (uint32_t)((uint64_t)seed >> 32)};
  Pool pool{threads};
  cpu::run_window(op, static_cast<const T*>(X), static_cast<const T*>(dY), static_cast<T*>(out), p[0], p[1], args, pool);
  return pool.ok ? 0 : 2;
}

template <class T>
int reduce(cpu::Op op, const void* X, const void* dY, void* out, const int64_t* dims, int32_t mask, float beta,
           int64_t seed, int threads) {
  const Reduce6 g = make_reduce6(dims, mask);
  const uint32_t lo = (uint32_t)(uint64_t)seed, hi = (uint32_t)((uint64_t)seed >> 32);
  Pool pool{threads};
  cpu::run_reduce(op, static_cast<const T*>(X), static_cast<const T*>(dY), static_cast<T*>(out), g, beta, lo, hi, pool);
  return pool.ok ? 0 : 2;
}

bool valid_op(int op, int dtype) { return op >= 0 && op <= 2 && (dtype == 0 || dtype == 1); }

}  // namespace

extern "C" {

__attribute__((visibility("default"))) int poolexport_torch_abi_version(void) { return 1; }

__attribute__((visibility("default"))) int poolexport_torch_window(int op, int dtype, const void* X, const void* dY,
                                                                   void* out, const int64_t* geom, float beta,
                                                                   int64_t seed, int threads) {
  if (!valid_op(op, dtype) || !geom) return 1;
  try {
    const cpu::Op kind = static_cast<cpu::Op>(op);
    return dtype == 0 ? window<float>(kind, X, dY, out, geom, beta, seed, threads)
                      : window<half_t>(kind, X, dY, out, geom, beta, seed, threads);
  } catch (const std::exception&) {
    return 2;
  }
}

__attribute__((visibility("default"))) int poolexport_torch_reduce(int op, int dtype, const void* X, const void* dY,
                                                                   void* out, const int64_t* dims, int32_t mask,
                                                                   float beta, int64_t seed, int threads) {
  if (!valid_op(op, dtype) || !dims) return 1;
  try {
    const cpu::Op kind = static_cast<cpu::Op>(op);
    return dtype == 0 ? reduce<float>(kind, X, dY, out, dims, mask, beta, seed, threads)
                      : reduce<half_t>(kind, X, dY, out, dims, mask, beta, seed, threads);
  } catch (const std::exception&) {
    return 2;
  }
}

// Which CPU path the kernels take now (POOLEXPORT_CPU_ISA caps it): "avx512", "avx2" or
// "portable"; and the shared-shift SoftPool's exp on that path, for tests that measure its
// error against float64 (arguments must lie in [-60, 0]).
__attribute__((visibility("default"))) const char* poolexport_cpu_isa(void) { return cpu::isa_name(cpu::cpu_isa()); }

__attribute__((visibility("default"))) void poolexport_cpu_exp_shifted(const float* t, float* out, int64_t n) {
  cpu::exp_shifted_n(cpu::cpu_isa(), t, out, n);
}

}  // extern "C"
