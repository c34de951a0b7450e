// The reduce forms' chunk kernels (reduce_plane.inc) compiled once per instruction set:
// AVX-512, AVX2 + FMA and portable C++, and the run-time choice between them.
#pragma once

#include <type_traits>

#include "cpu_simd.h"
#include "cpu_soft_shared.h"  // the exp polynomial's constants

namespace poolexport {
namespace cpu {

// The reduce forms' weights in base 2: e = exp(beta (x - c)) = 2^u, u = b2 (x - c) with
// b2 = beta * log2(e) rounded once per call; x - c is also the factor of the weighted sum, so
// it is computed once and the exp needs no ln2 reduction (u = k + f, k = round(u), 2^f by a
// polynomial in f). Reduce-local: the windowed kernels keep the exp of cpu_soft_shared.h.
// 2^f on [-1/2, 1/2]: minimax of degree 5 with p(0) = 1, relative error 9e-8 (1.6e-7
// evaluated in float with FMA), below the forward bound's 1e-5 by far.
constexpr float kExp2C1 = 0x1.62e42ap-1f;
constexpr float kExp2C2 = 0x1.ebf9bcp-3f;
constexpr float kExp2C3 = 0x1.c6b752p-5f;
constexpr float kExp2C4 = 0x1.3cea88p-7f;
constexpr float kExp2C5 = 0x1.5bba14p-10f;
// u is clamped below at kExpArgMin / ln 2 (fast_exp's clamp, common.h), so k >= -126
constexpr float kExp2ArgMin = limits::kExpArgMin * kExpLog2e;
// a plane whose u stays above this (range of beta * x at most kSharedRange) needs no clamp
constexpr float kExp2NarrowMin = -limits::kSharedRange * kExpLog2e;

inline float exp2_factor(float beta) { return beta * kExpLog2e; }

// A plane's SoftPool shift c, its largest x (smallest for beta < 0), from its extremes
// (lo > hi: NaN only). narrow: its smallest exponent u = b2 (far - c), computed as the sums
// compute it (u is monotone in x), is at least kExp2NarrowMin, so no exp argument needs the
// clamp (the windowed kernel's shared-shift blocks). exact: the plane takes the shared math
// (soft_pool.h) instead, because its max |x| exceeds kSoftScaleAbove, it holds inf or only
// NaN, beta * c overflows, or b2 does.
struct PlaneShift {
  float c;
  bool narrow, exact;
};
inline PlaneShift plane_shift(float lo, float hi, float beta) {
  const float amax = -lo > hi ? -lo : hi;
  const float c = beta < 0.0f ? lo : hi, far = beta < 0.0f ? hi : lo, m = beta * c, b2 = exp2_factor(beta);
  return PlaneShift{c, b2 * (far - c) >= kExp2NarrowMin,
                    !(lo <= hi) || !(amax <= limits::kSoftScaleAbove) || !(m - m == 0.0f) || !(b2 - b2 == 0.0f)};
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
#define PX_RP_HALVES
#define PX_RP_POW2
#include "reduce_plane.inc"
#undef PX_RP_NS
#undef PX_RP_TARGET
#undef PX_RP_LANES
#undef PX_RP_HALVES
#undef PX_RP_POW2
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
// n float16 values converted into f and their extremes in one pass, where a path has it
// (AVX-512); false: not done here (convert, then plane_chunk_range).
inline bool plane_halves_range(Isa isa, const uint16_t* h, int64_t n, float* f, float* lo, float* hi) {
#ifdef PX_HAVE_X86_LANES
  if (isa == Isa::kAvx512) {
    plane_avx512::halves_range(h, n, f, lo, hi);
    return true;
  }
#endif
  (void)isa, (void)h, (void)n, (void)f, (void)lo, (void)hi;
  return false;
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
// SoftPool of a run of whole planes (reduce_plane.inc soft_planes_run): y[q] per plane,
// exact[q] where the plane takes the shared math instead (y[q] left to the caller). Float planes
// on every path; float16 where the path converts while ranging (AVX-512; f holds 2 P floats),
// else false (not done here).
inline bool plane_soft_run(Isa isa, const float* x, int64_t P, int64_t count, float beta, float* f, float* y,
                           uint8_t* exact) {
  (void)f;
  [&] { PX_RP_DISPATCH(isa, soft_planes_run(x, P, count, beta, y, exact)); }();
  return true;
}
inline bool plane_soft_run(Isa isa, const uint16_t* x, int64_t P, int64_t count, float beta, float* f, float* y,
                           uint8_t* exact) {
#ifdef PX_HAVE_X86_LANES
  if (isa == Isa::kAvx512) {
    plane_avx512::soft_planes_run_halves(x, P, count, beta, f, y, exact);
    return true;
  }
#endif
  (void)isa, (void)x, (void)P, (void)count, (void)beta, (void)f, (void)y, (void)exact;
  return false;
}
// The one-plane-per-lane form (reduce_plane.inc): lanes per call on each path.
inline int64_t plane_lanes(Isa isa) {
  return isa == Isa::kAvx2 ? limits::kLanesAvx2 : isa == Isa::kAvx512 ? limits::kLanesAvx512 : limits::kLanesPortable;
}
// (returns whether the group may take the unclamped exp; exact: bit l for plane l)
inline bool plane_lanes_range(Isa isa, const float* x, int64_t P, int64_t n, float beta, float* t, float* c,
                              uint32_t* exact) {
  PX_RP_DISPATCH(isa, lanes_range(x, P, n, beta, t, c, exact));
}
// The same straight from float16 planes (the same t, c, exact and result), where a path
// converts rows as it transposes them (AVX-512) and P >= its lanes; false: not done here
// (convert the planes first).
inline bool plane_lanes_range_halves(Isa isa, const uint16_t* x, int64_t P, int64_t n, float beta, float* t,
                                     float* c, uint32_t* exact, bool* narrow) {
#ifdef PX_HAVE_X86_LANES
  if (isa == Isa::kAvx512 && P >= limits::kLanesAvx512) {
    *narrow = plane_avx512::lanes_range_halves(x, P, n, beta, t, c, exact);
    return true;
  }
#endif
  (void)isa, (void)x, (void)P, (void)n, (void)beta, (void)t, (void)c, (void)exact, (void)narrow;
  return false;
}
inline void plane_lanes_soft_sums(Isa isa, const float* t, int64_t P, float beta, bool narrow, const float* c,
                                  const void* next, int64_t next_bytes, float* y) {
  PX_RP_DISPATCH(isa, lanes_soft_sums(t, P, beta, narrow, c, static_cast<const char*>(next), next_bytes, y));
}
// SoftPool of a run of groups of lanes planes (reduce_plane.inc lanes_soft_run): y gets
// lanes results per group, exact one mask per group of the planes left to the shared math;
// t holds 2 lanes P floats. Float planes on every path; float16 where the path converts rows as
// it transposes them (AVX-512) and P >= its lanes, else false (not done here).
inline bool plane_lanes_soft_run(Isa isa, const float* x, int64_t P, int64_t groups, int64_t n_last, float beta,
                                 float* t, float* y, uint32_t* exact) {
  [&] { PX_RP_DISPATCH(isa, lanes_soft_run(x, P, groups, n_last, beta, t, y, exact)); }();
  return true;
}
inline bool plane_lanes_soft_run(Isa isa, const uint16_t* x, int64_t P, int64_t groups, int64_t n_last, float beta,
                                 float* t, float* y, uint32_t* exact) {
#ifdef PX_HAVE_X86_LANES
  if (isa == Isa::kAvx512 && P >= limits::kLanesAvx512) {
    plane_avx512::lanes_soft_run_halves(x, P, groups, n_last, beta, t, y, exact);
    return true;
  }
#endif
  (void)isa, (void)x, (void)P, (void)groups, (void)n_last, (void)beta, (void)t, (void)y, (void)exact;
  return false;
}
inline void plane_lanes_expectation(Isa isa, const float* x, int64_t P, int64_t n, float* y) {
  PX_RP_DISPATCH(isa, lanes_expectation(x, P, n, y));
}
#undef PX_RP_DISPATCH

}  // namespace cpu
}  // namespace poolexport
