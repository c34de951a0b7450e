// The torch ops' CPU kernels, registered with torch's dispatcher from C++ through the
// stable C ABI (stable_abi.h), so a call costs what a torch-native op costs: no Python
// kernel, no ctypes. The schemas, fake kernels and autograd formulas stay in Python
// (poolexport/ops/_registry.py), defined once for all ops.
//
// Each kernel takes float32/float16 CPU tensors to the shared CPU kernels on torch's own
// intra-op thread pool (at::parallel_for, sized by torch.set_num_threads). Anything else
// (float64, bfloat16, a layout of more than 6 reduce groups, or the reference selected by
// POOLEXPORT_TORCH_KERNELS=reference / reference_kernels()) goes, with its stack untouched,
// to the op's pure-torch twin `poolexport::_reference_<name>`.
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "ada_cpu_backward.h"
#include "cpu_entry.h"
#include "poolexport/attributes.h"
#include "stable_abi.h"

namespace poolexport {
namespace stable {
namespace {

Api api;
thread_local bool reference_selected = false;

void check(AOTITorchError e, const char* what) {
  if (e) throw std::runtime_error(std::string("poolexport: torch's ") + what + " failed");
}

// ---------------------------------------------------------------- argument decoding
// The stack's inputs belong to the kernel (stableivalue_conversions.h: ToImpl steals
// tensor handles and frees lists and strings), so each is taken exactly once.
template <class V>
V bits(StableIValue v) {
  V r;
  std::memcpy(&r, &v, sizeof(V));
  return r;
}

StableIValue box(AtenTensorHandle h) {
  StableIValue v = 0;
  std::memcpy(&v, &h, sizeof(h));
  return v;
}

class Tensor {
 public:
  explicit Tensor(AtenTensorHandle h = nullptr) : h_(h) {}
  Tensor(Tensor&& o) noexcept : h_(o.release()) {}
  Tensor& operator=(Tensor&& o) noexcept {
    reset(o.release());
    return *this;
  }
  ~Tensor() { reset(nullptr); }
  AtenTensorHandle release() {
    AtenTensorHandle h = h_;
    h_ = nullptr;
    return h;
  }
  void reset(AtenTensorHandle h) {
    if (h_) api.delete_tensor(h_);
    h_ = h;
  }
  AtenTensorHandle get() const { return h_; }
  std::vector<int64_t> sizes() const { return sizes_of(h_); }
  void* data() const {
    void* p = nullptr;
    check(api.get_data_ptr(h_, &p), "data_ptr");
    return p;
  }
  static std::vector<int64_t> sizes_of(AtenTensorHandle h) {
    int64_t dim = 0;
    int64_t* s = nullptr;
    check(api.get_dim(h, &dim), "dim");
    check(api.get_sizes(h, &s), "sizes");
    return std::vector<int64_t>(s, s + dim);
  }
  static int32_t dtype_of(AtenTensorHandle h) {
    int32_t d = -1;
    check(api.get_dtype(h, &d), "dtype");
    return d;
  }

