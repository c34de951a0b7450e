"""The CPU kernels' instruction-set paths (issue 13): AVX-512, AVX2 + FMA and portable C++.

SoftPool's window forms run one kernel (custom_ops/ort/soft_shared.inc) written once over
a lane type and compiled per instruction set. POOLEXPORT_CPU_ISA caps the path at run time
(never above what the CPU has) and the library's ``poolexport_cpu_isa()`` reports the path
in use, so each test here runs every path this CPU has against float64 references. A path
the CPU lacks is skipped with the reason; the AVX-512 lanes also run here, emulated, when
POOLEXPORT_SIMDE_INCLUDE names a SIMDe checkout (test_avx512_lanes_under_simde_emulation).
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

import _reference as ref
from _cpu import cpu_flags, cpu_paths
from poolexport import ort as pxort

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["avx512", "avx2", "portable"]
RANK = {p: i for i, p in enumerate(reversed(PATHS))}  # portable 0 < avx2 1 < avx512 2


def best_path() -> str:
    if os.environ.get("POOLEXPORT_EMULATED_AVX512") == "1":  # the SIMDe build below
        return "avx512"
    return cpu_paths()[-1]


def library():
    lib = ctypes.CDLL(pxort.get_library_path())
    lib.poolexport_cpu_isa.restype = ctypes.c_char_p
    lib.poolexport_cpu_exp_shifted.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    return lib


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    """Pins the library to one path; skips a path this CPU does not have."""
    if RANK[request.param] > RANK[best_path()]:
        pytest.skip(f"this CPU lacks the {request.param} path's instructions (it runs {best_path()}); "
                    "that path is tested where the CPU has it, and emulated by "
                    "test_avx512_lanes_under_simde_emulation when POOLEXPORT_SIMDE_INCLUDE is set")
    monkeypatch.setenv("POOLEXPORT_CPU_ISA", request.param)
    assert library().poolexport_cpu_isa().decode() == request.param
    return request.param


def test_the_library_reports_its_path_and_the_cap_never_raises_it(monkeypatch):
    lib = library()
    monkeypatch.delenv("POOLEXPORT_CPU_ISA", raising=False)
    assert lib.poolexport_cpu_isa().decode() == best_path()
    for cap in PATHS:
        monkeypatch.setenv("POOLEXPORT_CPU_ISA", cap)
        want = cap if RANK[cap] <= RANK[best_path()] else best_path()
        assert lib.poolexport_cpu_isa().decode() == want


# ----------------------------------------------------------------------------- exp
def exp_ulps(t: np.ndarray, got: np.ndarray) -> np.ndarray:
    """|got - exp(t)| in units of the last place of exp(t) (float64 reference)."""
    want = np.exp(t.astype(np.float64))
    ulp = np.ldexp(1.0, np.frexp(want)[1] - 24)  # want = m * 2^e, m in [0.5, 1): ulp = 2^(e-24)
    return np.abs(got.astype(np.float64) - want) / ulp


def exp_arguments(stride: int) -> np.ndarray:
    """Every stride-th float32 in [-60, 0] (by bit pattern), plus the ends and the points
    where the reduction's rounding of t / ln 2 changes (half-integers times ln 2)."""
    top = np.float32(-60.0).view(np.uint32)
    bits = np.arange(np.uint32(0x80000000), top + np.uint32(1), stride, dtype=np.uint32)
    k = np.arange(0, 87) + 0.5
    ties = (-k * np.log(2.0)).astype(np.float32)
    ties = np.concatenate([ties, np.nextafter(ties, np.float32(0)), np.nextafter(ties, np.float32(-100))])
    t = np.concatenate([bits.view(np.float32), ties, np.float32([0.0, -0.0, -60.0])])
    return t[(t >= -60.0) & (t <= 0.0)].astype(np.float32)


