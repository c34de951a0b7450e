"""The CUDA backward kernels (custom_ops/cuda/backward.cu), run on the CPU with their real
launch geometry: the file compiled as C++ against the CUDA shim of
tests/test_kernels_emulated.py (every thread of the launcher's grid, blocks and threads in
a scrambled order, a block's threads as fibers meeting at __syncthreads; a knob caps the
grid so that grid-stride loops wrap). Gradients start as NaN, so an element no thread
writes shows. References: the pure-torch implementation in float64 on the CPU (autograd),
sampled picks' gradients exactly; for NaN and huge inputs, the CPU native kernels.
tests/test_torch_cuda.py runs the real thing on a GPU.
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from poolexport.ops import _native, reduce_soft_pool, reduce_stochastic_pool, soft_pool, stochastic_pool
from test_kernels_emulated import SHIM_FP16, SHIM_RUNTIME

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 256
SOFT, EXPECTATION, SAMPLE = 0, 1, 2  # op codes of backward.h


def build_backward_emulation(tmp_path_factory, name):
    """backward.cu (with the adaPool backward it includes) built for the CPU through the
    shim; its grid-cap and last-launch hooks typed."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++) to build the emulated CUDA kernels")
    d = tmp_path_factory.mktemp(name)
    (d / "cuda_runtime.h").write_text(SHIM_RUNTIME + "\n#define cudaErrorInvalidValue 1\n")
    (d / "cuda_fp16.h").write_text(SHIM_FP16)
    so = d / f"lib{name}.so"
    cmd = [cxx, "-std=c++17", "-O2", "-ffp-contract=off", "-shared", "-fPIC", "-x", "c++", "-DPOOLEXPORT_HOST_EMULATION",
           f"-I{d}", f"-I{ROOT / 'custom_ops' / 'include'}", f"-I{ROOT / 'custom_ops' / 'cuda'}",
           str(ROOT / "custom_ops" / "cuda" / "backward.cu"), "-o", str(so)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lib = ctypes.CDLL(str(so))
    lib.px_emu_set_grid_cap.argtypes = [ctypes.c_uint]
    lib.px_emu_last_launch.argtypes = [ctypes.POINTER(ctypes.c_uint)]
    return lib


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    lib = build_backward_emulation(tmp_path_factory, "emu_backward")
    vp, i32p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32)
    lib.poolexport_cuda_launch_window_backward.argtypes = [ctypes.c_int, ctypes.c_int, vp, vp, vp, vp, i32p, vp]
    lib.poolexport_cuda_launch_reduce_backward.argtypes = [ctypes.c_int, ctypes.c_int, vp, vp, vp, i32p, vp]
    yield lib
    lib.px_emu_set_grid_cap(0)


def last_launch(lib):
    out = (ctypes.c_uint * 3)()
    lib.px_emu_last_launch(out)
    return tuple(out)


def _i32(v):
    v = int(v) & 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def _scalars(code, beta, seed):
    first = _i32(np.array([beta], np.float32).view(np.int32)[0]) if code == SOFT else int(code == SAMPLE)
    return [first, _i32(seed), _i32(seed >> 32)]


def reduce_backward(lib, code, x, g, axes, beta=1.0, seed=0):
    """dX from poolexport_cuda_launch_reduce_backward (p[11] of backward.h)."""
    r = x.ndim
    red = sorted(v % r for v in axes)
    p = [r, *([1] * (6 - r) + list(x.shape)), sum(1 << (6 - r + v) for v in red), *_scalars(code, beta, seed)]
    x, g = np.ascontiguousarray(x), np.ascontiguousarray(g)
    dx = np.full(x.shape, np.nan, dtype=x.dtype)
    arr = (ctypes.c_int32 * 11)(*p)
    assert lib.poolexport_cuda_launch_reduce_backward(code, int(x.dtype == np.float16), x.ctypes.data, g.ctypes.data,
                                                      dx.ctypes.data, arr, None) == 0
    return dx


