// The part of LibTorch's stable C ABI that the torch ops' compiled registration uses,
// declared here and resolved at run time with dlsym from the libtorch_cpu.so that
// `import torch` already loaded. The library thus links nothing of torch, builds without
// torch installed, and one wheel works with every torch that has these functions
// (2.10 and later); with an older torch, resolve() fails and the ops stay on their
// Python registration.
//
// Signatures follow torch/csrc/inductor/aoti_torch/c/shim.h and torch/csrc/stable/c/shim.h
// of torch 2.13 (the headers shipped in the torch wheel, torch/include). Argument
// conventions (StableIValue encodings, who frees what) follow
// torch/csrc/stable/stableivalue_conversions.h at TORCH_FEATURE_VERSION 2.10: every
// kernel is registered with kBuildVersion, so torch converts its arguments the 2.10 way
// on any later torch.
#pragma once

#include <cstdint>

namespace poolexport {
namespace stable {

using AOTITorchError = int32_t;  // 0: success
using StableIValue = uint64_t;
struct AtenTensorOpaque;
using AtenTensorHandle = AtenTensorOpaque*;
struct TorchLibraryOpaque;
using TorchLibraryHandle = TorchLibraryOpaque*;
struct StableListOpaque;
using StableListHandle = StableListOpaque*;
struct StringOpaque;
using StringHandle = StringOpaque*;
using BoxedKernel = void (*)(StableIValue* stack, uint64_t num_args, uint64_t num_outputs);
using ParallelFunc = void (*)(int64_t begin, int64_t end, void* ctx);

// TORCH_VERSION_2_10_0 of torch/csrc/stable/version.h: major << 56 | minor << 48
constexpr uint64_t kBuildVersion = (uint64_t(2) << 56) | (uint64_t(10) << 48);

struct Api {
  // torch::Library (shim.h): IMPL fragments and boxed kernels
  AOTITorchError (*library_init_impl)(const char* ns, const char* key, const char* file, uint32_t line,
                                      TorchLibraryHandle* ret);
  AOTITorchError (*library_impl)(TorchLibraryHandle lib, const char* name, BoxedKernel fn, uint64_t version);
  AOTITorchError (*call_dispatcher)(const char* op, const char* overload, StableIValue* stack, uint64_t version);
  // tensors
  AOTITorchError (*get_data_ptr)(AtenTensorHandle t, void** ret);
  AOTITorchError (*get_dim)(AtenTensorHandle t, int64_t* ret);
  AOTITorchError (*get_sizes)(AtenTensorHandle t, int64_t** ret);
  AOTITorchError (*get_dtype)(AtenTensorHandle t, int32_t* ret);
  AOTITorchError (*get_device_type)(AtenTensorHandle t, int32_t* ret);
  AOTITorchError (*get_device_index)(AtenTensorHandle t, int32_t* ret);
  AOTITorchError (*is_contiguous)(AtenTensorHandle t, bool* ret);
  AOTITorchError (*empty_strided)(int64_t ndim, const int64_t* sizes, const int64_t* strides, int32_t dtype,
                                  int32_t device_type, int32_t device_index, AtenTensorHandle* ret);
  AOTITorchError (*copy_)(AtenTensorHandle self, AtenTensorHandle src, int32_t non_blocking);
  AOTITorchError (*delete_tensor)(AtenTensorHandle t);
  int32_t (*dtype_float32)();
  int32_t (*dtype_float16)();
  int32_t (*dtype_int64)();
  int32_t (*device_type_cpu)();
  // int[] and str arguments (stable/c/shim.h, 2.10)
  AOTITorchError (*list_size)(StableListHandle l, size_t* ret);
  AOTITorchError (*list_get_item)(StableListHandle l, size_t i, StableIValue* ret);
  AOTITorchError (*delete_list)(StableListHandle l);
  AOTITorchError (*string_length)(StringHandle s, size_t* ret);
  AOTITorchError (*string_c_str)(StringHandle s, const char** ret);
  AOTITorchError (*delete_string)(StringHandle s);
  // at::parallel_for and at::get_num_threads (stable/c/shim.h, 2.10): torch's own
  // intra-op pool, sized by torch.set_num_threads
  AOTITorchError (*parallel_for)(int64_t begin, int64_t end, int64_t grain, ParallelFunc f, void* ctx);
  AOTITorchError (*get_num_threads)(uint32_t* ret);
};

}  // namespace stable
}  // namespace poolexport