def test_exp_within_2_ulp_of_float64(path):
    lib = library()
    t = exp_arguments(61)  # ~18 million arguments
    out = np.empty_like(t)
    lib.poolexport_cpu_exp_shifted(t.ctypes.data, out.ctypes.data, t.size)
    ulps = exp_ulps(t, out)
    worst = int(np.argmax(ulps))
    # README: every float in [-60, 0] measured by benchmarks/exp_error.py
    assert ulps[worst] <= 2.0, f"{path}: {ulps[worst]:.2f} ulp at t = {t[worst]!r}"
    # tails of the vector loop: lengths that are not a multiple of 8 or 16
    for n in (1, 7, 9, 15, 17, 31):
        part = np.full(n + 1, np.float32(7.0))  # the sentinel past n must stay untouched
        arg = t[:n].copy()
        lib.poolexport_cpu_exp_shifted(arg.ctypes.data, part.ctypes.data, n)
        np.testing.assert_array_equal(part[:n], out[:n])
        assert part[n] == 7.0


# ------------------------------------------------------------------------ SoftPool
def soft_node(elem, attrs, beta=None):
    x = helper.make_tensor_value_info("X", elem, None)
    y = helper.make_tensor_value_info("Y", elem, None)
    if beta is not None:
        attrs = {**attrs, "beta": float(beta)}
    node = helper.make_node("SoftPool", ["X"], ["Y"], domain="poolexport", **attrs)
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("poolexport", 1)]
    return helper.make_model(helper.make_graph([node], "soft", [x], [y]), opset_imports=opsets, ir_version=10)


def run_soft(x, attrs, beta=None, threads=1):
    elem = TensorProto.FLOAT if x.dtype == np.float32 else TensorProto.FLOAT16
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return pxort.session(soft_node(elem, attrs, beta).SerializeToString(), options=so).run(None, {"X": x})[0]


def soft_reference(x, attrs, beta=1.0):
    return ref.pool(x, lambda v, _e: ref.soft_window(v, beta), attrs["kernel_shape"], attrs.get("strides"),
                    attrs.get("pads"), attrs.get("dilations"), bool(attrs.get("ceil_mode", 0)))


# windows with and without shared rows and columns, every horizontal path of the kernel
# (stride 1, stride 2 pairs, stride 2 dilated, stride 3 phases), rows longer than one
# vector with ragged tails, ceil_mode windows that hang past the input, 1-D and 3-D
GEOMETRIES = [
    ("1-D k3 s1 p1", (2, 3, 41), dict(kernel_shape=[3], strides=[1], pads=[1, 1])),
    ("2-D k2 s2", (1, 3, 18, 37), dict(kernel_shape=[2, 2], strides=[2, 2])),
    ("2-D k3 s2 p1", (1, 2, 23, 45), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ("2-D k3 s1 p1", (1, 2, 19, 21), dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])),
    ("2-D k4 s2 p1", (1, 2, 17, 40), dict(kernel_shape=[4, 4], strides=[2, 2], pads=[1, 2, 1, 2])),
    ("2-D k3 s2 d2", (1, 2, 21, 43), dict(kernel_shape=[3, 3], strides=[2, 2], dilations=[2, 2])),
    ("2-D k5 s3 p2", (1, 2, 26, 70), dict(kernel_shape=[5, 5], strides=[3, 3], pads=[2, 2, 2, 2])),
    ("2-D k2x3 s2x1 ceil", (1, 2, 15, 33), dict(kernel_shape=[2, 3], strides=[2, 1], ceil_mode=1)),
    ("2-D k3 s2 ceil", (1, 2, 16, 34), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    ("3-D k2 s2", (1, 2, 6, 10, 19), dict(kernel_shape=[2, 2, 2], strides=[2, 2, 2])),
    ("3-D k3 s2 p1", (1, 1, 7, 9, 18), dict(kernel_shape=[3, 3, 3], strides=[2, 2, 2], pads=[1, 1, 1, 1, 1, 1])),
]