 private:
  AtenTensorHandle h_;
};

Tensor empty_like_device(const std::vector<int64_t>& shape, int32_t dtype, AtenTensorHandle like) {
  std::vector<int64_t> strides(shape.size());
  int64_t st = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = st;
    st *= std::max<int64_t>(shape[i], 1);
  }
  int32_t type = 0, index = 0;
  check(api.get_device_type(like, &type), "device_type");
  check(api.get_device_index(like, &index), "device_index");
  AtenTensorHandle out = nullptr;
  check(api.empty_strided((int64_t)shape.size(), shape.data(), strides.data(), dtype, type, index, &out), "empty");
  return Tensor(out);
}

Tensor contiguous(Tensor t) {
  bool yes = false;
  check(api.is_contiguous(t.get(), &yes), "is_contiguous");
  if (yes) return t;
  Tensor c = empty_like_device(t.sizes(), Tensor::dtype_of(t.get()), t.get());
  check(api.copy_(c.get(), t.get(), 0), "copy_");
  return c;
}

std::vector<int64_t> peek_ints(StableListHandle l) {
  size_t n = 0;
  check(api.list_size(l, &n), "list size");
  std::vector<int64_t> v(n);
  for (size_t i = 0; i < n; ++i) {
    StableIValue e = 0;
    check(api.list_get_item(l, i, &e), "list item");
    v[i] = bits<int64_t>(e);
  }
  return v;
}

std::vector<int64_t> take_ints(StableIValue v) {
  StableListHandle l = bits<StableListHandle>(v);
  std::vector<int64_t> r = peek_ints(l);
  api.delete_list(l);
  return r;
}

// int[]? at 2.10: nullptr, or a new'ed StableIValue holding the list
std::optional<std::vector<int64_t>> take_optional_ints(StableIValue v) {
  StableIValue* p = bits<StableIValue*>(v);
  if (!p) return std::nullopt;
  std::vector<int64_t> r = take_ints(*p);
  delete p;
  return r;
}

std::string take_string(StableIValue v) {
  StringHandle s = bits<StringHandle>(v);
  size_t n = 0;
  const char* data = nullptr;
  check(api.string_length(s, &n), "string length");
  check(api.string_c_str(s, &data), "string data");
  std::string r(data, n);
  api.delete_string(s);
  return r;
}

// ---------------------------------------------------------------- routing
bool reference_wanted() {
  if (reference_selected) return true;
  const char* env = std::getenv("POOLEXPORT_TORCH_KERNELS");
  return env && strcasecmp(env, "reference") == 0;
}

// float32 -> 0, float16 -> 1, else -1 (torch_abi.h's dtype codes)
int dtype_code(int32_t dtype) {
  if (dtype == api.dtype_float32()) return 0;
  if (dtype == api.dtype_float16()) return 1;
  return -1;
}

// Hands the untouched stack to the op's pure-torch twin; its result lands in stack[0].
void run_reference(const char* name, StableIValue* stack) {
  const std::string op = std::string("poolexport::_reference_") + name;
  check(api.call_dispatcher(op.c_str(), "", stack, kBuildVersion), op.c_str());
}

// The native kernels take X (and the incoming gradient) in float32 or float16, alike.
bool native(StableIValue* stack, bool backward) {
  if (reference_wanted()) return false;
  AtenTensorHandle x = bits<AtenTensorHandle>(stack[backward ? 1 : 0]);
  const int32_t dt = Tensor::dtype_of(x);
  if (dtype_code(dt) < 0) return false;
  return !backward || Tensor::dtype_of(bits<AtenTensorHandle>(stack[0])) == dt;
}

// at::parallel_for with the ThreadPool's chunking rule: about 2^15 units of `cost` per
// chunk; a range under one chunk runs on the calling thread.
struct TorchPool {
  bool ok = true;
  template <class F>
  void operator()(int64_t n, int64_t cost, F&& f) {
    if (n <= 0) return;
    const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, cost));
    struct Ctx {
      std::remove_reference_t<F>* f;
      std::atomic<bool> failed{false};
    } ctx{&f};
    ParallelFunc body = [](int64_t b, int64_t e, void* c) {
      auto* x = static_cast<Ctx*>(c);
      try {
        (*x->f)(b, e);
      } catch (...) {
        x->failed = true;
      }
    };
    if (n <= grain) body(0, n, &ctx);
    else check(api.parallel_for(0, n, grain, body, &ctx), "parallel_for");
    ok = ok && !ctx.failed;
  }
};

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument(msg); }

std::vector<int64_t> window_shape_check(const char* op, const Tensor& grad, const std::vector<int64_t>& expected) {
  std::vector<int64_t> got = grad.sizes();
  if (got != expected) fail(std::string(op) + ": the gradient's shape " + list_str(got) + " is not the output's " +
                            list_str(expected));
  return got;
}

// The op's own arguments after the window (or axes) ones, from stack[at]: beta for
// SoftPool; mode and seed for StochasticPool.
template <bool Stochastic>
void take_pool_args(StableIValue* at, const char* op, cpu::Op* kind, float* beta, uint64_t* seed) {
  *kind = cpu::Op::kSoft;
  *beta = 1.0f;
  *seed = 0;
  if (Stochastic) {
    const std::string mode = take_string(at[0]);
    bool sample = false;
    if (!parse_mode(mode, &sample)) fail(std::string(op) + ": mode must be 'expectation' or 'sample', got '" + mode + "'");
    *kind = sample ? cpu::Op::kSample : cpu::Op::kExpectation;
    *seed = bits<uint64_t>(at[1]);
  } else {
    *beta = (float)bits<double>(at[0]);
  }
}

