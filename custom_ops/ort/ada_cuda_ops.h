// The adaPool family on ONNX Runtime's CUDA provider: EdscwPool, IdwPool, AdaPool and
// AdaUnpool as lite custom ops that check shapes on the host with the CPU kernels' rules
// and messages (ada_kernels.h, ada_unpool_kernels.h), then launch the shared CUDA kernels
// (custom_ops/cuda/ada_kernels.cu) on the stream ORT gives. Built with CUDA only.
#pragma once

#ifdef POOLEXPORT_WITH_CUDA

#include <string>
#include <type_traits>
#include <vector>

#include "ada_kernels.h"
#include "ada_unpool_kernels.h"
#include "ops.h"
#include "poolexport/kernel_abi.h"

namespace poolexport {

// A broadcast operand's shape in the 5-D view of a rank 3-5 target (kernel_abi.h's rule)
inline void broadcast_dims5(const std::vector<int64_t>& operand, size_t target_rank, int32_t* dims5) {
  poolexport_broadcast_dims5(operand.data(), (int)operand.size(), (int)target_rank, dims5);
}

inline Ort::Status cuda_status(const std::string& op, int rc) {
  if (!rc) return Ort::Status{nullptr};
  return Ort::Status((op + ": CUDA launch failed: " + poolexport_cuda_error_string(rc)).c_str(), ORT_FAIL);
}

template <class T>
constexpr int cuda_dtype() {
  return std::is_same<T, float>::value ? 0 : 1;
}

// Kind: 0 EdscwPool, 1 IdwPool, 2 AdaPool (kernel_abi.h's op numbers of launch_ada)
template <class T, int Kind>
struct AdaCudaOpBase {
  std::string op = Kind == 0 ? "EdscwPool" : (Kind == 1 ? "IdwPool" : "AdaPool");
  WindowAttrs wa;
  std::string error;

  AdaCudaOpBase(const OrtApi*, const OrtKernelInfo* info) {
    try {
      read_window_attrs(info, op, &wa);
      error = wa.error;
    } catch (const std::exception& e) {
      error = op + ": " + e.what();
    }
    cuda_check(op, true, &error);
  }

  Ort::Status run(OrtKernelContext* ctx, const Ort::Custom::Tensor<T>& X, const Ort::Custom::Tensor<T>* Beta,
                  Ort::Custom::Tensor<T>& Y) {
    try {
      if (!error.empty()) return invalid(error);
      std::vector<int64_t> shape = X.Shape(), out_shape, unused;
      Window3 w;
      std::string msg = wa.resolve(op, shape, &w, &out_shape);
      if (!msg.empty()) return invalid(msg);
      int32_t p[25];
      for (int i = 20; i < 25; ++i) p[i] = 1;
      if (Beta) {
        msg = beta_strides(op, Beta->Shape(), out_shape, &unused);  // the CPU kernel's check and message
        if (!msg.empty()) return invalid(msg);
        broadcast_dims5(Beta->Shape(), out_shape.size(), p + 20);
      }
      using S = typename Storage<T>::type;
      S* y = reinterpret_cast<S*>(Y.Allocate(out_shape));
      if (numel(out_shape) == 0) return Ort::Status{nullptr};
      msg = fits_int32(op, shape, out_shape);
      if (!msg.empty()) return invalid(msg);
      window_to_params(shape[0], shape[1], w, p);
      void* stream = Ort::KernelContext(ctx).GetGPUComputeStream();
      const void* beta = Beta ? Beta->DataRaw() : nullptr;
      return cuda_status(op, poolexport_cuda_launch_ada(Kind, cuda_dtype<T>(), X.DataRaw(), beta, y, p, stream));
    } catch (const std::exception& e) {
      return Ort::Status((op + ": " + e.what()).c_str(), ORT_FAIL);
    }
  }
};

template <class T, int Kind>
struct AdaCudaWindowOp : AdaCudaOpBase<T, Kind> {
  using AdaCudaOpBase<T, Kind>::AdaCudaOpBase;
  Ort::Status Compute(OrtKernelContext* ctx, const Ort::Custom::Tensor<T>& X, Ort::Custom::Tensor<T>& Y) {
    return this->run(ctx, X, nullptr, Y);
  }
};

template <class T>
struct AdaCudaBlendOp : AdaCudaOpBase<T, 2> {
  using AdaCudaOpBase<T, 2>::AdaCudaOpBase;
  Ort::Status Compute(OrtKernelContext* ctx, const Ort::Custom::Tensor<T>& X, const Ort::Custom::Tensor<T>& Beta,
                      Ort::Custom::Tensor<T>& Y) {
    return this->run(ctx, X, &Beta, Y);
  }
};

template <class T>
struct AdaUnpoolCudaOp {
  std::string error;

