// The reduce forms' chunk kernels (reduce_plane.inc) compiled once per instruction set:
// AVX-512, AVX2 + FMA and portable C++, and the run-time choice between them.
#pragma once

#include "cpu_simd.h"
#include "cpu_soft_shared.h"  // the exp polynomial's constants

namespace poolexport {
namespace cpu {

// A plane's SoftPool shift m = beta * c, c its largest x (smallest for beta < 0), from its
// extremes (lo > hi: NaN only). narrow: its range of beta * x is at most kSharedRange, so
// every exp argument lies in [-kSharedRange, 0] (no clamp needed, as the windowed kernel's
// shared-shift blocks). exact: the plane takes the shared math (soft_pool.h) instead, because
// its max |x| exceeds kSoftScaleAbove, it holds inf or only NaN, or beta * c overflows.
struct PlaneShift {
  float m, c;
  bool narrow, exact;
};
inline PlaneShift plane_shift(float lo, float hi, float beta) {
  const float amax = -lo > hi ? -lo : hi;
  const float c = beta < 0.0f ? lo : hi, m = beta * c, other = beta * (beta < 0.0f ? hi : lo);
  return PlaneShift{m, c, m - other <= limits::kSharedRange,
                    !(lo <= hi) || !(amax <= limits::kSoftScaleAbove) || !(m - m == 0.0f)};
}

#define PX_RP_NS plane_portable
#define PX_RP_TARGET
#define PX_RP_LANES LanesPortable
#include "reduce_plane.inc"
#undef PX_RP_NS
#undef PX_RP_TARGET
#undef PX_RP_LANES

#ifdef PX_HAVE_X86_LANES
#define PX_RP_NS plane_avx2
#define PX_RP_TARGET PX_TARGET_AVX2
#define PX_RP_LANES LanesAvx2
#include "reduce_plane.inc"
#undef PX_RP_NS
#undef PX_RP_TARGET
#undef PX_RP_LANES

// GCC 12's own avx512fintrin.h trips -W(maybe-)uninitialized (its _mm512_undefined_* operands)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#define PX_RP_NS plane_avx512
#define PX_RP_TARGET PX_TARGET_AVX512
#define PX_RP_LANES LanesAvx512
#include "reduce_plane.inc"
#undef PX_RP_NS
#undef PX_RP_TARGET
#undef PX_RP_LANES
#pragma GCC diagnostic pop
#endif

#ifdef PX_HAVE_X86_LANES
#define PX_RP_DISPATCH(isa, call)                              \
  do {                                                         \
    if (isa == Isa::kAvx512) return plane_avx512::call;        \
    if (isa == Isa::kAvx2) return plane_avx2::call;            \
    return plane_portable::call;                               \
  } while (0)
#else
#define PX_RP_DISPATCH(isa, call) return plane_portable::call
#endif

inline void plane_chunk_range(Isa isa, const float* x, int64_t n, float* lo, float* hi) {
  PX_RP_DISPATCH(isa, chunk_range(x, n, lo, hi));
}
inline void plane_chunk_soft_sums(Isa isa, const float* x, int64_t n, const PlaneShift& sh, float beta, float* se,
                                  float* sd) {
  PX_RP_DISPATCH(isa, chunk_soft_sums(x, n, sh, beta, se, sd));
}
inline bool plane_soft(Isa isa, const float* x, int64_t n, float beta, float* y) {
  PX_RP_DISPATCH(isa, plane_soft(x, n, beta, y));
}
inline void plane_chunk_moments(Isa isa, const float* x, int64_t n, float* s1, float* s2) {
  PX_RP_DISPATCH(isa, chunk_moments(x, n, s1, s2));
}
// The one-plane-per-lane form (reduce_plane.inc): lanes per call on each path.
inline int64_t plane_lanes(Isa isa) {
  return isa == Isa::kAvx2 ? limits::kLanesAvx2 : isa == Isa::kAvx512 ? limits::kLanesAvx512 : limits::kLanesPortable;
}
inline void plane_lanes_range(Isa isa, const float* x, int64_t P, int64_t n, float* t, float* lo, float* hi) {
  PX_RP_DISPATCH(isa, lanes_range(x, P, n, t, lo, hi));
}
inline void plane_lanes_soft_sums(Isa isa, const float* t, int64_t P, float beta, bool narrow, const float* neg_m,
                                  const float* c, const void* next, int64_t next_bytes, float* y) {
  PX_RP_DISPATCH(isa, lanes_soft_sums(t, P, beta, narrow, neg_m, c, static_cast<const char*>(next), next_bytes, y));
}
inline void plane_lanes_expectation(Isa isa, const float* x, int64_t P, int64_t n, float* y) {
  PX_RP_DISPATCH(isa, lanes_expectation(x, P, n, y));
}
#undef PX_RP_DISPATCH

}  // namespace cpu
}  // namespace poolexport