// run(x, dy, out) with the tensors' float or half pointers (dy null for a forward); then the
// result goes to stack[0].
template <class Run>
void run_typed(const char* op, const Tensor& x, const Tensor* grad, Tensor out, StableIValue* stack, Run&& run) {
  TorchPool pool;
  if (dtype_code(Tensor::dtype_of(x.get())) == 0)
    run((const float*)x.data(), grad ? (const float*)grad->data() : nullptr, (float*)out.data(), pool);
  else
    run((const cpu::half_t*)x.data(), grad ? (const cpu::half_t*)grad->data() : nullptr, (cpu::half_t*)out.data(),
        pool);
  if (!pool.ok) throw std::runtime_error(std::string(op) + ": the native kernel failed (out of memory?)");
  stack[0] = box(out.release());
}

// ---------------------------------------------------------------- windowed ops
// One windowed op on checked-in attributes: resolves the window against X, checks the
// gradient's shape for a backward, runs the shared CPU kernel; the result goes to stack[0].
void run_window_op(const char* op, cpu::Op kind, Tensor x, Tensor* grad, WindowAttrs& attrs,
                   const std::string& auto_pad, float beta, uint64_t seed, StableIValue* stack) {
  attrs.validate(op, auto_pad);
  if (!attrs.error.empty()) fail(attrs.error);
  x = contiguous(std::move(x));
  const std::vector<int64_t> shape = x.sizes();
  Window3 w;
  std::vector<int64_t> out_shape;
  const std::string err = attrs.resolve(op, shape, &w, &out_shape);
  if (!err.empty()) fail(err);
  const int32_t dt = Tensor::dtype_of(x.get());
  if (grad) {
    window_shape_check(op, *grad, out_shape);
    *grad = contiguous(std::move(*grad));
  }
  const cpu::RowArgs args{w, beta, (uint32_t)seed, (uint32_t)(seed >> 32)};
  run_typed(op, x, grad, empty_like_device(grad ? shape : out_shape, dt, x.get()), stack,
            [&](auto* xp, auto* gp, auto* yp, TorchPool& pool) {
              cpu::run_window(kind, xp, gp, yp, shape[0], shape[1], args, pool);
            });
}

// soft_pool(X, kernel_shape, strides, pads, dilations, ceil_mode, auto_pad, beta)
// stochastic_pool(X, ..., auto_pad, mode, seed); the backward ops take grad first.
template <bool Stochastic, bool Backward>
void window_kernel(StableIValue* stack, uint64_t, uint64_t) {
  const char* op = Stochastic ? "StochasticPool" : "SoftPool";
  const char* name = Stochastic ? (Backward ? "stochastic_pool_backward" : "stochastic_pool")
                                : (Backward ? "soft_pool_backward" : "soft_pool");
  if (!native(stack, Backward)) return run_reference(name, stack);
  const int a = Backward ? 1 : 0;
  Tensor grad(Backward ? bits<AtenTensorHandle>(stack[0]) : nullptr);
  Tensor x(bits<AtenTensorHandle>(stack[a]));
  WindowAttrs attrs;
  attrs.kernel = take_ints(stack[a + 1]);
  attrs.strides = take_ints(stack[a + 2]);
  attrs.pads = take_ints(stack[a + 3]);
  attrs.dilations = take_ints(stack[a + 4]);
  attrs.ceil_mode = bits<bool>(stack[a + 5]);
  const std::string auto_pad = take_string(stack[a + 6]);
  cpu::Op kind;
  float beta;
  uint64_t seed;
  take_pool_args<Stochastic>(stack + a + 7, op, &kind, &beta, &seed);
  run_window_op(op, kind, std::move(x), Backward ? &grad : nullptr, attrs, auto_pad, beta, seed, stack);
}

// _window_pool_packed(X, window, beta, mode, seed): the eager inference path of the
// layers (poolexport/ops/_packed.py). A forward of SoftPool (mode 0) or StochasticPool
// (1 expectation, 2 sample) whose window arguments come packed in one int64 tensor that
// the caller builds once per layer: torch's Python binding converts one tensor far faster
// than four int lists and a string. Layout, for rank r (1 to 3):
//   [r, kernel_shape (r), strides (r), pads (2r), dilations (r), ceil_mode, auto_pad code]
// with auto_pad codes 0 NOTSET, 1 SAME_UPPER, 2 SAME_LOWER, 3 VALID.
constexpr const char* kAutoPadNames[] = {"NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"};