def inputs(shape, kind, rng):
    x = rng.standard_normal(shape)
    if kind == "wide":  # range of beta*x far above 60: every block takes the per-window path
        x = x * 100
    elif kind == "one wide block":  # one element 80 above the rest: only its blocks fall back
        x.reshape(-1)[x.size // 3] = 80.0
    elif kind == "1e4 mixed signs":
        x = ref.large_magnitude_input(shape, seed=int(rng.integers(1 << 30)))
    return x.astype(np.float32)


@pytest.mark.parametrize("kind", ["normal", "wide", "one wide block", "1e4 mixed signs"])
@pytest.mark.parametrize("name,shape,attrs", GEOMETRIES, ids=[g[0] for g in GEOMETRIES])
def test_soft_pool_equals_float64_on_every_path(path, name, shape, attrs, kind):
    x = inputs(shape, kind, np.random.default_rng(len(name) * 7 + len(kind)))
    got = run_soft(x, attrs)
    want = soft_reference(x, attrs)
    scale = np.maximum(1.0, np.abs(want))
    assert np.all(np.isfinite(got))
    np.testing.assert_array_less(np.abs(got - want) / scale, 2e-5, err_msg=f"{path} {name} {kind}")


@pytest.mark.parametrize("beta", [-1.5, 0.0, 0.25, 8.0])
def test_soft_pool_beta_on_every_path(path, beta):
    attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    x = np.random.default_rng(3).standard_normal((1, 2, 20, 35)).astype(np.float32) * 3
    got = run_soft(x, attrs, beta)
    want = soft_reference(x, attrs, beta)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("name,shape,attrs", GEOMETRIES[1:4], ids=[g[0] for g in GEOMETRIES[1:4]])
def test_soft_pool_float16_on_every_path(path, name, shape, attrs):
    x = (np.random.default_rng(5).standard_normal(shape) * 2).astype(np.float16)
    got = run_soft(x, attrs)
    want = soft_reference(x.astype(np.float32), attrs)
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=2e-3, atol=2e-3)


def test_nan_reaches_exactly_the_windows_that_hold_it(path):
    attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    x = np.random.default_rng(9).standard_normal((1, 1, 20, 30)).astype(np.float32)
    x[0, 0, 9, 13] = np.nan  # in 2 x 2 windows
    got = run_soft(x, attrs)
    holds = np.zeros(got.shape, bool)
    for o, positions in ref.windows(x.shape[2:], [3, 3], [2, 2], [1, 1, 1, 1], [1, 1]):
        holds[(0, 0, *o)] = (9, 13) in [tuple(p) for p in positions]
    assert np.all(np.isnan(got[holds])) and holds.sum() == 4
    np.testing.assert_allclose(got[~holds], soft_reference(np.nan_to_num(x), attrs)[~holds], rtol=2e-5, atol=2e-6)


def test_results_do_not_depend_on_the_thread_count(path):
    attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    x = inputs((2, 8, 40, 72), "one wide block", np.random.default_rng(11))
    np.testing.assert_array_equal(run_soft(x, attrs, threads=1), run_soft(x, attrs, threads=2))


