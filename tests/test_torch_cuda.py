"""The torch ops' CUDA implementations (issue 9): the ONNX Runtime CUDA build's forward
kernels plus custom_ops/cuda/backward.cu, launched on torch's current stream.

Needs a GPU and a library built with nvcc; skips otherwise. Run on a GPU machine with
    python -m pytest -q tests/test_torch_cuda.py
References: the float64 pure-torch implementation on the CPU (forward and gradients) and
the CPU native kernels (sampled picks, bit for bit).
"""
from __future__ import annotations

import pytest
import torch

from poolexport.ops import _native, reduce_soft_pool, reduce_stochastic_pool, soft_pool, stochastic_pool

if not torch.cuda.is_available():
    pytest.skip("no CUDA device: torch.cuda.is_available() is False", allow_module_level=True)
if not _native.cuda_available():
    pytest.skip("libpoolexport_ort.so was built without CUDA (no nvcc at build time)", allow_module_level=True)

from test_torch_native import CASES as NATIVE_CASES  # noqa: E402  (one table of windows for CPU and CUDA)

CASES = {name: NATIVE_CASES[name] for name in ("k2s2", "k3s2p1", "k3s1p1", "1d", "3d")}
OPS = {
    "soft": lambda x, c: soft_pool(x, *c[1:], 1.0),
    "expectation": lambda x, c: stochastic_pool(x, *c[1:], "expectation", 0),
    "sample": lambda x, c: stochastic_pool(x, *c[1:], "sample", 5),
}
REDUCE_OPS = {
    "soft": lambda x, axes: reduce_soft_pool(x, axes, True, 1.0),
    "expectation": lambda x, axes: reduce_stochastic_pool(x, axes, True, "expectation", 0),
    "sample": lambda x, axes: reduce_stochastic_pool(x, axes, True, "sample", 9),
}
TOL = {torch.float32: 1e-5, torch.float16: 2e-3}


def _input(spatial, c=3):
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, c, *spatial, generator=g, dtype=torch.float64) * 2


def _check(fn, x64, dtype, exact_forward):
    x = x64.to(dtype).cuda().requires_grad_()
    y = fn(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y.backward(g.to(dtype).cuda())
    torch.cuda.synchronize()
    with _native.reference_kernels():
        xr = x.detach().cpu().double().requires_grad_()
        yr = fn(xr)
        yr.backward(g.to(dtype).double())
    if exact_forward:  # sampled picks: the value of the picked element
        assert torch.equal(y.detach().cpu().double(), yr.detach().to(dtype).double())
    else:
        torch.testing.assert_close(y.detach().cpu().double(), yr.detach(), rtol=TOL[dtype], atol=TOL[dtype])
    err = ((x.grad.cpu().double() - xr.grad).norm() / xr.grad.norm().clamp_min(1e-300)).item()
    assert err <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", CASES)
def test_windowed_forward_and_gradient(case, op, dtype):
    c = CASES[case]
    _check(lambda t: OPS[op](t, c), _input(c[0]), dtype, op == "sample")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("op", REDUCE_OPS)
@pytest.mark.parametrize("axes", [[1], [2, 3], None], ids=str)
def test_reduce_forward_and_gradient(axes, op, dtype):
    _check(lambda t: REDUCE_OPS[op](t, axes), _input((5, 6), c=12), dtype, op == "sample")


def test_picks_equal_the_cpu_kernels_bit_for_bit():
    x = torch.rand(4, 8, 33, 31)
    for fn in (lambda t: stochastic_pool(t, [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], False, "NOTSET", "sample", -7),
               lambda t: reduce_stochastic_pool(t, [2, 3], False, "sample", 2**40 + 3)):
        assert torch.equal(fn(x.cuda()).cpu(), fn(x))


def test_runs_on_the_current_stream_and_is_deterministic():
    x = torch.randn(4, 8, 64, 64, device="cuda")
    s = torch.cuda.Stream()
    grads = []
    for _ in range(2):
        with torch.cuda.stream(s):
            xi = x.clone().requires_grad_()
            soft_pool(xi, [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], False, "NOTSET", 1.0).sum().backward()
        s.synchronize()
        grads.append(xi.grad)
    assert torch.equal(grads[0], grads[1])
