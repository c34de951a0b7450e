"""The adaPool family's CUDA backward kernels (custom_ops/cuda/ada_backward.cu, included by
backward.cu), run on the CPU with their real launch geometry.

backward.cu is compiled as C++ against the CUDA shim of tests/test_kernels_emulated.py:
every thread of the launcher's grids runs (blocks and threads in a scrambled order), and a
knob caps the grid below the work so that each thread runs its grid-stride loop several
times. dX and the dBeta terms start as NaN, so an element no thread writes shows.
References: the float64 oracles of tests/_ada_oracle.py (closed-form derivatives written
from the definitions, NumPy only) and, for the scaled path, the pure-torch backward of
poolexport/ops/ada_pool.py in float64. The launch parameters (output sizes, Beta's 5-D
dims) are computed here from the oracle's windows and numpy's broadcasting.
tests/test_ada_cuda_torch.py runs the same kernels on a GPU through the torch ops.
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest
import torch

import _ada_oracle as O
from _oracle import windows
from test_kernels_emulated import BLOCK, MAX_GRID, ROOT, SHIM_FP16, SHIM_RUNTIME, _i32, last_launch
from test_backward_emulated import build_backward_emulation
from test_kernels_emulated_ada import CASES, _beta_shapes, dims5

from poolexport.ops import _native, ada_pool as A

OPS = {"edscw": 0, "idw": 1, "ada": 2}
STATE_FLOATS = {0: 5, 1: 7, 2: 10}  # backward.h: workspace floats per output
GRID_CAPS = [None, 3]
EPS = {np.float32: 2.0**-23, np.float16: 2.0**-10}
FLT_MAX = float(np.finfo(np.float32).max)


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    lib = build_backward_emulation(tmp_path_factory, "emu_ada_backward")
    vp, i32p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32)
    lib.poolexport_cuda_launch_ada_backward.argtypes = [ctypes.c_int, ctypes.c_int, vp, vp, vp, vp, vp, vp, i32p, vp]
    lib.poolexport_cuda_launch_ada_backward.restype = ctypes.c_int
    lib.poolexport_cuda_ada_backward_workspace.argtypes = [ctypes.c_int]
    yield lib
    lib.px_emu_set_grid_cap(0)


def _pad3(v, fill):
    return [fill] * (3 - len(v)) + list(v)


def params(x_shape, a, beta_shape=None):
    k = len(x_shape) - 2
    out, _ = windows(x_shape[2:], a)
    p = [x_shape[0], x_shape[1], *_pad3(x_shape[2:], 1), *_pad3(out, 1), *_pad3(a["kernel_shape"], 1),
         *_pad3(a.get("strides") or [1] * k, 1), *_pad3(a.get("dilations") or [1] * k, 1),
         *_pad3((a.get("pads") or [0] * (2 * k))[:k], 0)]
    p += dims5(beta_shape, len(x_shape)) if beta_shape is not None else [1] * 5
    return p, (*x_shape[:2], *out)


def launch_backward(lib, kind, x, a, g, beta=None):
    """(dX, dBeta terms or None) from poolexport_cuda_launch_ada_backward (backward.h)."""
    p, y_shape = params(x.shape, a, None if beta is None else beta.shape)
    assert g.shape == y_shape
    code = OPS[kind]
    assert lib.poolexport_cuda_ada_backward_workspace(code) == STATE_FLOATS[code]
    x, g = np.ascontiguousarray(x), np.ascontiguousarray(g)
    b = None if beta is None else np.ascontiguousarray(beta)
    ws = np.full(STATE_FLOATS[code] * max(g.size, 1), np.nan, np.float32)
    terms = np.full(y_shape if kind == "ada" else (1,), np.nan, np.float32)
    dx = np.full(x.shape, np.nan, dtype=x.dtype)
    arr = (ctypes.c_int32 * 25)(*[_i32(v) for v in p])
    rc = lib.poolexport_cuda_launch_ada_backward(code, int(x.dtype == np.float16), x.ctypes.data,
                                                 None if b is None else b.ctypes.data, g.ctypes.data, dx.ctypes.data,
                                                 terms.ctypes.data, ws.ctypes.data, arr, None)
    assert rc == 0
    return dx, (terms if kind == "ada" else None)


def oracle_dx(kind, x, a, g, beta=None):
    x, g = x.astype(np.float64), g.astype(np.float64)
    with np.errstate(all="ignore"):
        if kind == "ada":
            return O.ada_backward(x, beta.astype(np.float64), a, g)[0]
        return {"edscw": O.edscw_backward, "idw": O.idw_backward}[kind](x, a, g)


def oracle_terms(x, a, g):
    """(eDSCW - eM) * g per output, float64."""
    x = x.astype(np.float64)
    with np.errstate(all="ignore"):
        return (O.edscw_forward(x, a) - O.em_forward(x, a)) * g.astype(np.float64)


def dbeta_from_terms(terms, beta_shape):
    """The wrapper's reduction (_native_ada_cuda.backward): sum over Beta's broadcast axes."""
    return torch.from_numpy(terms.astype(np.float64)).sum_to_size(beta_shape).numpy()


def window_condition(kind, x, a):
    """Per output: how far a float32 rounding of the window's mean moves the gradient, in
    units of its size: max |a| / min |a_i - m| for IDW (its weights' derivatives), max |a| /
    |m| for eDSCW (dDSC/dm turns over at m = 0, the |.| kink), capped at 2^23 (where the
    float32 mean has no correct bit left the error is O(1)); 1 for eM."""
    xf = np.nan_to_num(x.astype(np.float64), nan=0, posinf=0, neginf=0)
    if kind == "idw":
        cond = O.idw_condition(xf, a)
    else:
        with np.errstate(all="ignore"):
            _, p = O.edscw_forward(xf, a, with_parts=True)
        amax = np.where(p["valid"], np.abs(p["a"]), 0.0).max(-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            cond = np.where(amax > 0, amax / np.abs(p["m"][..., 0]), 0.0).reshape(x.shape[0], x.shape[1], -1)
    return 1.0 + np.minimum(np.nan_to_num(cond, nan=0.0, posinf=2.0**23), 2.0**23)


def grad_scale(kind, x, a, g):
    """Per input element: sum over the windows holding it of |g| times the window's
    condition (window_condition; adaPool: eDSCW's, plus 1 for its eM part): the size an
    error of a few float32 ulps per term can reach."""
    _, idx = windows(x.shape[2:], a)
    n, c = x.shape[:2]
    cond = window_condition("idw" if kind == "idw" else "edscw", x, a) + (1.0 if kind == "ada" else 0.0)
    w = np.abs(g.astype(np.float64)).reshape(n, c, -1) * cond
    scale = np.zeros((n, c, int(np.prod(x.shape[2:]))))
    for kk in range(idx.shape[1]):
        col = idx[:, kk] >= 0
        for i in range(n):
            for j in range(c):
                np.add.at(scale[i, j], idx[col, kk], w[i, j, col])
    return scale.reshape(x.shape)


def expect_close(got, want, scale, dtype, what="dX"):
    """|got - want| <= 16 float32 ulps of ``scale`` (the kernels compute in float32) plus 8
    subnormal ulps, plus for float16 storage the rounding of the result (2^-11 relative,
    2^-24 absolute)."""
    got = got.astype(np.float64)
    assert got.shape == want.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN where the oracle has none, "
                                  "or an element no thread wrote")
    fin = np.isfinite(want)
    np.testing.assert_array_equal(got[~fin], want[~fin])
    tol = 16 * 2.0**-23 * scale + 2.0**-146
    if dtype == np.float16:
        tol = tol + 2.0**-11 * np.abs(want) + 2.0**-24
    err = np.abs(got[fin] - want[fin])
    bad = err > np.broadcast_to(tol, want.shape)[fin]
    assert not bad.any(), f"{what}: {bad.sum()} elements off, max err {err.max():.3e}"


def inputs(case, dtype, kind, seed=1, beta_shape="out"):
    shape, a = CASES[case]
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    y_shape = (*shape[:2], *windows(shape[2:], a)[0])
    g = rng.standard_normal(y_shape).astype(dtype)
    beta = None
    if kind == "ada":
        beta = rng.uniform(-0.25, 1.25, y_shape[2:] if beta_shape == "out" else beta_shape).astype(dtype)
    return x, a, g, beta


def check(emu, kind, x, a, g, beta, dtype):
    dx, terms = launch_backward(emu, kind, x, a, g, beta)
    expect_close(dx, oracle_dx(kind, x, a, g, beta), grad_scale(kind, x, a, g), dtype)
    if kind == "ada":
        xf = np.nan_to_num(x.astype(np.float64), nan=0, posinf=0, neginf=0)
        want = oracle_terms(x, a, g)
        # a term beyond float32's range is +-inf (e - s itself may exceed it and still be finite times a small g)
        over = np.abs(want) > FLT_MAX
        np.testing.assert_array_equal(terms[over], np.sign(want[over]) * np.inf)
        want = np.where(over, terms, want)
        expect_close(terms, want, np.abs(g.astype(np.float64)) * 4 * np.abs(xf).max(), np.float32, "dBeta terms")
        with np.errstate(all="ignore"):
            _, want_db = O.ada_backward(x.astype(np.float64), beta.astype(np.float64), a, g.astype(np.float64))
        db = dbeta_from_terms(terms, beta.shape)
        assert db.shape == beta.shape
        # (float64 sums: inf or NaN from inf terms where the float64 oracle's sum is finite)
        kept = dbeta_from_terms(over.astype(np.float64), beta.shape) == 0
        np.testing.assert_array_equal(np.isnan(db[kept]), np.isnan(want_db[kept]))
        fin = np.isfinite(want_db) & kept
        bound = dbeta_from_terms(np.abs(np.nan_to_num(want, nan=0, posinf=0, neginf=0)) + np.abs(g.astype(np.float64))
                                 * np.abs(xf).max(), beta.shape)
        assert np.all(np.abs(db - want_db)[fin] <= (64 * EPS[np.float32] * bound)[fin])
    return dx, terms


def test_cases_cover_what_the_brief_needs():
    assert set(CASES) >= {"k3s2p1", "k2s2", "dil_asym", "ceil_drop", "ceil_keep", "pad_only", "1d", "3d"}
    assert CASES["k3s2p1"][1]["strides"] == [2, 2]  # overlapping windows; k3s1 below


@pytest.mark.parametrize("cap", GRID_CAPS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kind", list(OPS))
def test_ada_backward_matches_float64_oracle(emu, kind, case, dtype, cap):
    x, a, g, beta = inputs(case, dtype, kind)
    inputs_total, outputs_total = x.size, g.size
    emu.px_emu_set_grid_cap(cap or 0)
    check(emu, kind, x, a, g, beta, dtype)
    # the last launch is the gather: one thread per input element
    want = min(-(-inputs_total // BLOCK), MAX_GRID) if cap is None else min(cap, -(-inputs_total // BLOCK))
    assert last_launch(emu)[:2] == (want, BLOCK)
    assert outputs_total > 0


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("kind", list(OPS))
def test_ada_backward_stride_one_overlap(emu, kind, dtype):
    """k3s1: every interior element lies in 9 windows (2-D) / 27 (3-D)."""
    emu.px_emu_set_grid_cap(2)
    rng = np.random.default_rng(11)
    for shape, a in (((2, 3, 9, 8), dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])),
                     ((1, 2, 5, 6, 4), dict(kernel_shape=[3, 3, 3], strides=[1, 1, 1]))):
        x = rng.standard_normal(shape).astype(dtype)
        y_shape = (*shape[:2], *windows(shape[2:], a)[0])
        g = rng.standard_normal(y_shape).astype(dtype)
        beta = rng.uniform(0, 1, (1,) * len(y_shape)).astype(dtype) if kind == "ada" else None
        check(emu, kind, x, a, g, beta, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("case", ["k3s2p1", "1d", "3d"])
def test_ada_backward_every_beta_broadcast(emu, case, dtype):
    """Each Beta broadcast form: the right Beta element weighs each window's gradient and
    dBeta sums the terms over exactly Beta's broadcast axes."""
    emu.px_emu_set_grid_cap(3)
    shape, a = CASES[case]
    y_shape = (*shape[:2], *windows(shape[2:], a)[0])
    for i, bshape in enumerate(_beta_shapes(y_shape)):
        x, a, g, beta = inputs(case, dtype, "ada", seed=20 + i, beta_shape=bshape)
        check(emu, "ada", x, a, g, beta, dtype)


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("kind", list(OPS))
def test_ada_backward_nonfinite(emu, kind, where, value):
    """inf / NaN at the tensor's first, a middle and the last position: NaN gradients for
    every element of the windows holding it (as the float64 oracle), the rest accurate."""
    emu.px_emu_set_grid_cap(3)
    x, a, g, beta = inputs("k3s2p1", np.float32, kind, seed=5)
    flat = x.reshape(-1)
    flat[{"first": 0, "middle": flat.size // 2 + 5, "last": flat.size - 1}[where]] = value
    want = oracle_dx(kind, x, a, g, beta)
    assert np.isnan(want).any() and not np.isnan(want).all()
    check(emu, kind, x, a, g, beta, np.float32)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_ada_backward_nan_beta_reaches_its_windows_only(emu, where):
    emu.px_emu_set_grid_cap(3)
    x, a, g, beta = inputs("k2s2", np.float32, "ada", seed=7)
    bf = beta.reshape(-1)
    bf[{"first": 0, "middle": bf.size // 2, "last": bf.size - 1}[where]] = np.nan
    dx, _ = check(emu, "ada", x, a, g, beta, np.float32)
    assert np.isnan(dx).sum() == 4 * x.shape[0] * x.shape[1]  # k2s2: one window of 4 per plane


def _torch_backward(kind, x, a, g, beta=None):
    """The pure-torch backward (ada_pool.py) in float64 on the CPU: (dX, dBeta)."""
    k = x.ndim - 2
    attrs = (a["kernel_shape"], a.get("strides") or [1] * k, a.get("pads") or [0] * (2 * k),
             a.get("dilations") or [1] * k, bool(a.get("ceil_mode", 0)), "NOTSET")
    xt, gt = torch.from_numpy(x.astype(np.float64)), torch.from_numpy(g.astype(np.float64))
    with _native.reference_kernels():
        if kind == "ada":
            dx, db = A.ada_backward(gt, xt, torch.from_numpy(beta.astype(np.float64)), attrs)
            return dx.numpy(), db.numpy()
        fn = {"edscw": A.edscw_windows_backward, "idw": A.idw_windows_backward}[kind]
        return A._window_backward(A.OPS[f"{kind}_pool"], fn, gt, xt, attrs).numpy(), None


@pytest.mark.parametrize("kind", list(OPS))
@pytest.mark.parametrize("ulps", [-1, 0, 1])
def test_ada_backward_at_the_scale_limit(emu, kind, ulps):
    """max |a| at 2^64 - 1 ulp, 2^64 and 2^64 + 1 ulp (ada_pool.h's kSoftScaleAbove: only
    the last sums scaled by 2^-64): the gradients are scale-free, finite and match the
    pure-torch backward in float64 and the oracle on either side of the switch."""
    emu.px_emu_set_grid_cap(2)
    limit = np.float32(2.0**64)
    top = {-1: np.nextafter(limit, np.float32(0)), 0: limit, 1: np.nextafter(limit, np.float32(np.inf))}[ulps]
    shape, a = CASES["k3s2p1"]
    rng = np.random.default_rng(12)
    x = (rng.uniform(-1, 1, shape) * top).astype(np.float32)
    x.reshape(-1)[::7] = top
    y_shape = (*shape[:2], *windows(shape[2:], a)[0])
    g = rng.standard_normal(y_shape).astype(np.float32)
    beta = rng.uniform(0, 1, y_shape[1:]).astype(np.float32) if kind == "ada" else None
    dx, terms = launch_backward(emu, kind, x, a, g, beta)
    assert np.isfinite(dx).all()
    want, want_db = _torch_backward(kind, x, a, g, beta)
    expect_close(dx, want, grad_scale(kind, x, a, g), np.float32)
    expect_close(dx, oracle_dx(kind, x, a, g, beta), grad_scale(kind, x, a, g), np.float32)
    if kind == "ada":
        db = dbeta_from_terms(terms, beta.shape)
        assert np.isfinite(db).all()
        bound = dbeta_from_terms(np.abs(g.astype(np.float64)) * float(top), beta.shape)
        assert np.all(np.abs(db - want_db) <= 64 * EPS[np.float32] * bound)


@pytest.mark.parametrize("scale", [3e38, 1e30, 1e-38])
@pytest.mark.parametrize("kind", list(OPS))
def test_ada_backward_large_and_tiny_magnitudes(emu, kind, scale):
    """Values up to 3e38, where unscaled sums of a window overflow (the scaled path), and
    1e-38 (subnormal differences): finite gradients within tolerance of the oracle."""
    emu.px_emu_set_grid_cap(2)
    x, a, g, beta = inputs("k3s2p1", np.float32, kind, seed=14)
    x = (np.random.default_rng(15).uniform(-1, 1, x.shape) * scale).astype(np.float32)
    dx, terms = check(emu, kind, x, a, g, beta, np.float32)  # dBeta's terms: inf only beyond float32's range
    assert np.isfinite(dx).all()


@pytest.mark.parametrize("kind", list(OPS))
def test_ada_backward_all_padding_windows(emu, kind):
    """pad_only: windows that hold padding only send nothing back; the elements in no
    window get gradient 0 (written, not left NaN)."""
    emu.px_emu_set_grid_cap(0)
    x, a, g, beta = inputs("pad_only", np.float32, kind, seed=13)
    dx, terms = check(emu, kind, x, a, g, beta, np.float32)
    _, idx = windows(x.shape[2:], a)
    untouched = np.setdiff1d(np.arange(int(np.prod(x.shape[2:]))), idx[idx >= 0])
    assert untouched.size and (dx.reshape(*x.shape[:2], -1)[..., untouched] == 0).all()
    if kind == "ada":
        empty = (idx < 0).all(-1)
        assert (terms.reshape(*g.shape[:2], -1)[..., empty] == 0).all()


def test_idw_backward_hit_windows(emu):
    """IDW windows where some value equals the mean (constant windows, symmetric triples)
    take the mean's gradient 1/n for every element."""
    emu.px_emu_set_grid_cap(0)
    x = np.array([[[1.0, 2.0, 3.0, 5.0, 5.0, 5.0, -1.0, 0.0, 1.0, 4.0, 7.0, 1.0]]], np.float32)
    a = dict(kernel_shape=[3], strides=[3])
    g = np.array([[[1.0, 2.0, -3.0, 0.5]]], np.float32)
    dx, _ = launch_backward(emu, "idw", x, a, g)
    want = oracle_dx("idw", x, a, g)
    np.testing.assert_allclose(dx[..., :9], np.repeat(g[..., :3], 3, axis=-1) / 3, rtol=1e-6)
    expect_close(dx, want, grad_scale("idw", x, a, g), np.float32)


def test_ada_backward_rejects_unknown_codes(emu):
    x = np.zeros((1, 1, 4), np.float32)
    p = (ctypes.c_int32 * 25)(*params(x.shape, dict(kernel_shape=[2]))[0])
    for op, dtype in ((3, 0), (-1, 0), (0, 2)):
        assert emu.poolexport_cuda_launch_ada_backward(op, dtype, x.ctypes.data, None, x.ctypes.data, x.ctypes.data,
                                                       None, None, p, None) == 1
    assert emu.poolexport_cuda_ada_backward_workspace(3) == 0


# ---------------------------------------------------------------- the torch-side wrapper
# poolexport/ops/_native_ada_cuda.py's packing (window geometry, Beta's 5-D dims, the
# workspace size, dBeta's reduction, dtypes) run on CPU tensors against the emulated
# launchers: torch has no CUDA here, so only its stream and device guard are stubbed.
@pytest.fixture(scope="module")
def emu_forward(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++) to build the emulated CUDA kernels")
    d = tmp_path_factory.mktemp("emu_ada_forward")
    (d / "cuda_runtime.h").write_text(SHIM_RUNTIME)
    (d / "cuda_fp16.h").write_text(SHIM_FP16)
    so = d / "libemu_ada_forward.so"
    cmd = [cxx, "-std=c++17", "-O2", "-ffp-contract=off", "-shared", "-fPIC", "-x", "c++", "-DPOOLEXPORT_HOST_EMULATION",
           f"-I{d}", f"-I{ROOT / 'custom_ops' / 'include'}", f"-I{ROOT / 'custom_ops' / 'cuda'}",
           str(ROOT / "custom_ops" / "cuda" / "kernels.cu"), "-o", str(so)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return ctypes.CDLL(str(so))


@pytest.fixture
def wrapper(emu, emu_forward, monkeypatch):
    import contextlib

    from poolexport.ops import _native_ada_cuda as native

    class Both:  # the one library's launchers: forward from kernels.cu, backward from backward.cu
        def __getattr__(self, name):
            return getattr(emu if "backward" in name else emu_forward, name)

    native._library.cache_clear()
    monkeypatch.setattr(native._native, "cuda_available", lambda: True)
    monkeypatch.setattr(native._native, "_library", lambda: Both())
    monkeypatch.setattr(native, "_stream", lambda x: None)
    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
    emu.px_emu_set_grid_cap(3)
    emu_forward.px_emu_set_grid_cap(3)
    yield native
    native._library.cache_clear()


def _spec(kind, x, a):
    from poolexport.ops._windows import spec_from_attrs

    k = x.ndim - 2
    return spec_from_attrs(kind, x.ndim, a["kernel_shape"], a.get("strides") or [1] * k,
                           a.get("pads") or [0] * (2 * k), a.get("dilations") or [1] * k, bool(a.get("ceil_mode", 0)),
                           "NOTSET")


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("case", ["k3s2p1", "ceil_drop", "1d", "3d"])
@pytest.mark.parametrize("kind", list(OPS))
def test_wrapper_forward_and_backward(wrapper, kind, case, dtype):
    from test_kernels_emulated_ada import expect_close as expect_values, oracle as oracle_values

    x, a, g, beta = inputs(case, dtype, kind, seed=60)
    spec = _spec(kind, x, a)
    xt, gt = torch.from_numpy(x), torch.from_numpy(g)
    bt = None if beta is None else torch.from_numpy(beta)
    y = wrapper.forward(f"{kind}_pool", xt, bt, spec)
    assert y.dtype == xt.dtype
    expect_values(kind, y.numpy(), oracle_values(kind, x, a, beta), x, a, dtype)
    dx, db = wrapper.backward(f"{kind}_pool", gt, xt, bt, spec)
    assert dx.dtype == xt.dtype and dx.shape == xt.shape
    expect_close(dx.numpy(), oracle_dx(kind, x, a, g, beta), grad_scale(kind, x, a, g), dtype)
    if kind == "ada":
        assert db.dtype == bt.dtype and db.shape == bt.shape
        with np.errstate(all="ignore"):
            _, want_db = O.ada_backward(x.astype(np.float64), beta.astype(np.float64), a, g.astype(np.float64))
        xf = np.abs(x.astype(np.float64)).max()
        bound = dbeta_from_terms(np.abs(g.astype(np.float64)) * 4 * xf, beta.shape)
        np.testing.assert_array_less(np.abs(db.numpy().astype(np.float64) - want_db),
                                     64 * 2.0**-23 * bound + 2.0**-11 * np.abs(want_db) + 2.0**-24)
    else:
        assert db is None


@pytest.mark.parametrize("case", ["k3s2p1", "1d", "3d"])
def test_wrapper_every_beta_broadcast(wrapper, case):
    """Beta's 5-D dims from the wrapper and dBeta reduced to Beta's own shape, a float32
    Beta with float16 X included (read in X's dtype, dBeta back in Beta's)."""
    shape, a = CASES[case]
    y_shape = (*shape[:2], *windows(shape[2:], a)[0])
    for i, bshape in enumerate(_beta_shapes(y_shape)):
        for xdtype in (np.float32, np.float16):
            x, a, g, beta = inputs(case, xdtype, "ada", seed=70 + i, beta_shape=bshape)
            beta32 = beta.astype(np.float32)
            dx, db = wrapper.backward("ada_pool", torch.from_numpy(g), torch.from_numpy(x), torch.from_numpy(beta32),
                                      _spec("ada", x, a))
            assert db.dtype == torch.float32 and tuple(db.shape) == beta.shape
            expect_close(dx.numpy(), oracle_dx("ada", x, a, g, beta), grad_scale("ada", x, a, g), xdtype)
            with np.errstate(all="ignore"):
                _, want_db = O.ada_backward(x.astype(np.float64), beta.astype(np.float64), a, g.astype(np.float64))
            bound = dbeta_from_terms(np.abs(g.astype(np.float64)) * 4 * np.abs(x.astype(np.float64)).max(), beta.shape)
            np.testing.assert_array_less(np.abs(db.numpy() - want_db), 64 * 2.0**-23 * bound + 1e-30)


def test_wrapper_beta_dims5_is_numpy_broadcasting():
    from poolexport.ops._native_ada_cuda import beta_dims5

    for target in [(2, 3, 5), (2, 3, 4, 5), (2, 3, 4, 5, 6)]:
        for shape in _beta_shapes(target):
            assert beta_dims5(shape, target) == dims5(shape, len(target)), (shape, target)
    for bad in [(4,), (2, 3, 5, 1), (3, 2, 1)]:
        with pytest.raises(ValueError, match="does not broadcast"):
            beta_dims5(bad, (2, 3, 5))


def test_wrapper_not_usable_off_cuda():
    from poolexport.ops import _native_ada_cuda as native

    assert not native.usable(torch.zeros(1, 1, 4))
    assert not native.usable(torch.zeros(1, 1, 4, dtype=torch.float64))
