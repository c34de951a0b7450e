"""The torch ops' CUDA implementations: the ONNX Runtime CUDA build's forward kernels plus
custom_ops/cuda/backward.cu, launched on torch's current stream.

Needs a GPU and a library built with nvcc; skips through the ``gpu`` marker otherwise, so
``POOLEXPORT_REQUIRE_GPU=1`` makes a missing GPU or a library built without nvcc a failure.
Run on a GPU machine with
    POOLEXPORT_REQUIRE_GPU=1 python -m pytest -q tests/test_torch_cuda.py
References, never the op on the same device: the float64 pure-torch implementation on the
CPU (forward and gradients), and the CPU native kernels for the sampled picks (bit for
bit) and for the inputs too large for a float64 copy.
"""
from __future__ import annotations

import pytest
import torch

from poolexport.ops import _native, reduce_soft_pool, reduce_stochastic_pool, soft_pool, stochastic_pool


def _reason():
    if not torch.cuda.is_available():
        return "no CUDA device: torch.cuda.is_available() is False"
    if not _native.cuda_available():
        return "libpoolexport_ort.so was built without CUDA (no nvcc at build time)"
    return None


REASON = _reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=REASON or "")]

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
BLOCK, MAX_GRID = 256, 65535  # custom_ops/include/poolexport/limits.h


def _input(spatial, c=3, n=2):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, c, *spatial, generator=g, dtype=torch.float64) * 2


def _reference_cpu64(fn, x64, g64, dtype):
    """The pure-torch implementation in float64 on the CPU, on the inputs as rounded to dtype."""
    with _native.reference_kernels():
        xr = x64.to(dtype).double().requires_grad_()
        yr = fn(xr)
        yr.backward(g64.to(dtype).double())
    return yr.detach(), xr.grad


def _check(fn, x64, dtype, exact_forward, device="cuda"):
    x = x64.to(dtype).to(device).requires_grad_()
    y = fn(x)
    assert y.device == x.device
    g64 = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y.backward(g64.to(dtype).to(device))
    torch.cuda.synchronize(device)
    ref_y, ref_grad = _reference_cpu64(fn, x64, g64, dtype)
    if exact_forward:  # sampled picks: the value of the picked element
        assert torch.equal(y.detach().cpu().double(), ref_y.to(dtype).double())
    else:
        torch.testing.assert_close(y.detach().cpu().double(), ref_y, rtol=TOL[dtype], atol=TOL[dtype])
    err = ((x.grad.cpu().double() - ref_grad).norm() / ref_grad.norm().clamp_min(1e-300)).item()
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


# innermost windows at the lane limits of reduce.h (kReduceWarpWindow 32, kReduceBlockWindow
# 1024) +-1: a thread, 32 lanes and 256 lanes per output, forward and backward
@pytest.mark.parametrize("window", [31, 32, 33, 1023, 1024, 1025, 2000])
@pytest.mark.parametrize("op", REDUCE_OPS)
def test_reduce_lanes_at_their_limits(window, op):
    _check(lambda t: REDUCE_OPS[op](t, [2]), _input((window,), c=5), torch.float32, op == "sample")


def _cpu_native(fn, x, g):
    """The CPU native kernels (float32) on a CPU tensor: forward and gradient."""
    xc = x.detach().clone().requires_grad_()
    yc = fn(xc)
    yc.backward(g.cpu())
    return yc.detach(), xc.grad


def _check_against_cpu_kernels(fn, x, rtol=1e-5, atol=1e-5):
    x = x.cuda().requires_grad_()
    y = fn(x)
    g = torch.rand(y.shape, generator=torch.Generator().manual_seed(3))
    y.backward(g.cuda())
    torch.cuda.synchronize()
    ref_y, ref_grad = _cpu_native(fn, x.detach().cpu(), g)
    assert not torch.isnan(y).any() and not torch.isnan(x.grad).any()  # an element no thread wrote shows
    torch.testing.assert_close(y.detach().cpu(), ref_y, rtol=rtol, atol=atol)
    torch.testing.assert_close(x.grad.cpu(), ref_grad, rtol=rtol, atol=atol)


def test_grid_stride_wraps_past_the_grid_limit():
    """4096^2 outputs of a 2x2 stride-1 window: 256 more than 65,535 blocks of 256 threads
    hold, so the forward's and the backward gather's last elements are reached only by the
    grid-stride loop; the state pass wraps likewise."""
    x = torch.rand(1, 1, 4097, 4097, generator=torch.Generator().manual_seed(2)) * 4
    assert 4096 * 4096 == BLOCK * MAX_GRID + 256
    for fn in (lambda t: soft_pool(t, [2, 2], [1, 1], [0, 0, 0, 0], [1, 1], False, "NOTSET", 1.0),
               lambda t: stochastic_pool(t, [2, 2], [1, 1], [0, 0, 0, 0], [1, 1], False, "NOTSET", "expectation", 0)):
        _check_against_cpu_kernels(fn, x)
    fn = lambda t: stochastic_pool(t, [2, 2], [1, 1], [0, 0, 0, 0], [1, 1], False, "NOTSET", "sample", 11)  # noqa: E731
    assert torch.equal(fn(x.cuda()).cpu(), fn(x))