# -------------------------------------------------- the AVX-512 lanes, emulated by SIMDe
def test_avx512_lanes_under_simde_emulation(tmp_path):
    """Builds the library with cpu_simd.h's AVX-512 intrinsics served by SIMDe (portable
    emulations of each intrinsic) and the path forced on, then runs this file's SoftPool
    tests and the ORT op parity tests on it. Needs POOLEXPORT_SIMDE_INCLUDE: the folder
    that holds simde/x86/avx512.h (github.com/simd-everywhere/simde)."""
    simde = os.environ.get("POOLEXPORT_SIMDE_INCLUDE")
    if not simde or not Path(simde, "simde", "x86", "avx512.h").exists():
        pytest.skip("POOLEXPORT_SIMDE_INCLUDE (a SIMDe checkout, to emulate AVX-512 on a CPU without it) is not set")
    if not shutil.which("cmake") or not shutil.which("gcc"):
        pytest.skip("cmake or gcc missing")
    if "avx2" not in cpu_flags():
        pytest.skip("the emulated build still runs the AVX2 lanes natively; this CPU lacks AVX2")
    from test_ort_asan import build_library

    src = tmp_path / "src"
    shutil.copytree(ROOT / "custom_ops", src / "custom_ops")
    shutil.copy(ROOT / "CMakeLists.txt", src)
    simd = src / "custom_ops" / "ort" / "cpu_simd.h"
    text = simd.read_text()
    for old, new in [
        ("#include <immintrin.h>", '#include <immintrin.h>\n#define SIMDE_ENABLE_NATIVE_ALIASES\n#include "simde/x86/avx512.h"'),
        ('#define PX_TARGET_AVX512 __attribute__((target("avx512f,avx2,fma")))', "#define PX_TARGET_AVX512"),
        ('__builtin_cpu_supports("avx512f")', "true"),
    ]:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    simd.write_text(text)
    lib = build_library(tmp_path / "build", "-DCMAKE_BUILD_TYPE=Release", f"-DCMAKE_CXX_FLAGS=-I{simde}",
                        source=src)
    env = dict(os.environ, POOLEXPORT_ORT_LIBRARY=str(lib), POOLEXPORT_CPU_ISA="avx512", POOLEXPORT_EMULATED_AVX512="1")
    tests = [str(Path(__file__)) + "::" + t for t in ("test_exp_within_2_ulp_of_float64",
                                                        "test_soft_pool_equals_float64_on_every_path",
                                                        "test_soft_pool_beta_on_every_path",
                                                        "test_soft_pool_float16_on_every_path",
                                                        "test_nan_reaches_exactly_the_windows_that_hold_it")]
    ops = str(Path(__file__).with_name("test_ort_ops.py"))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "avx512 or test_ort_ops",
                           *tests, ops + "::test_soft_pool_matches_float64_and_torch",
                           ops + "::test_soft_pool_large_inputs_finite", ops + "::test_library_matches_local_function_fallback"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    passed = re.search(r"(\d+) passed", proc.stdout)
    # this file's avx512 cases (none skipped) and the op parity tests on the avx512 path
    assert passed and int(passed.group(1)) >= 100 and "skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-2000:]
    print(proc.stdout.splitlines()[-1])


def test_float16_converts_bit_for_bit(path):
    """fp16 rows in and out of the kernel (F16C on the vector paths): with beta = 0 the
    1 x 1 window returns its input exactly (every finite half, subnormals and -0
    included), and the 1 x 2 window returns the exact mean of two halves, often a tie
    that must round to even as NumPy does."""
    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    finite = halves[np.isfinite(halves)]
    x = np.resize(finite, 256 * 248).reshape(1, 1, 256, 248)
    got = run_soft(x, dict(kernel_shape=[1, 1]), beta=0.0)
    np.testing.assert_array_equal(got.view(np.uint16), x.view(np.uint16))
    # neighbours in bit order: their mean is a tie of the next finer grid
    # a stable sort: NumPy's SIMD quicksort on AVX-512 CPUs returned -0 twice (dropping +0),
    # which made a (-0, -0) window whose sign no longer tested the conversion
    pairs = np.sort(finite[np.abs(finite) < 30000].astype(np.float32), kind="stable").astype(np.float16)
    x2 = np.resize(pairs, 128 * 512).reshape(1, 1, 128, 512)
    got2 = run_soft(x2, dict(kernel_shape=[1, 2], strides=[1, 2]), beta=0.0)
    a, b = x2[..., 0::2].astype(np.float32), x2[..., 1::2].astype(np.float32)
    want = ((a + b) / np.float32(2)).astype(np.float16)
    np.testing.assert_array_equal(got2.view(np.uint16), want.view(np.uint16))
