"""The kernels' limits, read from the one header that states them
(custom_ops/include/poolexport/limits.h), and the portable file's (decompositions.py).

Boundary tests draw from ``around(value)``: the limit itself, the float32 neighbours and a
step of 1 on each side, so a limit moved by a mutant (or by a maintainer) without its
tests moving shows up as a failure.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

HEADER = Path(__file__).resolve().parents[1] / "custom_ops" / "include" / "poolexport" / "limits.h"

_CONSTEXPR = re.compile(r"^\s*constexpr\s+(?:float|int|int64_t)\s+(k\w+)\s*=\s*([-+0-9.eE]+)f?\s*;", re.M)
_DEFINE = re.compile(r"^#define\s+(POOLEXPORT_\w+)\s+([-+0-9.eE]+)\s*$", re.M)


def _number(text: str):
    text = text.rstrip("f")
    return float(text) if any(c in text for c in ".eE") else int(text)


def read(path: Path = HEADER) -> dict:
    source = path.read_text()
    values = {name: _number(v) for name, v in _CONSTEXPR.findall(source)}
    values.update({name: _number(v) for name, v in _DEFINE.findall(source)})
    return values


LIMITS = read()
EXP_ARG_MIN = LIMITS["kExpArgMin"]
EXP_ARG_MAX = LIMITS["kExpArgMax"]
SHARED_RANGE = LIMITS["kSharedRange"]          # forward shared-shift block range of beta*x
SHARED_ROWS = LIMITS["kSharedRows"]            # output rows per shared-shift block
SOFT_SHIFT_RANGE = LIMITS["kSoftShiftRange"]   # backward plane range of beta*x
LANES = {"portable": LIMITS["kLanesPortable"], "avx2": LIMITS["kLanesAvx2"], "avx512": LIMITS["kLanesAvx512"]}
REDUCE_WARP_WINDOW = LIMITS["kReduceWarpWindow"]
REDUCE_BLOCK_WINDOW = LIMITS["kReduceBlockWindow"]
CUDA_BLOCK = LIMITS["POOLEXPORT_BLOCK"]
CUDA_MAX_GRID = LIMITS["POOLEXPORT_MAX_GRID"]


def around(limit: float) -> list[float]:
    """limit - 1, the float32 just below, limit, the float32 just above, limit + 1."""
    f = np.float32(limit)
    return [float(limit) - 1.0, float(np.nextafter(f, np.float32(-np.inf))), float(limit),
            float(np.nextafter(f, np.float32(np.inf))), float(limit) + 1.0]


def widths(lanes: int, multiples=(1, 2, 3)) -> list[int]:
    """Row widths lanes*k - 1, lanes*k, lanes*k + 1 (the vector loops' tails)."""
    return sorted({w for k in multiples for w in (lanes * k - 1, lanes * k, lanes * k + 1) if w > 0})
