"""The counter-based generator behind stochastic pooling: the one definition.

Every backend reproduces these picks bit for bit, so the definition is exact:

* Philox4x32-10 (Salmon et al., SC 2011, "Parallel random numbers: as easy as 1, 2, 3"):
  multipliers 0xD2511F53 and 0xCD9E8D57, Weyl key increments 0x9E3779B9 and 0xBB67AE85,
  10 rounds, the key bumped between rounds (Random123's ``philox4x32_R``).
* key = (seed mod 2^32, (seed >> 32) mod 2^32), the seed taken as a two's-complement
  64-bit integer; counter = (e mod 2^32, e >> 32, 0, 0) where ``e`` is the flat row-major
  index of the output element (over N, C and the output spatial axes, or over the
  reduced output's elements for the Reduce form).
* u = (first output word >> 8) * 2^-24, a float32 in [0, 1) with no rounding.
* The pick (see ``poolexport.ops.stochastic_pool``): r_i = max(a_i, 0) in float32 in
  window order; cum_i are sequential float32 prefix sums; total = cum_last;
  t = float32(u * total); the pick is the first i with cum_i > t, or the last i with
  r_i > 0 if rounding leaves none. A window with total == 0 outputs 0; one holding NaN
  (r keeps it, so total is NaN) outputs NaN and picks nothing.

This module computes it with int64 tensor arithmetic that never overflows (products are
split into 16-bit halves), so it runs unchanged on any torch device.
"""
from __future__ import annotations

import torch

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10
_MASK32 = 0xFFFFFFFF


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product of uint32 values held in int64."""
    a1, a0 = a >> 16, a & 0xFFFF
    m1, m0 = m >> 16, m & 0xFFFF
    mid = a1 * m0 + a0 * m1  # < 2^33
    lo_full = a0 * m0 + ((mid & 0xFFFF) << 16)  # < 2^33
    lo = lo_full & _MASK32
    hi = a1 * m1 + (mid >> 16) + (lo_full >> 32)
    return hi & _MASK32, lo


def philox4x32(counter: list[torch.Tensor], key: tuple[int, int], rounds: int = PHILOX_ROUNDS):
    """Philox4x32 over int64 tensors holding uint32 words; returns the 4 output words."""
    c0, c1, c2, c3 = counter
    k0, k1 = key[0] & _MASK32, key[1] & _MASK32
    for r in range(rounds):
        if r:
            k0 = (k0 + PHILOX_W0) & _MASK32
            k1 = (k1 + PHILOX_W1) & _MASK32
        hi0, lo0 = _mulhilo(c0, PHILOX_M0)
        hi1, lo1 = _mulhilo(c2, PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def seed_key(seed: int) -> tuple[int, int]:
    s = int(seed) & 0xFFFFFFFFFFFFFFFF
    return s & _MASK32, s >> 32


def uniform_for_elements(seed: int, count: int, device=None) -> torch.Tensor:
    """float32 uniforms in [0, 1), one per output element index 0..count-1."""
    e = torch.arange(count, dtype=torch.int64, device=device)
    zero = torch.zeros_like(e)
    r0, _, _, _ = philox4x32([e & _MASK32, e >> 32, zero, zero], seed_key(seed))
    return (r0 >> 8).to(torch.float32) * (2.0**-24)