void packed_window_kernel(StableIValue* stack, uint64_t, uint64_t) {
  if (!native(stack, false)) return run_reference("_window_pool_packed", stack);
  Tensor x(bits<AtenTensorHandle>(stack[0]));
  Tensor window(bits<AtenTensorHandle>(stack[1]));
  const int64_t mode = bits<int64_t>(stack[3]);
  const char* op = mode == 0 ? "SoftPool" : "StochasticPool";
  if (mode < 0 || mode > 2)
    fail("_window_pool_packed: mode must be 0 (soft), 1 (expectation) or 2 (sample), got " + std::to_string(mode));
  const std::vector<int64_t> wshape = window.sizes();
  int32_t device = -1;
  check(api.get_device_type(window.get(), &device), "device_type");
  bool dense = false;
  check(api.is_contiguous(window.get(), &dense), "is_contiguous");
  if (Tensor::dtype_of(window.get()) != api.dtype_int64() || wshape.size() != 1 || device != api.device_type_cpu() ||
      !dense)
    fail("_window_pool_packed: window must be a contiguous 1-D int64 CPU tensor");
  const int64_t* v = static_cast<const int64_t*>(window.data());
  const int64_t n = wshape[0];
  const int64_t r = n > 0 ? v[0] : 0;
  if (r < 1 || r > 3 || n != 5 * r + 3) fail("_window_pool_packed: window must hold 5 * rank + 3 values for rank 1 to 3");
  WindowAttrs attrs;
  const int64_t* p = v + 1;
  attrs.kernel.assign(p, p + r), p += r;
  attrs.strides.assign(p, p + r), p += r;
  attrs.pads.assign(p, p + 2 * r), p += 2 * r;
  attrs.dilations.assign(p, p + r), p += r;
  attrs.ceil_mode = p[0] != 0;
  const std::string auto_pad = p[1] >= 0 && p[1] < 4 ? kAutoPadNames[p[1]] : "?";
  const cpu::Op kind = mode == 0 ? cpu::Op::kSoft : mode == 1 ? cpu::Op::kExpectation : cpu::Op::kSample;
  run_window_op(op, kind, std::move(x), nullptr, attrs, auto_pad, (float)bits<double>(stack[2]),
                bits<uint64_t>(stack[4]), stack);
}

// ---------------------------------------------------------------- reduce ops
// reduce_soft_pool(X, axes?, keepdims, beta); reduce_stochastic_pool(X, axes?, keepdims,
// mode, seed); the backward ops take grad first.
template <bool Stochastic, bool Backward>
void reduce_kernel(StableIValue* stack, uint64_t, uint64_t) {
  const char* op = Stochastic ? "ReduceStochasticPool" : "ReduceSoftPool";
  const char* name = Stochastic ? (Backward ? "reduce_stochastic_pool_backward" : "reduce_stochastic_pool")
                                : (Backward ? "reduce_soft_pool_backward" : "reduce_soft_pool");
  const int a = Backward ? 1 : 0;
  if (!native(stack, Backward)) return run_reference(name, stack);
  // more than 6 alternating reduced/kept groups: the reference handles any layout
  {
    ReduceAttrs peek;
    if (StableIValue* p = bits<StableIValue*>(stack[a + 1])) peek.axes = peek_ints(bits<StableListHandle>(*p));
    Reduce6 g;
    std::vector<int64_t> out_shape;
    bool too_many_groups = false;
    peek.resolve(op, Tensor::sizes_of(bits<AtenTensorHandle>(stack[a])), &g, &out_shape, &too_many_groups);
    if (too_many_groups) return run_reference(name, stack);
  }
  Tensor grad(Backward ? bits<AtenTensorHandle>(stack[0]) : nullptr);
  Tensor x(bits<AtenTensorHandle>(stack[a]));
  ReduceAttrs attrs;
  if (auto axes = take_optional_ints(stack[a + 1])) attrs.axes = *axes;
  attrs.keepdims = bits<bool>(stack[a + 2]);
  cpu::Op kind;
  float beta;
  uint64_t seed;
  take_pool_args<Stochastic>(stack + a + 3, op, &kind, &beta, &seed);
  x = contiguous(std::move(x));
  const std::vector<int64_t> shape = x.sizes();
  Reduce6 g;
  std::vector<int64_t> out_shape;
  const std::string err = attrs.resolve(op, shape, &g, &out_shape);
  if (!err.empty()) fail(err);
  const int32_t dt = Tensor::dtype_of(x.get());
  if (Backward) {
    window_shape_check(op, grad, out_shape);
    grad = contiguous(std::move(grad));
  }
  run_typed(op, x, Backward ? &grad : nullptr, empty_like_device(Backward ? shape : out_shape, dt, x.get()), stack,
            [&](auto* xp, auto* gp, auto* yp, TorchPool& pool) {
              cpu::run_reduce(kind, xp, gp, yp, g, beta, (uint32_t)seed, (uint32_t)(seed >> 32), pool);
            });
}

