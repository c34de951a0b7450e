"""The adaPool family's torch ops on CUDA: the forward kernels of
custom_ops/cuda/ada_kernels.cu and the backward kernels of custom_ops/cuda/ada_backward.cu,
through poolexport/ops/_native_ada_cuda.py (ctypes, torch's current stream), and the torch
ops' autograd on CUDA tensors.

Needs a GPU and a library built with nvcc; skips through the ``gpu`` marker otherwise
(``POOLEXPORT_REQUIRE_GPU=1`` makes that a failure). Run on a GPU machine with
    POOLEXPORT_REQUIRE_GPU=1 python -m pytest -q tests/test_ada_cuda_torch.py
References, on the CPU in float64, never the op on the device: the oracles of
tests/_ada_oracle.py, with the tolerance rules of tests/test_kernels_emulated_ada.py
(values) and tests/test_kernels_emulated_ada_backward.py (gradients), which run the same
kernels on the CPU.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _oracle import windows
from test_kernels_cuda import REASON as KERNELS_REASON  # the same skip reasons as the other CUDA tests
from test_kernels_emulated_ada import CASES, _beta_shapes
from test_kernels_emulated_ada import expect_close as expect_values
from test_kernels_emulated_ada import oracle as oracle_values
from test_kernels_emulated_ada_backward import (FLT_MAX, dbeta_from_terms, expect_close, grad_scale, oracle_dx,
                                                oracle_terms)

from poolexport._cuda_driver import torch_cuda_kernels_usable
from poolexport.ops import _native_ada_cuda as native
from poolexport.ops._windows import spec_from_attrs


def _reason():
    if KERNELS_REASON is not None:
        return KERNELS_REASON
    if native._library() is None:
        return "libpoolexport_ort.so has no adaPool CUDA backward (built before ada_backward.cu: rebuild it)"
    if not torch_cuda_kernels_usable():
        return "the CUDA driver is older than the library's CUDA runtime (torch_cuda_kernels_usable() is False)"
    return None


REASON = _reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=REASON or "")]

KINDS = {"edscw": "edscw_pool", "idw": "idw_pool", "ada": "ada_pool"}
DTYPES = {np.float32: torch.float32, np.float16: torch.float16}


def _attrs(x_ndim, a):
    k = x_ndim - 2
    return (list(a["kernel_shape"]), list(a.get("strides") or [1] * k), list(a.get("pads") or [0] * (2 * k)),
            list(a.get("dilations") or [1] * k), bool(a.get("ceil_mode", 0)), "NOTSET")


def _inputs(case, dtype, kind, seed=0, beta_shape="out"):
    shape, a = CASES[case]
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    y_shape = (*shape[:2], *windows(shape[2:], a)[0])
    g = rng.standard_normal(y_shape).astype(dtype)
    beta = None
    if kind == "ada":
        beta = rng.uniform(-0.25, 1.25, y_shape[2:] if beta_shape == "out" else beta_shape).astype(dtype)
    return x, a, g, beta


def _dbeta_check(db, x, a, g, beta):
    """dBeta against the oracle: 64 float32 ulps of the terms' magnitudes, summed."""
    with np.errstate(all="ignore"):
        from _ada_oracle import ada_backward
        _, want_db = ada_backward(x.astype(np.float64), beta.astype(np.float64), a, g.astype(np.float64))
    assert db.shape == beta.shape
    xf = np.abs(x.astype(np.float64)).max()
    bound = dbeta_from_terms(np.abs(oracle_terms(x, a, g)) + np.abs(g.astype(np.float64)) * xf, beta.shape)
    assert np.all(np.abs(db.astype(np.float64) - want_db) <= 64 * 2.0**-23 * bound + 2.0**-11 * np.abs(want_db))


def _cuda(t):
    return None if t is None else torch.from_numpy(np.ascontiguousarray(t)).cuda()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kind", list(KINDS))
