// RegisterCustomOps: every poolexport op under the `poolexport` domain (version 1), for
// float and float16, on the CPU provider and (built with CUDA) the CUDA provider.
#include <memory>
#include <mutex>
#include <vector>

#include "ada_cuda_ops.h"
#include "ada_kernels.h"
#include "ada_unpool_kernels.h"
#include "ops.h"

namespace {

using Ort::Custom::CreateLiteCustomOp;
using Ort::Custom::OrtLiteCustomOp;
using poolexport::ReduceOp;
using poolexport::WindowedOp;

template <class T, bool Cuda>
void add_ops(std::vector<std::unique_ptr<OrtLiteCustomOp>>& ops, const char* ep) {
  ops.emplace_back(CreateLiteCustomOp<WindowedOp<T, Cuda, false>>("SoftPool", ep, 1));
  ops.emplace_back(CreateLiteCustomOp<WindowedOp<T, Cuda, true>>("StochasticPool", ep, 1));
  ops.emplace_back(CreateLiteCustomOp<ReduceOp<T, Cuda, false>>("ReduceSoftPool", ep, 1));
  ops.emplace_back(CreateLiteCustomOp<ReduceOp<T, Cuda, true>>("ReduceStochasticPool", ep, 1));
}

const std::vector<std::unique_ptr<OrtLiteCustomOp>>& all_ops() {
  static std::vector<std::unique_ptr<OrtLiteCustomOp>> ops = [] {
    std::vector<std::unique_ptr<OrtLiteCustomOp>> v;
    add_ops<float, false>(v, "CPUExecutionProvider");
    add_ops<Ort::Float16_t, false>(v, "CPUExecutionProvider");
    poolexport::add_ada_ops<float>(v, "CPUExecutionProvider");
    poolexport::add_ada_ops<Ort::Float16_t>(v, "CPUExecutionProvider");
    poolexport::add_ada_unpool_op<float>(v, "CPUExecutionProvider");
    poolexport::add_ada_unpool_op<Ort::Float16_t>(v, "CPUExecutionProvider");
#ifdef POOLEXPORT_WITH_CUDA
    add_ops<float, true>(v, "CUDAExecutionProvider");
    add_ops<Ort::Float16_t, true>(v, "CUDAExecutionProvider");
    poolexport::add_ada_cuda_ops<float>(v, "CUDAExecutionProvider");  // EdscwPool, IdwPool, AdaPool, AdaUnpool
    poolexport::add_ada_cuda_ops<Ort::Float16_t>(v, "CUDAExecutionProvider");
#endif
    return v;
  }();
  return ops;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                                                           const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (!api) {
    // older runtime than the headers: report through the oldest API we can get
    const OrtApi* old = api_base->GetApi(1);
    return old ? old->CreateStatus(ORT_FAIL, "poolexport: onnxruntime is older than the 1.21 API this library needs")
               : nullptr;
  }
  Ort::InitApi(api);
  try {
    static std::mutex mu;
    std::lock_guard<std::mutex> lock(mu);
    // domains must outlive the sessions that use them: keep them for the process
    static std::vector<std::unique_ptr<Ort::CustomOpDomain>> domains;
    auto domain = std::make_unique<Ort::CustomOpDomain>("poolexport");
    for (auto& op : all_ops()) domain->Add(op.get());
    Ort::UnownedSessionOptions(options).Add(*domain);
    domains.push_back(std::move(domain));
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, (std::string("poolexport: RegisterCustomOps failed: ") + e.what()).c_str());
  }
  return nullptr;
}
