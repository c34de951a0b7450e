"""The adaPool family's CUDA kernels (custom_ops/cuda/ada_kernels.cu) on a GPU, through the
library's C launchers (poolexport_cuda_launch_ada, poolexport_cuda_launch_ada_unpool).

ctypes calls on torch CUDA tensors, on torch's current stream; expected values from the
float64 oracles tests/_ada_oracle.py and tests/_ada_unpool_oracle.py on the CPU, with the
tolerances and parameter rules of tests/test_kernels_emulated_ada.py (which runs the same
source on the CPU with the real grid). Outputs start as NaN, so an element no thread writes
shows. Skips where there is no CUDA device or the library was built without CUDA.
"""
from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch

import poolexport
from _oracle import windows
from test_kernels_emulated_ada import (CASES, OPS, UNPOOL_CASES, _beta_shapes, _pad3, _unpool_expect, _unpool_inputs,
                                       dims5, expect_close, oracle)
from test_kernels_cuda import DT, REASON  # the same skip reason and dtype codes as the other kernels

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=REASON or "")]


@pytest.fixture(scope="module")
def lib():
    so = ctypes.CDLL(poolexport.get_library_path())
    ptr, i32p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32)
    so.poolexport_cuda_launch_ada.argtypes = [ctypes.c_int, ctypes.c_int, ptr, ptr, ptr, i32p, ptr]
    so.poolexport_cuda_launch_ada.restype = ctypes.c_int
    so.poolexport_cuda_launch_ada_unpool.argtypes = [ctypes.c_int, ptr, ptr, ptr, ptr, ptr, i32p, ptr]
    so.poolexport_cuda_launch_ada_unpool.restype = ctypes.c_int
    so.poolexport_cuda_error_string.restype = ctypes.c_char_p
    return so


def _i32(v):
    v = int(v) & 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def _cuda(t):
    return torch.from_numpy(np.ascontiguousarray(t)).cuda()


def _call(lib, fn, args, p, out_shape, dtype):
    y = torch.full(out_shape, float("nan"), dtype=torch.float32 if dtype == np.float32 else torch.float16, device="cuda")
    arr = (ctypes.c_int32 * len(p))(*[_i32(v) for v in p])
    rc = fn(*args, y.data_ptr(), arr, torch.cuda.current_stream().cuda_stream)
    assert rc == 0, lib.poolexport_cuda_error_string(rc).decode()
    torch.cuda.synchronize()
    return y.cpu().numpy()


def launch_ada(lib, kind, x, a, beta=None):
    k = x.ndim - 2
    out, _ = windows(x.shape[2:], a)
    p = [x.shape[0], x.shape[1], *_pad3(x.shape[2:], 1), *_pad3(out, 1), *_pad3(a["kernel_shape"], 1),
         *_pad3(a.get("strides") or [1] * k, 1), *_pad3(a.get("dilations") or [1] * k, 1),
         *_pad3((a.get("pads") or [0] * (2 * k))[:k], 0)]
    p += dims5(beta.shape, x.ndim) if beta is not None else [1] * 5
    xt = _cuda(x)
    bt = _cuda(beta) if beta is not None else None
    args = (OPS[kind], DT[x.dtype.type], xt.data_ptr(), None if bt is None else bt.data_ptr())
    return _call(lib, lib.poolexport_cuda_launch_ada, args, p, (*x.shape[:2], *out), x.dtype.type)


def launch_unpool(lib, x, me, mm, beta):
    p = [x.shape[0], x.shape[1], *_pad3(x.shape[2:], 1), *_pad3(me.shape[2:], 1), me.shape[0], me.shape[1],
         mm.shape[0], mm.shape[1], *dims5(beta.shape, x.ndim)]
    ts = [_cuda(t) for t in (x, me, mm, beta)]
    args = (DT[x.dtype.type], *[t.data_ptr() for t in ts])
    return _call(lib, lib.poolexport_cuda_launch_ada_unpool, args, p, (*x.shape[:2], *me.shape[2:]), x.dtype.type)


@pytest.mark.parametrize("dtype", list(DT))
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kind", list(OPS))
def test_cuda_ada_kernels_match_float64_oracle(lib, kind, case, dtype):
    shape, a = CASES[case]
    x = (np.random.default_rng(1).standard_normal(shape) * 3).astype(dtype)
    out = windows(shape[2:], a)[0]
    betas = _beta_shapes((*shape[:2], *out)) if kind == "ada" else [None]
    for i, bshape in enumerate(betas):
        beta = None if bshape is None else np.random.default_rng(i).uniform(-0.25, 1.25, bshape).astype(dtype)
        expect_close(kind, launch_ada(lib, kind, x, a, beta), oracle(kind, x, a, beta), x, a, dtype)


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("kind", list(OPS))
def test_cuda_ada_nonfinite(lib, kind, value):
    shape, a = CASES["k3s2p1"]
    x = (np.random.default_rng(5).standard_normal(shape) * 2).astype(np.float32)
    flat = x.reshape(-1)
    flat[[0, flat.size // 2 + 5, flat.size - 1]] = value
    beta = np.random.default_rng(6).uniform(0, 1, windows(shape[2:], a)[0]).astype(np.float32) if kind == "ada" else None
    expect_close(kind, launch_ada(lib, kind, x, a, beta), oracle(kind, x, a, beta), x, a, np.float32)


def test_cuda_ada_grid_stride_wrap_past_the_grid_limit(lib):
    """4096^2 outputs: 256 more than 65,535 blocks of 256 threads hold; the last ones are
    reached only through the grid-stride loop (EdscwPool, kernel 1: y = x)."""
    x = np.random.default_rng(3).uniform(-3, 3, (1, 1, 4096, 4096)).astype(np.float32)
    y = launch_ada(lib, "edscw", x, dict(kernel_shape=[1, 1]))
    np.testing.assert_allclose(y, x, rtol=1e-6)


@pytest.mark.parametrize("dtype", list(DT))
@pytest.mark.parametrize("case", list(UNPOOL_CASES))
def test_cuda_ada_unpool_matches_float64_oracle(lib, case, dtype):
    x, me, mm, beta = _unpool_inputs(case, dtype)
    _unpool_expect(launch_unpool(lib, x, me, mm, beta), x, me, mm, beta, dtype)
