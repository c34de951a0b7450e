"""float32 <-> IEEE binary16 of custom_ops/include/poolexport/common.h, bit for bit
against NumPy's float16 (round to nearest, ties to even).

The CPU kernels convert every fp16 input and output with these two functions, and the
emulated CUDA kernels use them for __half. An fp16 tolerance of 2e-3 would hide a wrong
rounding rule (half-up instead of half-even moves 1 + 2^-11 from 1.0 to 1.0009765625),
so they are checked exactly here: every half value, every tie between neighbouring
halves, subnormals, overflow, infinities and NaN.
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = r"""
#include "poolexport/common.h"
#define PX_EXPORT extern "C" __attribute__((visibility("default")))
PX_EXPORT void px_f2h(const float* x, uint16_t* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = poolexport::float_to_half_bits(x[i]);
}
PX_EXPORT void px_h2f(const uint16_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = poolexport::half_bits_to_float(x[i]);
}
"""


@pytest.fixture(scope="module")
def conv(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++) to build the conversion functions")
    d = tmp_path_factory.mktemp("half")
    (d / "half.cc").write_text(SOURCE)
    # the library's own flags (CMakeLists.txt): no FMA contraction
    cmd = [cxx, "-std=c++17", "-O2", "-ffp-contract=off", "-shared", "-fPIC", f"-I{ROOT / 'custom_ops' / 'include'}",
           str(d / "half.cc"), "-o", str(d / "libhalf.so")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return ctypes.CDLL(str(d / "libhalf.so"))


def to_half_bits(lib, x):
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.empty(x.shape, np.uint16)
    lib.px_f2h(ctypes.c_void_p(x.ctypes.data), ctypes.c_void_p(y.ctypes.data), ctypes.c_int64(x.size))
    return y


def to_float(lib, h):
    h = np.ascontiguousarray(h, dtype=np.uint16)
    y = np.empty(h.shape, np.float32)
    lib.px_h2f(ctypes.c_void_p(h.ctypes.data), ctypes.c_void_p(y.ctypes.data), ctypes.c_int64(h.size))
    return y


def numpy_half_bits(x):
    with np.errstate(over="ignore"):
        return np.asarray(x, np.float32).astype(np.float16).view(np.uint16)


def assert_same_bits(lib, x):
    x = np.asarray(x, np.float32)
    got, want = to_half_bits(lib, x), numpy_half_bits(x)
    bad = np.nonzero(got != want)[0]
    assert bad.size == 0, [(float(x[i]), hex(got[i]), hex(want[i])) for i in bad[:8]]


ALL_HALVES = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
FINITE = ALL_HALVES[(ALL_HALVES & 0x7C00) != 0x7C00]


def test_every_half_converts_to_float_exactly(conv):
    want = ALL_HALVES.view(np.float16).astype(np.float32)
    got = to_float(conv, ALL_HALVES)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))  # NaN payloads and signed zeros too


def test_every_finite_half_round_trips(conv):
    assert np.array_equal(to_half_bits(conv, FINITE.view(np.float16).astype(np.float32)), FINITE)


def test_ties_round_to_even(conv):
    """The exact midpoint between every pair of neighbouring finite halves (normal and
    subnormal, both signs), and the float32 values one ulp either side of it."""
    pos = np.sort(FINITE[FINITE < 0x8000].view(np.float16).astype(np.float64))
    mid = ((pos[:-1] + pos[1:]) / 2).astype(np.float32)  # exact: halves have 11 bits
    assert np.array_equal(mid.astype(np.float64), (pos[:-1] + pos[1:]) / 2)
    ties = np.concatenate([mid, -mid])
    assert_same_bits(conv, ties)
    assert_same_bits(conv, np.nextafter(ties, np.float32(np.inf)))
    assert_same_bits(conv, np.nextafter(ties, np.float32(-np.inf)))
    # the case a half-up rounding gets wrong: 1 + 2^-11 lies between 1 and 1 + 2^-10
    assert to_half_bits(conv, np.float32([1 + 2**-11, 1 + 3 * 2**-11])).tolist() == [0x3C00, 0x3C02]


def test_subnormals_and_underflow(conv):
    tiny = 2.0**-24  # the smallest half subnormal
    x = np.float32([tiny, tiny / 2, tiny / 2 * (1 + 2**-20), tiny * 1.5, tiny * 2.5, 2.0**-14 - tiny / 2, 2.0**-14,
                    1e-45, -1e-45, 1e-40, -tiny / 2, 0.0, -0.0])
    assert_same_bits(conv, x)
    assert to_half_bits(conv, np.float32([tiny / 2, tiny * 1.5, tiny * 2.5])).tolist() == [0, 2, 2]


def test_overflow_infinities_and_nan(conv):
    x = np.float32([65504.0, 65519.0, np.nextafter(np.float32(65520.0), np.float32(0)), 65520.0, 65536.0, 1e38,
                    np.inf, -np.inf, -65504.0, -65520.0, np.finfo(np.float32).max])
    assert_same_bits(conv, x)
    nan = np.float32([np.nan, -np.nan]).view(np.uint32) | np.uint32([0, 1])
    h = to_half_bits(conv, nan.view(np.float32))
    assert np.all((h & 0x7C00) == 0x7C00) and np.all((h & 0x3FF) != 0)  # NaN stays NaN
    assert (h >> 15).tolist() == (nan >> 31).astype(np.uint16).tolist()  # with its sign


def test_random_float32_bit_patterns(conv):
    bits = np.random.default_rng(0).integers(0, 1 << 32, 1_000_000, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    x = x[~np.isnan(x)]
    assert_same_bits(conv, x)
    # and the range fp16 data actually lives in, densely
    assert_same_bits(conv, np.random.default_rng(1).uniform(-70000, 70000, 1_000_000).astype(np.float32))
