// Attribute reading and validation for the poolexport ORT kernels. Read once when the
// kernel is created; an invalid attribute is stored as an error message and returned as
// an ORT error status by Compute (throwing across the C API would end the process).
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "onnxruntime_cxx_api.h"

#include "poolexport/attributes.h"

namespace poolexport {

inline std::vector<int64_t> ints_attr(const OrtKernelInfo* info, const char* name, bool* present) {
  Ort::ConstKernelInfo ki{info};
  try {
    auto v = ki.GetAttributes<int64_t>(name);
    *present = true;
    return v;
  } catch (const Ort::Exception&) {
    *present = false;
    return {};
  }
}

template <class V>
V scalar_attr(const OrtKernelInfo* info, const char* name, V fallback) {
  Ort::ConstKernelInfo ki{info};
  try {
    return ki.GetAttribute<V>(name);
  } catch (const Ort::Exception&) {
    return fallback;
  }
}

inline std::string string_attr(const OrtKernelInfo* info, const char* name, const char* fallback) {
  Ort::ConstKernelInfo ki{info};
  try {
    return ki.GetAttribute<std::string>(name);
  } catch (const Ort::Exception&) {
    return fallback;
  }
}

// Read from the node, then validated by attributes.h (shared with the torch ops).
inline void read_window_attrs(const OrtKernelInfo* info, const std::string& op, WindowAttrs* a) {
  bool has = false;
  a->kernel = ints_attr(info, "kernel_shape", &has);
  if (!has) return a->fail(op, "kernel_shape is required");
  a->strides = ints_attr(info, "strides", &has);
  a->pads = ints_attr(info, "pads", &has);
  a->dilations = ints_attr(info, "dilations", &has);
  int64_t cm = scalar_attr<int64_t>(info, "ceil_mode", 0);
  if (cm != 0 && cm != 1) return a->fail(op, "ceil_mode must be 0 or 1, got " + std::to_string(cm));
  a->ceil_mode = cm == 1;
  a->validate(op, string_attr(info, "auto_pad", "NOTSET"));
}

inline void read_reduce_attrs(const OrtKernelInfo* info, const std::string& op, ReduceAttrs* a) {
  bool has = false;
  a->axes = ints_attr(info, "axes", &has);
  int64_t kd = scalar_attr<int64_t>(info, "keepdims", 1);
  if (kd != 0 && kd != 1) a->error = op + ": keepdims must be 0 or 1, got " + std::to_string(kd);
  a->keepdims = kd == 1;
}

}  // namespace poolexport