  AdaUnpoolCudaOp(const OrtApi*, const OrtKernelInfo*) { cuda_check("AdaUnpool", true, &error); }

  Ort::Status Compute(OrtKernelContext* ctx, const Ort::Custom::Tensor<T>& X, const Ort::Custom::Tensor<T>& MaskEdscw,
                      const Ort::Custom::Tensor<T>& MaskEm, const Ort::Custom::Tensor<T>& Beta,
                      Ort::Custom::Tensor<T>& Y) {
    const std::string op = "AdaUnpool";
    try {
      if (!error.empty()) return invalid(error);
      const std::vector<int64_t> xs = X.Shape(), mes = MaskEdscw.Shape(), mms = MaskEm.Shape(), bsh = Beta.Shape();
      std::vector<int64_t> out_shape;
      std::string msg = ada_unpool_shapes(xs, mes, mms, bsh, &out_shape);  // the CPU kernel's checks and messages
      if (!msg.empty()) return invalid(msg);
      using S = typename Storage<T>::type;
      S* y = reinterpret_cast<S*>(Y.Allocate(out_shape));
      if (numel(out_shape) == 0) return Ort::Status{nullptr};
      msg = fits_int32(op, xs, out_shape);
      if (!msg.empty()) return invalid(msg);
      const size_t k = xs.size() - 2;
      int32_t p[17];
      p[0] = (int32_t)xs[0];
      p[1] = (int32_t)xs[1];
      for (size_t d = 0; d < 3; ++d) {
        const bool real = d >= 3 - k;
        p[2 + d] = real ? (int32_t)xs[2 + d - (3 - k)] : 1;
        p[5 + d] = real ? (int32_t)mes[2 + d - (3 - k)] : 1;
      }
      p[8] = (int32_t)mes[0];
      p[9] = (int32_t)mes[1];
      p[10] = (int32_t)mms[0];
      p[11] = (int32_t)mms[1];
      broadcast_dims5(bsh, xs.size(), p + 12);
      void* stream = Ort::KernelContext(ctx).GetGPUComputeStream();
      return cuda_status(op, poolexport_cuda_launch_ada_unpool(cuda_dtype<T>(), X.DataRaw(), MaskEdscw.DataRaw(),
                                                               MaskEm.DataRaw(), Beta.DataRaw(), y, p, stream));
    } catch (const std::exception& e) {
      return Ort::Status((op + ": " + e.what()).c_str(), ORT_FAIL);
    }
  }
};

// Appends the four adaPool-family ops for one element type on the CUDA provider.
template <class T>
void add_ada_cuda_ops(std::vector<std::unique_ptr<Ort::Custom::OrtLiteCustomOp>>& ops, const char* ep) {
  using Ort::Custom::CreateLiteCustomOp;
  ops.emplace_back(CreateLiteCustomOp<AdaCudaWindowOp<T, 0>>("EdscwPool", ep, 1));
  ops.emplace_back(CreateLiteCustomOp<AdaCudaWindowOp<T, 1>>("IdwPool", ep, 1));
  ops.emplace_back(CreateLiteCustomOp<AdaCudaBlendOp<T>>("AdaPool", ep, 1));
  ops.emplace_back(CreateLiteCustomOp<AdaUnpoolCudaOp<T>>("AdaUnpool", ep, 1));
}

}  // namespace poolexport

#endif  // POOLEXPORT_WITH_CUDA