def test_reduce_grid_stride_wraps_past_the_grid_limit():
    """32 lanes per output, 8 outputs per block: 524,296 outputs need 65,537 blocks."""
    outputs = MAX_GRID * (BLOCK // 32) + 16
    x = torch.rand(outputs, 32, generator=torch.Generator().manual_seed(4)) * 4
    _check_against_cpu_kernels(lambda t: reduce_soft_pool(t, [1], False, 1.0), x)
    _check_against_cpu_kernels(lambda t: reduce_stochastic_pool(t, [1], False, "expectation", 0), x)


def test_picks_equal_the_cpu_kernels_bit_for_bit():
    x = torch.rand(4, 8, 33, 31)
    for fn in (lambda t: stochastic_pool(t, [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], False, "NOTSET", "sample", -7),
               lambda t: reduce_stochastic_pool(t, [2, 3], False, "sample", 2**40 + 3)):
        assert torch.equal(fn(x.cuda()).cpu(), fn(x))


def _soft(t):
    return soft_pool(t, [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], False, "NOTSET", 1.0)


def test_runs_on_the_current_stream():
    """A side stream (non-blocking: no implicit sync with the legacy default stream) first
    sleeps, then fills x, then runs the op, forward and backward. Only that stream is
    synchronized. A kernel launched on any other stream reads x before the fill (zeros)."""
    src = torch.rand(4, 8, 64, 64, generator=torch.Generator().manual_seed(5)) + 0.5
    g = torch.rand(4, 8, 64, 64, generator=torch.Generator().manual_seed(6))
    src_dev, g_dev = src.cuda(), g.cuda()
    x = torch.zeros_like(src_dev)
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        torch.cuda._sleep(100_000_000)  # ~50 ms at 2 GHz: everything after it on s waits
        x.copy_(src_dev)
        xi = x.requires_grad_()
        y = _soft(xi)
        y.backward(g_dev)
    s.synchronize()
    ref_y, ref_grad = _cpu_native(_soft, src, g)
    torch.testing.assert_close(y.detach().cpu(), ref_y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xi.grad.cpu(), ref_grad, rtol=1e-5, atol=1e-5)


def test_captured_in_a_cuda_graph():
    """Capture the forward in a CUDA graph, change the input in place, replay: only launches
    on the capturing stream are recorded (a launch elsewhere fails the capture or leaves
    the old result)."""
    x = torch.rand(2, 4, 32, 32, device="cuda")
    warm = torch.cuda.Stream()
    warm.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(warm):
        for _ in range(2):
            _soft(x)
    torch.cuda.current_stream().wait_stream(warm)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = _soft(x)
    new = torch.rand(2, 4, 32, 32, generator=torch.Generator().manual_seed(7)) * 3
    x.copy_(new.cuda())
    graph.replay()
    torch.cuda.synchronize()
    ref_y, _ = _cpu_native(_soft, new, torch.ones(2, 4, 32, 32))
    torch.testing.assert_close(y.cpu(), ref_y, rtol=1e-5, atol=1e-5)


def test_deterministic():
    x = torch.randn(4, 8, 64, 64, device="cuda")
    grads = []
    for _ in range(2):
        xi = x.clone().requires_grad_()
        _soft(xi).sum().backward()
        grads.append(xi.grad)
    assert torch.equal(grads[0], grads[1])


@pytest.mark.gpu(devices=2)
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="one CUDA device: the cuda:1 case needs two")
@pytest.mark.parametrize("op", OPS)
def test_second_device(op):
    """A tensor on cuda:1 while cuda:0 is current: the kernels launch on cuda:1's stream."""
    torch.cuda.set_device(0)
    c = CASES["k3s2p1"]
    _check(lambda t: OPS[op](t, c), _input(c[0]), torch.float32, op == "sample", device="cuda:1")
    x = torch.rand(2, 3, 1100, device="cuda:1")
    y = reduce_soft_pool(x, [2], False, 1.0)
    assert y.device == x.device
    torch.testing.assert_close(y.cpu(), reduce_soft_pool(x.cpu(), [2], False, 1.0), rtol=1e-5, atol=1e-5)
