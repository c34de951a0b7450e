// The torch ops' C ABI (torch_abi.h) over the shared CPU kernels.
#include "torch_abi.h"

#include <exception>

#include "ada_cpu_backward.h"
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

template <AdaKind Kind, class S>
int ada(const void* X, const void* Beta, const int64_t* beta_shape, int beta_dim, const void* dY, void* out,
        void* dbeta, const int64_t* p, int rank, int threads) {
  const Window3 w = window_from_params(p);
  std::vector<int64_t> out_shape{p[0], p[1]}, bstrides;
  for (int i = 3 - rank; i < 3; ++i) out_shape.push_back(w.out[i]);
  int64_t beta_numel = 0;
  if (Kind == AdaKind::kAda) {
    const std::vector<int64_t> bshape(beta_shape, beta_shape + beta_dim);
    if (!broadcast_strides(bshape, out_shape, &bstrides)) return 1;
    beta_numel = 1;
    for (int64_t d : bshape) beta_numel *= d;
  }
  Pool pool{threads};
  cpu::run_ada<Kind>(static_cast<const S*>(X), static_cast<const S*>(Beta), bstrides, beta_numel,
                     static_cast<const S*>(dY), static_cast<S*>(out), static_cast<S*>(dbeta), out_shape, w, pool);
  return pool.ok ? 0 : 2;
}

template <class S>
int ada_typed(int op, const void* X, const void* Beta, const int64_t* beta_shape, int beta_dim, const void* dY,
              void* out, void* dbeta, const int64_t* p, int rank, int threads) {
  if (op == 0) return ada<AdaKind::kEdscw, S>(X, Beta, beta_shape, beta_dim, dY, out, dbeta, p, rank, threads);
  if (op == 1) return ada<AdaKind::kIdw, S>(X, Beta, beta_shape, beta_dim, dY, out, dbeta, p, rank, threads);
  return ada<AdaKind::kAda, S>(X, Beta, beta_shape, beta_dim, dY, out, dbeta, p, rank, threads);
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

__attribute__((visibility("default"))) int poolexport_torch_ada(int op, int dtype, const void* X, const void* Beta,
                                                                const int64_t* beta_shape, int beta_dim, const void* dY,
                                                                void* out, void* dbeta, const int64_t* geom, int rank,
                                                                int threads) {
  if (op < 0 || op > 2 || (dtype != 0 && dtype != 1) || !geom || rank < 1 || rank > 3) return 1;
  if (op == 2 && (!Beta || beta_dim < 0 || (beta_dim > 0 && !beta_shape) || (dY && !dbeta))) return 1;
  try {
    return dtype == 0 ? ada_typed<float>(op, X, Beta, beta_shape, beta_dim, dY, out, dbeta, geom, rank, threads)
                      : ada_typed<half_t>(op, X, Beta, beta_shape, beta_dim, dY, out, dbeta, geom, rank, threads);
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