// ---------------------------------------------------------------- the adaPool family
// edscw_pool(X, kernel_shape, strides, pads, dilations, ceil_mode, auto_pad), idw_pool(...),
// ada_pool(X, Beta, ...); the backward ops take grad first, and ada_pool_backward returns
// (dX, dBeta). Beta must have X's dtype and lie on the CPU for the native kernel (else the
// reference takes the call); it broadcasts to Y = (N, C, *out) by numpy rules.
template <AdaKind Kind, bool Backward>
void ada_kernel(StableIValue* stack, uint64_t, uint64_t) {
  constexpr bool kBeta = Kind == AdaKind::kAda;
  const char* op = Kind == AdaKind::kEdscw ? "EdscwPool" : (Kind == AdaKind::kIdw ? "IdwPool" : "AdaPool");
  const char* name = Kind == AdaKind::kEdscw ? (Backward ? "edscw_pool_backward" : "edscw_pool")
                     : Kind == AdaKind::kIdw ? (Backward ? "idw_pool_backward" : "idw_pool")
                                             : (Backward ? "ada_pool_backward" : "ada_pool");
  const int a = Backward ? 1 : 0;
  if (!native(stack, Backward)) return run_reference(name, stack);
  if (kBeta) {
    AtenTensorHandle b = bits<AtenTensorHandle>(stack[a + 1]);
    int32_t device = -1;
    check(api.get_device_type(b, &device), "device_type");
    if (Tensor::dtype_of(b) != Tensor::dtype_of(bits<AtenTensorHandle>(stack[a])) || device != api.device_type_cpu())
      return run_reference(name, stack);
  }
  Tensor grad(Backward ? bits<AtenTensorHandle>(stack[0]) : nullptr);
  Tensor x(bits<AtenTensorHandle>(stack[a]));
  Tensor beta(kBeta ? bits<AtenTensorHandle>(stack[a + 1]) : nullptr);
  const int at = a + 1 + (kBeta ? 1 : 0);
  WindowAttrs attrs;
  attrs.kernel = take_ints(stack[at]);
  attrs.strides = take_ints(stack[at + 1]);
  attrs.pads = take_ints(stack[at + 2]);
  attrs.dilations = take_ints(stack[at + 3]);
  attrs.ceil_mode = bits<bool>(stack[at + 4]);
  const std::string auto_pad = take_string(stack[at + 5]);
  attrs.validate(op, auto_pad);
  if (!attrs.error.empty()) fail(attrs.error);
  x = contiguous(std::move(x));
  const std::vector<int64_t> shape = x.sizes();
  Window3 w;
  std::vector<int64_t> out_shape, bshape, bstrides;
  const std::string err = attrs.resolve(op, shape, &w, &out_shape);
  if (!err.empty()) fail(err);
  int64_t beta_numel = 0;
  if (kBeta) {
    beta = contiguous(std::move(beta));
    bshape = beta.sizes();
    const std::string msg = beta_strides(op, bshape, out_shape, &bstrides);
    if (!msg.empty()) fail(msg);
    beta_numel = 1;
    for (int64_t d : bshape) beta_numel *= d;
  }
  if (Backward) {
    window_shape_check(op, grad, out_shape);
    grad = contiguous(std::move(grad));
  }
  const int32_t dt = Tensor::dtype_of(x.get());
  Tensor out = empty_like_device(Backward ? shape : out_shape, dt, x.get());
  Tensor dbeta = Backward && kBeta ? empty_like_device(bshape, dt, x.get()) : Tensor();
  TorchPool pool;
  auto run = [&](auto* tag) {
    using S = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    cpu::run_ada<Kind>(static_cast<const S*>(x.data()), kBeta ? static_cast<const S*>(beta.data()) : nullptr, bstrides,
                       beta_numel, Backward ? static_cast<const S*>(grad.data()) : nullptr, static_cast<S*>(out.data()),
                       Backward && kBeta ? static_cast<S*>(dbeta.data()) : nullptr, out_shape, w, pool);
  };
  if (dtype_code(dt) == 0) run(static_cast<float*>(nullptr));
  else run(static_cast<cpu::half_t*>(nullptr));
  if (!pool.ok) throw std::runtime_error(std::string(op) + ": the native kernel failed (out of memory?)");
  stack[0] = box(out.release());
  if (Backward && kBeta) stack[1] = box(dbeta.release());
}

