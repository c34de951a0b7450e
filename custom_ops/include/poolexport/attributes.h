// The windowing and reduce attributes of the poolexport ops (ONNX AveragePool's and
// ReduceMean's meaning), validated and resolved against an input shape. Shared by the
// ONNX Runtime kernels (ort/attrs.h reads them from the node) and the torch ops
// (torch/stable_ops.cc reads them from the op's arguments), so both accept and reject
// exactly the same arguments, with the same messages.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "poolexport/reduce.h"
#include "poolexport/window.h"

namespace poolexport {

inline std::string list_str(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

// The windowing attributes of SoftPool / StochasticPool (ONNX AveragePool's).
struct WindowAttrs {
  std::vector<int64_t> kernel, strides, pads, dilations;
  bool ceil_mode = false;
  int auto_pad = kNotSet;
  std::string error;  // empty when valid

  // Defaults for absent lists, then every range check; a failure is stored in `error`.
  void validate(const std::string& op, const std::string& ap) {
    size_t k = kernel.size();
    if (k < 1 || k > 3) return fail(op, "kernel_shape must have 1 to 3 values, got " + list_str(kernel));
    if (strides.empty()) strides.assign(k, 1);
    if (pads.empty()) pads.assign(2 * k, 0);
    if (dilations.empty()) dilations.assign(k, 1);
    if (strides.size() != k) return fail(op, "strides must have " + std::to_string(k) + " values, got " + list_str(strides));
    if (dilations.size() != k)
      return fail(op, "dilations must have " + std::to_string(k) + " values, got " + list_str(dilations));
    if (pads.size() != 2 * k) return fail(op, "pads must have " + std::to_string(2 * k) + " values, got " + list_str(pads));
    for (auto v : kernel)
      if (v <= 0 || v > (1 << 30)) return fail(op, "kernel_shape must be positive, got " + list_str(kernel));
    for (auto v : strides)
      if (v <= 0 || v > (1 << 30)) return fail(op, "strides must be positive, got " + list_str(strides));
    for (auto v : dilations)
      if (v <= 0 || v > (1 << 30)) return fail(op, "dilations must be positive, got " + list_str(dilations));
    for (auto v : pads)
      if (v < 0 || v > (1 << 30)) return fail(op, "pads must be non-negative, got " + list_str(pads));
    if (ap == "NOTSET") auto_pad = kNotSet;
    else if (ap == "SAME_UPPER") auto_pad = kSameUpper;
    else if (ap == "SAME_LOWER") auto_pad = kSameLower;
    else if (ap == "VALID") auto_pad = kValid;
    else return fail(op, "auto_pad must be NOTSET, SAME_UPPER, SAME_LOWER or VALID, got '" + ap + "'");
  }

  void fail(const std::string& op, const std::string& msg) { error = op + ": " + msg; }

  // Resolve against an input shape (N, C, spatial...). Fills a 3-D geometry and the
  // output shape, or returns an error message.
  std::string resolve(const std::string& op, const std::vector<int64_t>& shape, Window3* w,
                      std::vector<int64_t>* out_shape) const {
    size_t k = kernel.size();
    if (shape.size() != k + 2)
      return op + ": input X must have rank " + std::to_string(k + 2) + " (N x C x " + std::to_string(k) +
             " spatial axes, matching kernel_shape " + list_str(kernel) + "), got rank " + std::to_string(shape.size());
    out_shape->assign(shape.begin(), shape.begin() + 2);
    size_t lead = 3 - k;
    for (size_t i = 0; i < 3; ++i) {
      w->in[i] = w->out[i] = w->k[i] = w->s[i] = w->dil[i] = 1;
      w->pad[i] = 0;
    }
    for (size_t i = 0; i < k; ++i) {
      int64_t o = 0, b = 0;
      if (!resolve_axis(shape[2 + i], kernel[i], strides[i], pads[i], pads[k + i], dilations[i], ceil_mode, auto_pad, &o, &b))
        return op + ": kernel_shape " + list_str(kernel) + " (with dilations " + list_str(dilations) +
               ") is larger than the padded input on spatial axis " + std::to_string(i) + " (size " +
               std::to_string(shape[2 + i]) + ")";
      if (o < 0) o = 0;
      size_t j = lead + i;
      w->in[j] = shape[2 + i];
      w->out[j] = o;
      w->k[j] = kernel[i];
      w->s[j] = strides[i];
      w->dil[j] = dilations[i];
      w->pad[j] = b;
      out_shape->push_back(o);
    }
    return "";
  }
};

// axes/keepdims of the Reduce forms, ReduceMean's meaning (absent or empty = all axes).
struct ReduceAttrs {
  std::vector<int64_t> axes;
  bool keepdims = true;
  std::string error;

  // Collapse the input to 6 padded axes + mask, and compute the output shape.
  // `too_many_groups` (optional) is set when the only error is a layout of more than 6
  // alternating reduced/kept groups, which a caller with a general fallback can route there.
  std::string resolve(const std::string& op, const std::vector<int64_t>& shape, Reduce6* g,
                      std::vector<int64_t>* out_shape, bool* too_many_groups = nullptr) const {
    if (too_many_groups) *too_many_groups = false;
    int64_t r = (int64_t)shape.size();
    if (r < 1) return op + ": input X must have rank >= 1, got a scalar";
    std::vector<bool> red(r, axes.empty());
    for (auto a : axes) {
      if (a < -r || a >= r) return op + ": axis " + std::to_string(a) + " is out of range for a " + std::to_string(r) + "-D input";
      int64_t n = a < 0 ? a + r : a;
      if (red[n]) return op + ": axes contain duplicates: " + list_str(axes);
      red[n] = true;
    }
    out_shape->clear();
    for (int64_t i = 0; i < r; ++i)
      if (!red[i]) out_shape->push_back(shape[i]);
      else if (keepdims) out_shape->push_back(1);
    // merge neighbouring axes of the same kind (drops size-1 axes): order is unchanged
    std::vector<int64_t> dims;
    std::vector<bool> kinds;
    for (int64_t i = 0; i < r; ++i) {
      if (shape[i] == 1) continue;
      if (!dims.empty() && kinds.back() == red[i]) {
        dims.back() *= shape[i];
      } else {
        dims.push_back(shape[i]);
        kinds.push_back(red[i]);
      }
    }
    if (dims.size() > 6) {
      if (too_many_groups) *too_many_groups = true;
      return op + ": the reduced and kept axes form " + std::to_string(dims.size()) +
             " alternating groups; at most 6 are supported";
    }
    int64_t padded[6] = {1, 1, 1, 1, 1, 1};
    int32_t mask = 0;
    size_t off = 6 - dims.size();
    for (size_t i = 0; i < dims.size(); ++i) {
      padded[off + i] = dims[i];
      if (kinds[i]) mask |= 1 << (off + i);
    }
    *g = make_reduce6(padded, mask);
    return "";
  }
};

inline bool parse_mode(const std::string& mode, bool* sample) {
  if (mode == "expectation") *sample = false;
  else if (mode == "sample") *sample = true;
  else return false;
  return true;
}

}  // namespace poolexport
