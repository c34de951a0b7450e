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
constexpr float kSharedRange = 60.0f;

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

inline bool soft_shared_block(Isa isa, const SharedBlock& blk, const Window3& w, float beta, float* y,
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