def window_backward(lib, code, x, g, spec, beta=1.0, seed=0):
    """dX from poolexport_cuda_launch_window_backward with the geometry the torch op uses."""
    n, c, *spatial = x.shape
    geom, _ = _native._window_geometry(spec, n, c, tuple(spatial))
    p = (ctypes.c_int32 * 23)(*list(geom), *_scalars(code, beta, seed))
    x, g = np.ascontiguousarray(x), np.ascontiguousarray(g)
    ws = np.zeros(3 * max(g.size, 1), np.float32)
    dx = np.full(x.shape, np.nan, dtype=x.dtype)
    assert lib.poolexport_cuda_launch_window_backward(code, int(x.dtype == np.float16), x.ctypes.data, g.ctypes.data,
                                                      dx.ctypes.data, ws.ctypes.data, p, None) == 0
    return dx


REDUCE_FN = {
    SOFT: lambda t, axes: reduce_soft_pool(t, axes, True, 1.5),
    EXPECTATION: lambda t, axes: reduce_stochastic_pool(t, axes, True, "expectation", 0),
    SAMPLE: lambda t, axes: reduce_stochastic_pool(t, axes, True, "sample", 2**40 + 5),
}


def _reference_grad(fn, x, g):
    """x.grad of the pure-torch implementation in float64 on the CPU."""
    with _native.reference_kernels():
        xr = torch.from_numpy(x.astype(np.float64)).requires_grad_()
        fn(xr).backward(torch.from_numpy(g.astype(np.float64)))
    return xr.grad.numpy()


def _expect_grad(dx, want, dtype, exact=False):
    assert not np.isnan(dx).any(), "a gradient element was never written"
    if exact:
        np.testing.assert_array_equal(dx.astype(np.float64), want.astype(dtype).astype(np.float64))
    else:
        tol = dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=4e-3, atol=4e-3)
        np.testing.assert_allclose(dx.astype(np.float64), want, **tol)


# (shape, reduced axes, lanes per output of the soft/expectation backward): the innermost
# window at the lane limits of reduce.h (32, 1024) +-1, two runs per window, kept innermost axis
REDUCE_CASES = [
    ((3, 31), [1], 1), ((3, 32), [1], 32), ((3, 33), [1], 32),
    ((2, 1023), [1], 32), ((2, 1024), [1], 256), ((1, 2, 1025), [2], 256),
    ((2, 5, 3, 40), [1, 3], 32),  # runs of 40 along axis 3, 5 of them along axis 1
    ((2, 3, 5, 7), [1], 1),
    ((3, 4, 2, 3), [0, 2, 3], 1),
]