// ---------------------------------------------------------------- seed tensors
// The stochastic ops' .tensor_seed overloads: the seed comes as a one-element int64 CPU
// tensor (drawn inside a compiled graph), read here; then the int overload's kernel runs
// on the same stack, the seed in place of the tensor.
int64_t take_seed_tensor(StableIValue v, const char* op) {
  Tensor seed(bits<AtenTensorHandle>(v));
  const std::vector<int64_t> shape = seed.sizes();
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  int32_t device = -1;
  check(api.get_device_type(seed.get(), &device), "device_type");
  if (Tensor::dtype_of(seed.get()) != api.dtype_int64() || numel != 1 || device != api.device_type_cpu())
    fail(std::string(op) + ": seed must be a one-element int64 CPU tensor");
  return *static_cast<const int64_t*>(seed.data());
}

// SeedAt: the seed's position on the stack (after X, the window or axes arguments and mode)
template <BoxedKernel IntSeedKernel, int SeedAt, bool Reduce>
void tensor_seed_kernel(StableIValue* stack, uint64_t num_args, uint64_t num_outputs) {
  const int64_t seed = take_seed_tensor(stack[SeedAt], Reduce ? "ReduceStochasticPool" : "StochasticPool");
  std::memcpy(&stack[SeedAt], &seed, sizeof(seed));
  IntSeedKernel(stack, num_args, num_outputs);
}

// ---------------------------------------------------------------- registration
template <class F>
bool resolve_one(void* lib, const char* symbol, F* slot, std::string* missing) {
  *slot = reinterpret_cast<F>(dlsym(lib, symbol));
  if (!*slot) *missing += std::string(missing->empty() ? "" : ", ") + symbol;
  return *slot != nullptr;
}

std::string resolve(void* lib) {
  std::string missing;
  resolve_one(lib, "aoti_torch_library_init_impl", &api.library_init_impl, &missing);
  resolve_one(lib, "torch_library_impl", &api.library_impl, &missing);
  resolve_one(lib, "torch_call_dispatcher", &api.call_dispatcher, &missing);
  resolve_one(lib, "aoti_torch_get_data_ptr", &api.get_data_ptr, &missing);
  resolve_one(lib, "aoti_torch_get_dim", &api.get_dim, &missing);
  resolve_one(lib, "aoti_torch_get_sizes", &api.get_sizes, &missing);
  resolve_one(lib, "aoti_torch_get_dtype", &api.get_dtype, &missing);
  resolve_one(lib, "aoti_torch_get_device_type", &api.get_device_type, &missing);
  resolve_one(lib, "aoti_torch_get_device_index", &api.get_device_index, &missing);
  resolve_one(lib, "aoti_torch_is_contiguous", &api.is_contiguous, &missing);
  resolve_one(lib, "aoti_torch_empty_strided", &api.empty_strided, &missing);
  resolve_one(lib, "aoti_torch_copy_", &api.copy_, &missing);
  resolve_one(lib, "aoti_torch_delete_tensor_object", &api.delete_tensor, &missing);
  resolve_one(lib, "aoti_torch_dtype_float32", &api.dtype_float32, &missing);
  resolve_one(lib, "aoti_torch_dtype_float16", &api.dtype_float16, &missing);
  resolve_one(lib, "aoti_torch_dtype_int64", &api.dtype_int64, &missing);
  resolve_one(lib, "aoti_torch_device_type_cpu", &api.device_type_cpu, &missing);
  resolve_one(lib, "torch_list_size", &api.list_size, &missing);
  resolve_one(lib, "torch_list_get_item", &api.list_get_item, &missing);
  resolve_one(lib, "torch_delete_list", &api.delete_list, &missing);
  resolve_one(lib, "torch_string_length", &api.string_length, &missing);
  resolve_one(lib, "torch_string_c_str", &api.string_c_str, &missing);
  resolve_one(lib, "torch_delete_string", &api.delete_string, &missing);
  resolve_one(lib, "torch_parallel_for", &api.parallel_for, &missing);
  resolve_one(lib, "torch_get_num_threads", &api.get_num_threads, &missing);
  return missing;
}

