"""The adaPool family's CUDA kernels (custom_ops/cuda/ada_kernels.cu), run on the CPU with
their real launch geometry.

kernels.cu (which includes ada_kernels.cu) is compiled as C++ against the CUDA shim of
tests/test_kernels_emulated.py: every thread of the launcher's grid runs, blocks and
threads in a scrambled order, and a test knob caps the grid below the work so that each
thread runs its grid-stride loop several times. Outputs start as NaN, so an element no
thread writes shows. Results are compared with the float64 oracles tests/_ada_oracle.py
and tests/_ada_unpool_oracle.py (written from the definitions, NumPy only); the kernel
parameters (output sizes, Beta's 5-D dims) are computed here from the oracle's windows and
numpy's broadcasting, not by the code under test. tests/test_kernels_cuda.py runs the
same kernels on a GPU.
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

import _ada_oracle as O
import _ada_unpool_oracle as U
from _oracle import windows
from test_kernels_emulated import BLOCK, MAX_GRID, ROOT, SHIM_ABI, SHIM_FP16, SHIM_RUNTIME, _i32, last_launch

OPS = {"edscw": 0, "idw": 1, "ada": 2}
GRID_CAPS = [None, 3]  # None: the launch rule's grid; 3: fewer blocks than the work (grid-stride loops)
EPS = {np.float32: 2.0**-23, np.float16: 2.0**-10}


# kernel_abi.h's host rule for Beta's / a mask's 5-D view (the ORT CUDA kernels use it)
SHIM_DIMS5 = r"""
extern "C" __attribute__((visibility("default"))) void px_emu_broadcast_dims5(const int64_t* shape, int rank,
                                                                               int target_rank, int32_t* dims5) {
  poolexport_broadcast_dims5(shape, rank, target_rank, dims5);
}
"""


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++) to build the emulated CUDA kernels")
    d = tmp_path_factory.mktemp("emu_ada")
    (d / "cuda_runtime.h").write_text(SHIM_RUNTIME)
    (d / "cuda_fp16.h").write_text(SHIM_FP16)
    (d / "abi.cc").write_text(SHIM_ABI + SHIM_DIMS5)
    so = d / "libemu_ada.so"
    cmd = [cxx, "-std=c++17", "-O2", "-ffp-contract=off", "-shared", "-fPIC", "-x", "c++", "-DPOOLEXPORT_HOST_EMULATION",
           f"-I{d}", f"-I{ROOT / 'custom_ops' / 'include'}", f"-I{ROOT / 'custom_ops' / 'cuda'}",
           str(ROOT / "custom_ops" / "cuda" / "kernels.cu"), str(d / "abi.cc"), "-o", str(so)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lib = ctypes.CDLL(str(so))
    ptr, i32p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32)
    lib.poolexport_cuda_launch_ada.argtypes = [ctypes.c_int, ctypes.c_int, ptr, ptr, ptr, i32p, ptr]
    lib.poolexport_cuda_launch_ada.restype = ctypes.c_int
    lib.poolexport_cuda_launch_ada_unpool.argtypes = [ctypes.c_int, ptr, ptr, ptr, ptr, ptr, i32p, ptr]
    lib.poolexport_cuda_launch_ada_unpool.restype = ctypes.c_int
    lib.px_emu_set_grid_cap.argtypes = [ctypes.c_uint]
    lib.px_emu_last_launch.argtypes = [ctypes.POINTER(ctypes.c_uint)]
    yield lib
    lib.px_emu_set_grid_cap(0)


def _cdiv(a, b):
    return -(-a // b)


def _set_cap(lib, cap, total):
    """Cap the emulated grid; returns the grid a launch of ``total`` outputs must have."""
    lib.px_emu_set_grid_cap(cap or 0)
    return min(_cdiv(total, BLOCK), MAX_GRID) if cap is None else min(cap, _cdiv(total, BLOCK))


def dims5(operand_shape, target_rank):
    """An operand's shape in the 5-D view (N, C, d, h, w) of a rank 3-5 target: numpy's
    right alignment, then the missing leading spatial axes inserted as 1."""
    full = [1] * (target_rank - len(operand_shape)) + list(operand_shape)
    return full[:2] + [1] * (5 - target_rank) + full[2:]


def _pad3(v, fill):
    return [fill] * (3 - len(v)) + list(v)


def launch_ada(lib, kind, x, a, beta=None):
    """One launch through poolexport_cuda_launch_ada (p[25] of custom_ops/cuda/launch.h)."""
    k = x.ndim - 2
    out, _ = windows(x.shape[2:], a)
    p = [x.shape[0], x.shape[1], *_pad3(x.shape[2:], 1), *_pad3(out, 1), *_pad3(a["kernel_shape"], 1),
         *_pad3(a.get("strides") or [1] * k, 1), *_pad3(a.get("dilations") or [1] * k, 1),
         *_pad3((a.get("pads") or [0] * (2 * k))[:k], 0)]
    p += dims5(beta.shape, x.ndim) if beta is not None else [1] * 5
    x = np.ascontiguousarray(x)
    y = np.full((*x.shape[:2], *out), np.nan, dtype=x.dtype)  # an output no thread writes stays NaN
    b = np.ascontiguousarray(beta) if beta is not None else None
    arr = (ctypes.c_int32 * len(p))(*[_i32(v) for v in p])
    rc = lib.poolexport_cuda_launch_ada(OPS[kind], int(x.dtype == np.float16), x.ctypes.data,
                                        None if b is None else b.ctypes.data, y.ctypes.data, arr, None)
    assert rc == 0
    return y


def launch_unpool(lib, x, me, mm, beta):
    """One launch through poolexport_cuda_launch_ada_unpool (p[17] of launch.h)."""
    out = me.shape[2:]
    p = [x.shape[0], x.shape[1], *_pad3(x.shape[2:], 1), *_pad3(out, 1), me.shape[0], me.shape[1], mm.shape[0],
         mm.shape[1], *dims5(beta.shape, x.ndim)]
    x, me, mm, beta = (np.ascontiguousarray(t) for t in (x, me, mm, beta))
    y = np.full((*x.shape[:2], *out), np.nan, dtype=x.dtype)
    arr = (ctypes.c_int32 * len(p))(*[_i32(v) for v in p])
    assert lib.poolexport_cuda_launch_ada_unpool(int(x.dtype == np.float16), x.ctypes.data, me.ctypes.data,
                                                 mm.ctypes.data, beta.ctypes.data, y.ctypes.data, arr, None) == 0
    return y


def oracle(kind, x, a, beta=None):
    x = x.astype(np.float64)
    with np.errstate(all="ignore"):
        if kind == "ada":
            return O.ada_forward(x, beta.astype(np.float64), a)
        return {"edscw": O.edscw_forward, "idw": O.idw_forward}[kind](x, a)


def tolerance(kind, x, a, dtype):
    """64 eps max|x| per output (test_ada_pool.py's rule); IDW scaled by its condition
    max|a| / min|a - m| (its weights move with the mean's rounding)."""
    xf = np.nan_to_num(x.astype(np.float64), nan=0, posinf=0, neginf=0)
    tol = 64 * EPS[dtype] * np.abs(xf).max()
    if kind == "idw":
        cond = O.idw_condition(xf, a).reshape(-1)
        return tol * (1 + np.where(np.isfinite(cond), cond, 0.0))
    return np.full(1, tol)


def expect_close(kind, y, want, x, a, dtype):
    assert y.shape == want.shape
    got = y.astype(np.float64).reshape(-1)
    want = want.reshape(-1)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg="NaN where the oracle has none, or an "
                                  "output no thread wrote")
    fin = np.isfinite(want)
    tol = np.broadcast_to(tolerance(kind, x, a, dtype), want.shape)
    err = np.abs(got[fin] - want[fin])
    assert np.all(err <= tol[fin]), f"max err {err.max():.3e}, tol {tol[fin].min():.3e}"


# geometry cases: (x shape, window attrs, beta shapes relative to the output (N, C, *out))
CASES = {
    # 2 x 4 x 17 x 17 = 2312 outputs: 10 blocks of 256
    "k3s2p1": ((2, 4, 33, 34), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "k2s2": ((2, 3, 8, 10), dict(kernel_shape=[2, 2], strides=[2, 2])),
    "dil_asym": ((1, 2, 12, 11), dict(kernel_shape=[3, 2], strides=[1, 2], pads=[2, 0, 1, 1], dilations=[2, 3])),
    # ceil_mode that drops the last window: 15 -> 8 (not 9) and 35 -> 18 (not 19)
    "ceil_drop": ((2, 3, 15, 35), dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)),
    # ceil_mode keeping a clipped last window: 10 -> 5 with a one-position last window
    "ceil_keep": ((1, 2, 10, 9), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    # all-padding windows (pad >= kernel with dilation): output 0
    "pad_only": ((1, 2, 3, 4), dict(kernel_shape=[2, 2], strides=[3, 3], pads=[2, 2, 2, 2], dilations=[1, 1])),
    "1d": ((2, 3, 69), dict(kernel_shape=[3], strides=[2], pads=[1, 2], ceil_mode=1)),
    "3d": ((1, 2, 5, 7, 6), dict(kernel_shape=[2, 3, 3], strides=[1, 2, 2], pads=[1, 1, 1, 0, 1, 1])),
}


def _beta_shapes(out_shape):
    """Beta shapes that broadcast to the output: scalar, one value, the repository's
    per-position mask, per channel, per sample, the full output, rank below the output."""
    n, c, *sp = out_shape
    return [(), (1,), tuple(sp), (c,) + (1,) * len(sp), (n, 1) + (1,) * len(sp), tuple(out_shape),
            (c, *sp), (1,) * (len(sp) - 1) + (sp[-1],)]


def test_header_broadcast_dims5_is_numpy_broadcasting(emu):
    """kernel_abi.h's poolexport_broadcast_dims5 (what the ORT CUDA kernels pass) gives the
    5-D view whose broadcast reads, for every output index, the element numpy's
    broadcast_to gives it."""
    f = emu.px_emu_broadcast_dims5
    f.argtypes = [ctypes.POINTER(ctypes.c_int64), ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int32)]
    for target in [(2, 3, 5), (2, 3, 4, 5), (2, 3, 4, 5, 6)]:
        for shape in _beta_shapes(target) + [(1, 3) + (1,) * (len(target) - 2)]:
            arr = (ctypes.c_int64 * max(1, len(shape)))(*shape)
            out = (ctypes.c_int32 * 5)()
            f(arr, len(shape), len(target), out)
            got = list(out)
            assert got == dims5(shape, len(target)), (shape, target)
            # the kernel's offset rule over the 5-D view equals numpy's broadcast
            vals = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
            want = np.broadcast_to(vals, target).reshape(-1)
            t5 = dims5(target, len(target))
            idx = np.indices(t5).reshape(5, -1)
            off = np.zeros(idx.shape[1], np.int64)
            for i in range(5):
                off = off * got[i] + np.where(got[i] == 1, 0, idx[i])
            np.testing.assert_array_equal(vals.reshape(-1)[off], want)


def test_cases_are_what_they_claim():
    shape, a = CASES["ceil_drop"]
    assert windows(shape[2:], a)[0] == (8, 18)
    shape, a = CASES["k3s2p1"]
    assert shape[0] * shape[1] * np.prod(windows(shape[2:], a)[0]) > 8 * BLOCK
    shape, a = CASES["pad_only"]
    _, idx = windows(shape[2:], a)
    assert (idx < 0).all(-1).any(), "some window holds padding only"


@pytest.mark.parametrize("cap", GRID_CAPS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kind", list(OPS))
def test_ada_kernels_match_float64_oracle(emu, kind, case, dtype, cap):
    shape, a = CASES[case]
    x = (np.random.default_rng(1).standard_normal(shape) * 3).astype(dtype)
    out = windows(shape[2:], a)[0]
    y_shape = (*shape[:2], *out)
    grid = _set_cap(emu, cap, int(np.prod(y_shape)))
    beta = np.random.default_rng(2).uniform(-0.25, 1.25, out).astype(dtype) if kind == "ada" else None
    y = launch_ada(emu, kind, x, a, beta)
    assert last_launch(emu)[:2] == (grid, BLOCK)
    expect_close(kind, y, oracle(kind, x, a, beta), x, a, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("case", ["k3s2p1", "1d", "3d"])
def test_ada_beta_broadcast(emu, case, dtype):
    """Every broadcast form of Beta (numpy rules, right-aligned with the output) reads the
    value the oracle's np.broadcast_to gives each output."""
    emu.px_emu_set_grid_cap(3)
    shape, a = CASES[case]
    x = (np.random.default_rng(3).standard_normal(shape) * 2).astype(dtype)
    y_shape = (*shape[:2], *windows(shape[2:], a)[0])
    for i, bshape in enumerate(_beta_shapes(y_shape)):
        beta = np.random.default_rng(10 + i).uniform(-0.5, 1.5, bshape).astype(dtype)
        y = launch_ada(emu, "ada", x, a, beta)
        expect_close("ada", y, oracle("ada", x, a, beta), x, a, dtype)


def test_ada_beta_picks_edscw_and_em(emu):
    """Beta 1 gives EdscwPool's values and Beta 0 SoftPool's (beta 1) exactly: the blend
    reads the right Beta element and weighs the right pool."""
    emu.px_emu_set_grid_cap(0)
    shape, a = CASES["k3s2p1"]
    x = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    y_shape = (*shape[:2], *windows(shape[2:], a)[0])
    ones = np.ones(y_shape, np.float32)
    np.testing.assert_array_equal(launch_ada(emu, "ada", x, a, ones), launch_ada(emu, "edscw", x, a))
    zeros = np.zeros((1, y_shape[1], 1, 1), np.float32)
    with np.errstate(all="ignore"):
        em = O.em_forward(x.astype(np.float64), a)
    y = launch_ada(emu, "ada", x, a, zeros)
    assert np.abs(y - em).max() <= 64 * EPS[np.float32] * np.abs(x).max()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("kind", list(OPS))
def test_ada_nonfinite(emu, kind, where, value, dtype):
    """inf / NaN at the tensor's first, a middle and the last position: the windows holding
    it give NaN, as the float64 oracle does; every other window keeps its value."""
    emu.px_emu_set_grid_cap(3)
    shape, a = CASES["k3s2p1"]
    x = (np.random.default_rng(5).standard_normal(shape) * 2).astype(dtype)
    flat = x.reshape(-1)
    flat[{"first": 0, "middle": flat.size // 2 + 5, "last": flat.size - 1}[where]] = value
    out = windows(shape[2:], a)[0]
    beta = np.random.default_rng(6).uniform(0, 1, out).astype(dtype) if kind == "ada" else None
    want = oracle(kind, x, a, beta)
    assert np.isnan(want).any() and not np.isnan(want).all()
    expect_close(kind, launch_ada(emu, kind, x, a, beta), want, x, a, dtype)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_ada_nan_beta_reaches_its_output_only(emu, where):
    emu.px_emu_set_grid_cap(3)
    shape, a = CASES["k2s2"]
    x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    beta = np.random.default_rng(8).uniform(0, 1, (*shape[:2], *windows(shape[2:], a)[0])).astype(np.float32)
    bf = beta.reshape(-1)
    bf[{"first": 0, "middle": bf.size // 2, "last": bf.size - 1}[where]] = np.nan
    expect_close("ada", launch_ada(emu, "ada", x, a, beta), oracle("ada", x, a, beta), x, a, np.float32)


@pytest.mark.parametrize("kind", list(OPS))
def test_ada_large_magnitudes(emu, kind):
    """Values up to 3e38 (the scaled path of ada_pool.h: sums of k * a stay finite) and
    1e-38: finite and within tolerance of the oracle."""
    emu.px_emu_set_grid_cap(2)
    shape, a = CASES["k2s2"]
    for scale in (3e38, 1e30, 1e-38):
        x = (np.random.default_rng(9).uniform(-1, 1, shape) * scale).astype(np.float32)
        beta = np.random.default_rng(9).uniform(0, 1, (1,)).astype(np.float32) if kind == "ada" else None
        y = launch_ada(emu, kind, x, a, beta)
        assert np.isfinite(y).all()
        expect_close(kind, y, oracle(kind, x, a, beta), x, a, np.float32)


# ---------------------------------------------------------------- AdaUnpool
UNPOOL_CASES = {
    # X shape, mask spatial, (N, C) of MaskEdscw and of MaskEm (each 1 or X's), Beta shape
    "2d_ratio2": ((2, 3, 7, 9), (14, 18), (1, 1, 2, 1), (1, 1, 7, 9)),
    "2d_ratio_frac": ((2, 3, 5, 6), (13, 11), (2, 3, 1, 3), (3, 1, 1)),
    "2d_equal": ((1, 2, 4, 5), (4, 5), (1, 2, 1, 1), (1, 2, 4, 5)),
    "1d": ((2, 3, 11), (29,), (2, 1, 2, 3), (11,)),
    "3d": ((1, 2, 3, 4, 5), (5, 8, 7), (1, 2, 1, 2), ()),
    # 3 x 5 x 34 x 35 = 17850 outputs: 70 blocks
    "2d_many": ((3, 5, 17, 20), (34, 35), (3, 5, 3, 1), (5, 17, 20)),
}


def _unpool_inputs(case, dtype, seed=0):
    xs, out, (en, ec, mn, mc), bshape = UNPOOL_CASES[case]
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(xs) * 2).astype(dtype)
    me = rng.uniform(-0.2, 1.2, (en, ec, *out)).astype(dtype)  # clip's both sides
    mm = rng.uniform(-0.2, 1.2, (mn, mc, *out)).astype(dtype)
    beta = rng.uniform(-0.25, 1.25, bshape).astype(dtype)
    return x, me, mm, beta


def _unpool_expect(y, x, me, mm, beta, dtype):
    with np.errstate(all="ignore"):
        want = U.forward_per_cell(*(t.astype(np.float64) for t in (x, me, mm, beta)))
    got = y.astype(np.float64)
    assert got.shape == want.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    fin = np.isfinite(want)
    xf = np.nan_to_num(x.astype(np.float64), nan=0, posinf=0, neginf=0)
    # |Beta| <= 1.25: t within 1.5 of [0, 1]; 16 eps of the largest product
    tol = 16 * EPS[dtype] * 1.5 * np.abs(xf).max() + (2.0**-24 if dtype == np.float16 else 0.0)
    np.testing.assert_array_less(np.abs(got[fin] - want[fin]), tol)


@pytest.mark.parametrize("cap", GRID_CAPS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("case", list(UNPOOL_CASES))
def test_ada_unpool_kernel_matches_float64_oracle(emu, case, dtype, cap):
    x, me, mm, beta = _unpool_inputs(case, dtype)
    total = x.shape[0] * x.shape[1] * int(np.prod(me.shape[2:]))
    grid = _set_cap(emu, cap, total)
    y = launch_unpool(emu, x, me, mm, beta)
    assert last_launch(emu)[:2] == (grid, BLOCK)
    _unpool_expect(y, x, me, mm, beta, dtype)


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("tensor", ["x", "me", "beta"])
def test_ada_unpool_nonfinite(emu, tensor, where, value):
    """inf / NaN in X, MaskEdscw or Beta at the first, a middle, the last position: +-inf
    or NaN exactly where the per-cell form has them (an inf cell reaches only the outputs
    that read it; a mask's inf is clipped to 1), the rest accurate."""
    emu.px_emu_set_grid_cap(3)
    x, me, mm, beta = _unpool_inputs("2d_ratio_frac", np.float32, seed=4)
    beta = np.random.default_rng(5).uniform(0, 1, x.shape[1:]).astype(np.float32)  # Beta in [0, 1]: inf * t > 0
    t = {"x": x, "me": me, "beta": beta}[tensor]
    flat = t.reshape(-1)
    flat[{"first": 0, "middle": flat.size // 2 + 1, "last": flat.size - 1}[where]] = value
    _unpool_expect(launch_unpool(emu, x, me, mm, beta), x, me, mm, beta, np.float32)


def test_ada_unpool_finite_at_float32_max(emu):
    """Two cells of 3.4e38 averaged: 3.4e38 (the per-cell form), not inf."""
    emu.px_emu_set_grid_cap(0)
    x = np.full((1, 1, 2, 2), 3.4e38, np.float32)
    me = np.ones((1, 1, 3, 3), np.float32)
    y = launch_unpool(emu, x, me, me.copy(), np.full((1,), 0.5, np.float32))
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, np.float32(3.4e38), rtol=1e-6)