@pytest.mark.parametrize("cap", [None, 1], ids=["grid", "cap1"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("shape,axes,lanes", REDUCE_CASES, ids=lambda v: str(v).replace(" ", ""))
def test_reduce_backward_matches_float64_reference(emu, shape, axes, lanes, dtype, cap):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 2).astype(dtype)
    keep = [1 if i in axes else n for i, n in enumerate(shape)]
    g = rng.standard_normal(keep).astype(dtype)
    outputs = int(np.prod(keep))
    emu.px_emu_set_grid_cap(cap or 0)
    for code in (SOFT, EXPECTATION, SAMPLE):
        used = 1 if code == SAMPLE else lanes
        dx = reduce_backward(emu, code, x, g, axes, beta=1.5, seed=2**40 + 5)
        grid = -(-outputs * used // BLOCK)
        assert last_launch(emu)[:2] == (min(grid, cap) if cap else grid, BLOCK)
        _expect_grad(dx, _reference_grad(lambda t: REDUCE_FN[code](t, axes), x, g), dtype, exact=code == SAMPLE)
    emu.px_emu_set_grid_cap(0)


def _cpu_native_grad(fn, x, g):
    xc = torch.from_numpy(x).requires_grad_()
    fn(xc).backward(torch.from_numpy(g))
    return xc.grad.numpy()


@pytest.mark.parametrize("shape,axes", [((2, 40), [1]), ((1, 1100), [1]), ((2, 3, 40), [1, 2])])
def test_reduce_backward_nan_first_middle_last(emu, shape, axes):
    """A NaN at a window's first, middle and last position, one window each, others clean:
    the lanes' merges reproduce the serial state (a NaN first element is SoftPool's
    maximum, elsewhere it is skipped; the expectation sums carry it)."""
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 2, shape).astype(np.float32)
    g = rng.standard_normal([1 if i in axes else n for i, n in enumerate(shape)]).astype(np.float32)
    flat = x.reshape(shape[0], -1)
    window = flat.shape[1]
    flat[0, 0] = np.nan
    if shape[0] > 1:
        flat[1, window // 2] = np.nan
    flat[-1, -1] = np.nan
    for code in (SOFT, EXPECTATION):
        dx = reduce_backward(emu, code, x, g, axes, beta=1.5)
        want = _cpu_native_grad(lambda t: REDUCE_FN[code](t, axes), x, g)
        np.testing.assert_allclose(dx, want, rtol=2e-5, atol=2e-6, equal_nan=True)


# past kSoftScaleAbove (2^64) / kMomentScaleAbove (2^48), where the unscaled sums overflow
# (sum of w * (a - c) past FLT_MAX; sum of r^2), and 3e15: scaled, unscaled sums still finite
@pytest.mark.parametrize("code,scale,beta", [(SOFT, 3e37, 1e-37), (EXPECTATION, 1e25, 1.0), (EXPECTATION, 3e15, 1.0)])
def test_reduce_backward_scaled_paths(emu, code, scale, beta):
    rng = np.random.default_rng(3)
    x = (rng.uniform(-1, 1, (2, 1100)) * scale).astype(np.float32)
    x[1, 700] = np.float32(scale * 1.1)  # the maximum late in the window: a lane other than 0 holds it
    g = rng.standard_normal((2, 1)).astype(np.float32)
    fn = (lambda t: reduce_soft_pool(t, [1], True, beta)) if code == SOFT else (lambda t: REDUCE_FN[EXPECTATION](t, [1]))
    dx = reduce_backward(emu, code, x, g, [1], beta=beta)
    want = _cpu_native_grad(fn, x, g)
    assert np.isfinite(dx).all() and np.isfinite(want).all()
    # sum order differs (lanes vs serial): ulps of the largest gradient, where 1 + beta * (a - y) cancels
    np.testing.assert_allclose(dx, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))


def test_soft_ties_take_the_first_maximum(emu):
    """Equal maxima in every lane (beta 0: every beta*a is 0) and beta so small that
    distinct values tie: the merged state is the serial one (which tied maximum becomes c
    changes only the rounding of a - y, so a reversed tie-break stays inside tolerance)."""
    x = np.tile(np.float32([3.0, -1.0, 3.0, 2.0]), 300)[None]  # 1200 elements: 256 lanes
    g = np.ones((1, 1), np.float32)
    for beta in (0.0, 1e-45):
        dx = reduce_backward(emu, SOFT, x, g, [1], beta=beta)
        _expect_grad(dx, _reference_grad(lambda t: reduce_soft_pool(t, [1], True, beta), x, g), np.float32)


WINDOW_CASES = {
    "k3s2p1": ((2, 3, 13, 12), [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], False, "NOTSET"),
    "1d_ceil": ((2, 3, 23), [3], [2], [1, 0], [1], True, "NOTSET"),
    "3d_dil": ((1, 2, 5, 6, 7), [3, 2, 3], [2, 1, 2], [1, 0, 1, 1, 1, 0], [1, 2, 1], True, "NOTSET"),
}


@pytest.mark.parametrize("cap", [None, 2], ids=["grid", "cap2"])
@pytest.mark.parametrize("case", list(WINDOW_CASES))
def test_window_backward_matches_float64_reference(emu, case, cap):
    from poolexport._window import make_window_spec

    shape, *w = WINDOW_CASES[case]
    spec = make_window_spec("test", len(shape) - 2, *w)
    fns = {SOFT: lambda t: soft_pool(t, *w, 1.5), EXPECTATION: lambda t: stochastic_pool(t, *w, "expectation", 0),
           SAMPLE: lambda t: stochastic_pool(t, *w, "sample", -7)}
    rng = np.random.default_rng(4)
    x = (rng.standard_normal(shape) * 2).astype(np.float32)
    out, _ = spec.resolve(shape[2:])
    g = rng.standard_normal((*shape[:2], *out)).astype(np.float32)
    emu.px_emu_set_grid_cap(cap or 0)
    for code, fn in fns.items():
        dx = window_backward(emu, code, x, g, spec, beta=1.5, seed=-7)
        # sample: an element picked by overlapping windows sums their g in float32, so not bit for bit
        _expect_grad(dx, _reference_grad(fn, x, g), np.float32)
    emu.px_emu_set_grid_cap(0)