def test_native_forward_and_backward_match_float64(kind, case, dtype):
    """_native_ada_cuda.forward / backward on CUDA tensors against the CPU float64 oracles."""
    x, a, g, beta = _inputs(case, dtype, kind)
    spec = spec_from_attrs(kind, x.ndim, *_attrs(x.ndim, a))
    xc, gc, bc = _cuda(x), _cuda(g), _cuda(beta)
    assert native.usable(xc, bc)
    y = native.forward(KINDS[kind], xc, bc, spec)
    dx, db = native.backward(KINDS[kind], gc, xc, bc, spec)
    torch.cuda.synchronize()
    expect_values(kind, y.cpu().numpy(), oracle_values(kind, x, a, beta), x, a, dtype)
    assert dx.dtype == xc.dtype and dx.shape == xc.shape
    expect_close(dx.cpu().numpy(), oracle_dx(kind, x, a, g, beta), grad_scale(kind, x, a, g), dtype)
    if kind == "ada":
        assert db.dtype == bc.dtype
        _dbeta_check(db.cpu().numpy(), x, a, g, beta)
    else:
        assert db is None


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_native_backward_every_beta_broadcast(dtype):
    shape, a = CASES["k3s2p1"]
    y_shape = (*shape[:2], *windows(shape[2:], a)[0])
    for i, bshape in enumerate(_beta_shapes(y_shape)):
        x, a, g, beta = _inputs("k3s2p1", dtype, "ada", seed=30 + i, beta_shape=bshape)
        spec = spec_from_attrs("AdaPool", x.ndim, *_attrs(x.ndim, a))
        dx, db = native.backward("ada_pool", _cuda(g), _cuda(x), _cuda(beta), spec)
        expect_close(dx.cpu().numpy(), oracle_dx("ada", x, a, g, beta), grad_scale("ada", x, a, g), dtype)
        _dbeta_check(db.cpu().numpy(), x, a, g, beta)


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_native_backward_nonfinite(kind, where, value):
    x, a, g, beta = _inputs("k3s2p1", np.float32, kind, seed=5)
    flat = x.reshape(-1)
    flat[{"first": 0, "middle": flat.size // 2 + 5, "last": flat.size - 1}[where]] = value
    spec = spec_from_attrs(kind, x.ndim, *_attrs(x.ndim, a))
    dx, _ = native.backward(KINDS[kind], _cuda(g), _cuda(x), _cuda(beta), spec)
    expect_close(dx.cpu().numpy(), oracle_dx(kind, x, a, g, beta), grad_scale(kind, x, a, g), np.float32)


@pytest.mark.parametrize("scale", [3e38, 2.0**64, 1e-38])
@pytest.mark.parametrize("kind", list(KINDS))
def test_native_backward_magnitudes(kind, scale):
    x, a, g, beta = _inputs("k2s2", np.float32, kind, seed=14)
    x = (np.random.default_rng(15).uniform(-1, 1, x.shape) * scale).astype(np.float32)
    spec = spec_from_attrs(kind, x.ndim, *_attrs(x.ndim, a))
    dx, db = native.backward(KINDS[kind], _cuda(g), _cuda(x), _cuda(beta), spec)
    got = dx.cpu().numpy()
    assert np.isfinite(got).all()
    expect_close(got, oracle_dx(kind, x, a, g, beta), grad_scale(kind, x, a, g), np.float32)
    if kind == "ada" and np.abs(oracle_terms(x, a, g)).max() < FLT_MAX / 64:
        _dbeta_check(db.cpu().numpy(), x, a, g, beta)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("case", ["k3s2p1", "1d", "3d", "pad_only"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_torch_ops_autograd_on_cuda(kind, case, dtype):
    """torch.ops.poolexport.* forward and backward (autograd) on CUDA tensors, against the
    CPU float64 oracles: whichever route the op takes on CUDA, it is right."""
    x, a, g, beta = _inputs(case, dtype, kind, seed=40)
    attrs = _attrs(x.ndim, a)
    xc = _cuda(x).requires_grad_()
    op = getattr(torch.ops.poolexport, KINDS[kind])
    if kind == "ada":
        bc = _cuda(beta).requires_grad_()
        y = op(xc, bc, *attrs)
    else:
        bc = None
        y = op(xc, *attrs)
    y.backward(_cuda(g))
    torch.cuda.synchronize()
    expect_values(kind, y.detach().cpu().numpy(), oracle_values(kind, x, a, beta), x, a, dtype)
    expect_close(xc.grad.cpu().numpy(), oracle_dx(kind, x, a, g, beta), grad_scale(kind, x, a, g), dtype)
    if kind == "ada":
        _dbeta_check(bc.grad.cpu().numpy(), x, a, g, beta)


def test_native_runs_on_the_current_stream():
    """A launch on a side stream is ordered after that stream's earlier work: the input is
    written on the stream just before the backward reads it."""
    x, a, g, beta = _inputs("k3s2p1", np.float32, "ada", seed=50)
    spec = spec_from_attrs("AdaPool", x.ndim, *_attrs(x.ndim, a))
    side = torch.cuda.Stream()
    xc = torch.zeros(x.shape, device="cuda")
    host = torch.from_numpy(x).pin_memory()
    side.wait_stream(torch.cuda.current_stream())  # the zeros are written first
    with torch.cuda.stream(side):
        torch.cuda._sleep(10_000_000)  # keeps the copy below queued behind a long kernel
        xc.copy_(host, non_blocking=True)
        dx, db = native.backward("ada_pool", _cuda(g), xc, _cuda(beta), spec)
    side.synchronize()
    expect_close(dx.cpu().numpy(), oracle_dx("ada", x, a, g, beta), grad_scale("ada", x, a, g), np.float32)
