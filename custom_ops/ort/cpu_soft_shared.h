// SoftPool's shared-shift kernel (soft_shared.inc) compiled once per instruction set:
// AVX-512, AVX2 + FMA and portable C++, and the run-time choice between them.
#pragma once

#include <algorithm>
#include <vector>

#include "poolexport/window.h"
#include "cpu_simd.h"

namespace poolexport {
namespace cpu {

// Largest range of beta*x in a block whose exps are shared (see soft_shared.inc).
using limits::kSharedRange;

// exp(t) for t in [-60, 0] (the shared-shift SoftPool's arguments; soft_shared.inc's
// exp_shifted): Cody-Waite reduction t = k ln2 + r, |r| <= ln2/2, then a degree-6
// polynomial (relative-error fit on that interval, approximation error 3e-9) evaluated by
// Horner's rule; the product p * 2^k is an integer add of k << 23 to p's bits (exact: the
// result stays a normal float for k >= -87), and k << 23 is the rounding sum's bits
// shifted (magic's low 9 bits are 0), so no multiply is left for 2^k. No clamps: the
// caller guarantees the range. Measured against float64 over every float32 in [-60, 0]:
// see tests/test_cpu_isa.py and the README.
constexpr float kExpLog2e = 1.44269504088896341f;
constexpr float kExpLn2Hi = 0.693359375f;
constexpr float kExpLn2Lo = -2.12194440e-4f;
constexpr float kExpMagic = 12582912.0f;  // 1.5 * 2^23: magic + k holds the integer k in its low bits
constexpr float kExpC6 = 1.381451147608459e-3f;
constexpr float kExpC5 = 8.368711918592453e-3f;
constexpr float kExpC4 = 4.166838899254799e-2f;
constexpr float kExpC3 = 1.666652113199234e-1f;
constexpr float kExpC2 = 4.999999403953552e-1f;

// One block of output rows of one plane: its distinct input rows (float views) and, per
// output row q, the indices idx[start[q] .. start[q+1]) of its window rows in window order.
// next / next_bytes: the following block's input, prefetched while this one computes (the
// range pass must see a whole block before any exp, so without it every block would first
// wait for memory and then compute; 10-25% faster with it on one core, in noisy A/B runs).
struct SharedBlock {
  const float* const* rows;
  int64_t nrows;
  const int32_t* start;
  const int32_t* idx;
  int64_t nout;
  const void* next;  // where the next block's input starts (about) and the bytes it spans
  int64_t next_bytes;
};

// What soft_block did: wrote the block, or wrote nothing because the block's range of
// beta*x exceeds kSharedRange (the per-window row kernels then), or because its max |x|
// exceeds kSoftScaleAbove or it holds inf/NaN (the shared math's scaled path then).
enum class SharedResult { kDone, kWide, kHuge };

#define PX_SS_NS shared_portable
#define PX_SS_TARGET
#define PX_SS_LANES LanesPortable
#include "soft_shared.inc"
#undef PX_SS_NS
#undef PX_SS_TARGET
#undef PX_SS_LANES

#ifdef PX_HAVE_X86_LANES
#define PX_SS_NS shared_avx2
#define PX_SS_TARGET PX_TARGET_AVX2
#define PX_SS_LANES LanesAvx2
#include "soft_shared.inc"
#undef PX_SS_NS
#undef PX_SS_TARGET
#undef PX_SS_LANES

// GCC 12's own avx512fintrin.h trips -Wmaybe-uninitialized (its _mm512_undefined_* operands)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define PX_SS_NS shared_avx512
#define PX_SS_TARGET PX_TARGET_AVX512
#define PX_SS_LANES LanesAvx512
#include "soft_shared.inc"
#undef PX_SS_NS
#undef PX_SS_TARGET
#undef PX_SS_LANES
#pragma GCC diagnostic pop
#endif

inline SharedResult soft_shared_block(Isa isa, const SharedBlock& blk, const Window3& w, float beta, float* y,
                              std::vector<float>& buf) {
#ifdef PX_HAVE_X86_LANES
  if (isa == Isa::kAvx512) return shared_avx512::soft_block(blk, w, beta, y, buf);
  if (isa == Isa::kAvx2) return shared_avx2::soft_block(blk, w, beta, y, buf);
#endif
  return shared_portable::soft_block(blk, w, beta, y, buf);
}

inline void exp_shifted_n(Isa isa, const float* t, float* out, int64_t n) {
#ifdef PX_HAVE_X86_LANES
  if (isa == Isa::kAvx512) return shared_avx512::exp_shifted_n(t, out, n);
  if (isa == Isa::kAvx2) return shared_avx2::exp_shifted_n(t, out, n);
#endif
  shared_portable::exp_shifted_n(t, out, n);
}

}  // namespace cpu
}  // namespace poolexport
