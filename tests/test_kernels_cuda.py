"""The CUDA kernels (custom_ops/cuda/kernels.cu) on a GPU, against the PyTorch ops.

Calls the library's C launchers through ctypes on torch CUDA tensors, on torch's current
stream, with the windowing resolved by poolexport._window (the definition), and compares
with the torch ops run on the same device: values within tolerance, sampled picks bit for
bit. Skips where there is no CUDA device or the library was built without CUDA.
"""
from __future__ import annotations

import ctypes

import pytest
import torch

import poolexport
import poolexport.ops  # noqa: F401
from poolexport._window import make_window_spec, reduce_layout

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

DT = {torch.float32: 0, torch.float16: 1}
TOL = {torch.float32: dict(rtol=2e-5, atol=2e-6), torch.float16: dict(rtol=2e-3, atol=2e-3)}


@pytest.fixture(scope="module")
def lib():
    so = ctypes.CDLL(poolexport.get_library_path())
    if not hasattr(so, "poolexport_cuda_launch_window"):
        pytest.skip("the custom-op library was built without CUDA (nvcc missing at build time)")
    for name in ("poolexport_cuda_launch_window", "poolexport_cuda_launch_reduce"):
        f = getattr(so, name)
        f.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32), ctypes.c_void_p]
        f.restype = ctypes.c_int
    return so


def _i32(v):
    v = int(v) & 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def launch_window(lib, op, x, a, scalar, seed=0):
    k = x.dim() - 2
    spec = make_window_spec("test", k, a["kernel_shape"], a.get("strides") or [1] * k, a.get("pads") or 0,
                            a.get("dilations") or 1, a.get("ceil_mode", False), a.get("auto_pad", "NOTSET"))
    out, begin = spec.resolve(x.shape[2:])
    lead = 3 - k
    pad3 = lambda v, fill: [fill] * lead + list(v)  # noqa: E731
    p = [x.shape[0], x.shape[1], *pad3(x.shape[2:], 1), *pad3(out, 1), *pad3(spec.kernel_shape, 1), *pad3(spec.strides, 1),
         *pad3(spec.dilations, 1), *pad3(begin, 0), scalar, _i32(seed), _i32(seed >> 32)]
    y = torch.empty((*x.shape[:2], *out), dtype=x.dtype, device=x.device)
    arr = (ctypes.c_int32 * len(p))(*[_i32(v) for v in p])
    rc = lib.poolexport_cuda_launch_window(op, DT[x.dtype], x.data_ptr(), y.data_ptr(), arr, torch.cuda.current_stream().cuda_stream)
    assert rc == 0
    torch.cuda.synchronize()
    return y


def launch_reduce(lib, op, x, axes, keepdims, scalar, seed=0):
    red, _, _, out_shape = reduce_layout(tuple(x.shape), axes, keepdims, "test")
    assert x.dim() <= 6
    dims = [1] * (6 - x.dim()) + list(x.shape)
    mask = 0
    for a in red:
        mask |= 1 << (6 - x.dim() + a)
    p = [x.dim(), *dims, mask, scalar, _i32(seed), _i32(seed >> 32)]
    y = torch.empty(out_shape, dtype=x.dtype, device=x.device)
    arr = (ctypes.c_int32 * len(p))(*[_i32(v) for v in p])
    rc = lib.poolexport_cuda_launch_reduce(op, DT[x.dtype], x.data_ptr(), y.data_ptr(), arr, torch.cuda.current_stream().cuda_stream)
    assert rc == 0
    torch.cuda.synchronize()
    return y


CASES = [
    ((2, 3, 11, 12), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ((2, 3, 10, 12), dict(kernel_shape=[2, 2], strides=[2, 2])),
    ((1, 2, 12, 11), dict(kernel_shape=[3, 2], strides=[1, 2], pads=[2, 0, 1, 1], dilations=[2, 3])),
    ((2, 2, 11, 10), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=True)),
    ((2, 2, 11, 10), dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_LOWER")),
    ((2, 3, 17), dict(kernel_shape=[5], strides=[3], pads=[2, 1], ceil_mode=True)),
    ((1, 2, 5, 7, 6), dict(kernel_shape=[2, 3, 3], strides=[1, 2, 2], pads=[1, 1, 1, 0, 1, 1])),
]


def _targs(a, k):
    return [a["kernel_shape"], a.get("strides") or [1] * k, a.get("pads") or [], a.get("dilations") or [],
            bool(a.get("ceil_mode", False)), a.get("auto_pad", "NOTSET")]


@pytest.mark.parametrize("dtype", list(DT))
@pytest.mark.parametrize("shape,a", CASES)
def test_cuda_windowed_kernels_match_torch(lib, shape, a, dtype):
    x = (torch.randn(shape, device="cuda") * 3).to(dtype)
    k = x.dim() - 2
    for beta in (1.0, 0.0, 4.0):
        bits = _i32(torch.tensor([beta], dtype=torch.float32).view(torch.int32).item())
        y = launch_window(lib, 0, x, a, bits)
        ref = torch.ops.poolexport.soft_pool(x, *_targs(a, k), beta)
        torch.testing.assert_close(y.double(), ref.double(), **TOL[dtype])
    y = launch_window(lib, 1, x, a, 0)
    ref = torch.ops.poolexport.stochastic_pool(x, *_targs(a, k), "expectation", 0)
    torch.testing.assert_close(y.double(), ref.double(), **TOL[dtype])
    for seed in (0, 12345, -(2**40) - 7):
        y = launch_window(lib, 1, x, a, 1, seed)
        ref = torch.ops.poolexport.stochastic_pool(x, *_targs(a, k), "sample", seed)
        assert torch.equal(y, ref)


@pytest.mark.parametrize("dtype", list(DT))
@pytest.mark.parametrize("shape,axes,keepdims", [((2, 5, 3, 4), [1], True), ((2, 3, 4, 5), [2, 3], False),
                                                 ((2, 3, 4, 2, 3), [0, 2, 4], True), ((3, 4, 5), None, True)])
def test_cuda_reduce_kernels_match_torch(lib, shape, axes, keepdims, dtype):
    x = (torch.randn(shape, device="cuda") * 3).to(dtype)
    bits = _i32(torch.tensor([1.5], dtype=torch.float32).view(torch.int32).item())
    y = launch_reduce(lib, 0, x, axes, keepdims, bits)
    torch.testing.assert_close(y.double(), torch.ops.poolexport.reduce_soft_pool(x, axes, keepdims, 1.5).double(), **TOL[dtype])
    y = launch_reduce(lib, 1, x, axes, keepdims, 0)
    ref = torch.ops.poolexport.reduce_stochastic_pool(x, axes, keepdims, "expectation", 0)
    torch.testing.assert_close(y.double(), ref.double(), **TOL[dtype])
    y = launch_reduce(lib, 1, x, axes, keepdims, 1, 77)
    assert torch.equal(y, torch.ops.poolexport.reduce_stochastic_pool(x, axes, keepdims, "sample", 77))


def test_cuda_large_inputs_finite(lib):
    x = (torch.randn(2, 4, 16, 16, device="cuda").sign() * 1e4).half()
    a = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    y = launch_window(lib, 0, x, a, _i32(torch.tensor([1.0]).view(torch.int32).item()))
    assert torch.isfinite(y).all()
