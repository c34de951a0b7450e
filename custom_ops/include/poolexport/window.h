// ONNX pooling windows (AveragePool/MaxPool rules, count_include_pad=0), the C++ twin of
// poolexport/_window.py. Host code resolves output sizes and begin pads once
// (resolve_axis); kernels then visit each window's valid positions in row-major order.
#pragma once

#include "common.h"

namespace poolexport {

enum AutoPad { kNotSet = 0, kSameUpper = 1, kSameLower = 2, kValid = 3 };

// Output size and effective begin pad of one spatial axis. Returns false (and leaves
// outputs untouched) when the window span exceeds the padded input (NOTSET/VALID).
inline bool resolve_axis(int64_t n, int64_t k, int64_t s, int64_t pad_b, int64_t pad_e, int64_t d,
                         bool ceil_mode, int auto_pad, int64_t* out, int64_t* begin) {
  int64_t span = (k - 1) * d + 1;
  if (auto_pad == kSameUpper || auto_pad == kSameLower) {
    int64_t o = (n + s - 1) / s;
    int64_t total = (o - 1) * s + span - n;
    if (total < 0) total = 0;
    *out = o;
    *begin = auto_pad == kSameUpper ? total / 2 : total - total / 2;
    return true;
  }
  if (auto_pad == kValid) {
    if (span > n) return false;
    *out = (n - span) / s + 1;
    *begin = 0;
    return true;
  }
  int64_t room = n + pad_b + pad_e - span;
  if (room < 0) return false;
  if (!ceil_mode) {
    *out = room / s + 1;
  } else {
    int64_t o = (room + s - 1) / s + 1;
    // a last window starting in the end padding is dropped (PyTorch / ONNX Runtime rule)
    *out = (o - 1) * s >= n + pad_b ? o - 1 : o;
  }
  *begin = pad_b;
  return true;
}

// A 3-D window geometry (1-D/2-D use leading axes of size 1).
struct Window3 {
  int64_t in[3], out[3], k[3], s[3], dil[3], pad[3];
};

// The geometry from the flat parameters of kernel_abi.h's POOLEXPORT_WINDOW_PARAMS order
// (N, C, in[3], out[3], k[3], s[3], dil[3], pad[3]), as int32 or int64 values.
template <class I>
PX_HD Window3 window_from_params(const I* p) {
  Window3 w;
  for (int i = 0; i < 3; ++i) {
    w.in[i] = p[2 + i];
    w.out[i] = p[5 + i];
    w.k[i] = p[8 + i];
    w.s[i] = p[11 + i];
    w.dil[i] = p[14 + i];
    w.pad[i] = p[17 + i];
  }
  return w;
}

// The inverse: N, C and the geometry as the int32 launch parameters p[0..20) (host side;
// the caller has checked the sizes fit int32).
inline void window_to_params(int64_t N, int64_t C, const Window3& w, int32_t* p) {
  p[0] = (int32_t)N;
  p[1] = (int32_t)C;
  for (int i = 0; i < 3; ++i) {
    p[2 + i] = (int32_t)w.in[i];
    p[5 + i] = (int32_t)w.out[i];
    p[8 + i] = (int32_t)w.k[i];
    p[11 + i] = (int32_t)w.s[i];
    p[14 + i] = (int32_t)w.dil[i];
    p[17 + i] = (int32_t)w.pad[i];
  }
}

// Calls f(row) for every valid input row (kd, kh) of output row (od, oh), in kernel
// order; row = id * in[1] + ih, the row's index in the (n, c) plane.
template <class F>
PX_HD void for_each_window_row_index(const Window3& w, int64_t od, int64_t oh, F&& f) {
  int64_t d0 = od * w.s[0] - w.pad[0], h0 = oh * w.s[1] - w.pad[1];
  for (int64_t kd = 0; kd < w.k[0]; ++kd) {
    int64_t id = d0 + kd * w.dil[0];
    if (id < 0 || id >= w.in[0]) continue;
    for (int64_t kh = 0; kh < w.k[1]; ++kh) {
      int64_t ih = h0 + kh * w.dil[1];
      if (ih < 0 || ih >= w.in[1]) continue;
      f(id * w.in[1] + ih);
    }
  }
}

// The same rows as offsets relative to the start of the (n, c) plane.
template <class F>
PX_HD void for_each_window_row(const Window3& w, int64_t od, int64_t oh, F&& f) {
  for_each_window_row_index(w, od, oh, [&](int64_t row) { f(row * w.in[2]); });
}

// Calls f(offset) for every valid input position of output (od, oh, ow), row-major over
// the kernel; offsets are relative to the start of the (n, c) plane.
template <class F>
PX_HD void for_each_in_window(const Window3& w, int64_t od, int64_t oh, int64_t ow, F&& f) {
  const int64_t w0 = ow * w.s[2] - w.pad[2];
  for_each_window_row(w, od, oh, [&](int64_t row) {
    for (int64_t kw = 0; kw < w.k[2]; ++kw) {
      int64_t iw = w0 + kw * w.dil[2];
      if (iw < 0 || iw >= w.in[2]) continue;
      f(row + iw);
    }
  });
}

}  // namespace poolexport