struct Kernel {
  const char* name;
  BoxedKernel fn;
};

const Kernel kKernels[] = {
    {"soft_pool", window_kernel<false, false>},
    {"soft_pool_backward", window_kernel<false, true>},
    {"stochastic_pool", window_kernel<true, false>},
    {"stochastic_pool_backward", window_kernel<true, true>},
    {"reduce_soft_pool", reduce_kernel<false, false>},
    {"reduce_soft_pool_backward", reduce_kernel<false, true>},
    {"reduce_stochastic_pool", reduce_kernel<true, false>},
    {"reduce_stochastic_pool_backward", reduce_kernel<true, true>},
    {"_window_pool_packed", packed_window_kernel},
    {"edscw_pool", ada_kernel<AdaKind::kEdscw, false>},
    {"edscw_pool_backward", ada_kernel<AdaKind::kEdscw, true>},
    {"idw_pool", ada_kernel<AdaKind::kIdw, false>},
    {"idw_pool_backward", ada_kernel<AdaKind::kIdw, true>},
    {"ada_pool", ada_kernel<AdaKind::kAda, false>},
    {"ada_pool_backward", ada_kernel<AdaKind::kAda, true>},
    {"stochastic_pool.tensor_seed", tensor_seed_kernel<window_kernel<true, false>, 8, false>},
    {"stochastic_pool_backward.tensor_seed", tensor_seed_kernel<window_kernel<true, true>, 9, false>},
    {"reduce_stochastic_pool.tensor_seed", tensor_seed_kernel<reduce_kernel<true, false>, 4, true>},
    {"reduce_stochastic_pool_backward.tensor_seed", tensor_seed_kernel<reduce_kernel<true, true>, 5, true>},
};

void set_error(char* err, size_t len, const std::string& msg) {
  if (err && len) {
    std::strncpy(err, msg.c_str(), len - 1);
    err[len - 1] = '\0';
  }
}

}  // namespace
}  // namespace stable
}  // namespace poolexport

extern "C" {

// Registers the CPU kernels of every op in kKernels with the dispatcher of the torch
// whose libtorch_cpu.so (already loaded by `import torch`) is at `libtorch_cpu`.
// Returns 0, or 1 with a message in err (not loaded, or a torch older than 2.10). Once
// registered, later calls return 0 and do nothing.
__attribute__((visibility("default"))) int poolexport_torch_register_cpu(const char* libtorch_cpu, char* err,
                                                                         size_t err_len) {
  using namespace poolexport::stable;
  static bool registered = false;
  if (registered) return 0;
  void* lib = dlopen(libtorch_cpu, RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
  if (!lib) {
    set_error(err, err_len, std::string("libtorch_cpu is not loaded: ") + dlerror());
    return 1;
  }
  const std::string missing = resolve(lib);
  if (!missing.empty()) {
    set_error(err, err_len, "this torch lacks the stable ABI functions " + missing + " (torch >= 2.10 has them)");
    return 1;
  }
  TorchLibraryHandle impl = nullptr;  // kept for the life of the process: the kernels stay registered
  if (api.library_init_impl("poolexport", "CPU", __FILE__, __LINE__, &impl)) {
    set_error(err, err_len, "torch refused a poolexport CPU library fragment");
    return 1;
  }
  for (const Kernel& k : kKernels) {
    if (api.library_impl(impl, k.name, k.fn, kBuildVersion)) {
      set_error(err, err_len, std::string("torch refused the CPU kernel of poolexport::") + k.name);
      return 1;
    }
  }
  registered = true;
  return 0;
}

// reference_kernels(): this thread's choice of the pure-torch twins; returns the old one
__attribute__((visibility("default"))) int poolexport_torch_select_reference(int enabled) {
  const bool old = poolexport::stable::reference_selected;
  poolexport::stable::reference_selected = enabled != 0;
  return old;
}

}  // extern "C"
