"""The CUDA kernels (custom_ops/cuda/kernels.cu) on a GPU, through the library's C launchers.

ctypes calls on torch CUDA tensors, on torch's current stream. Geometry (output sizes and
begin pads) and expected values come from tests/_reference.py (float64 loops that share no
code with poolexport) or NumPy formulas, on the CPU: the kernels are never compared with
themselves. Sampled picks bit for bit. Outputs start as NaN, so an element no thread
writes shows. Skips through the ``gpu`` marker where there is no CUDA device or the library
was built without CUDA. tests/test_kernels_emulated*.py run the same source on the CPU.
"""
from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch

import _reference as ref
import poolexport
from poolexport.ops import _native


def _reason():
    if not torch.cuda.is_available():
        return "no CUDA device: torch.cuda.is_available() is False"
    if not _native.cuda_available():
        return "the custom-op library was built without CUDA (nvcc missing at build time)"
    return None


REASON = _reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=REASON or "")]

DT = {np.float32: 0, np.float16: 1}
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float16: dict(rtol=2e-3, atol=2e-3)}
BLOCK, MAX_GRID = 256, 65535  # custom_ops/include/poolexport/limits.h


@pytest.fixture(scope="module")
def lib():
    so = ctypes.CDLL(poolexport.get_library_path())
    for name in ("poolexport_cuda_launch_window", "poolexport_cuda_launch_reduce"):
        f = getattr(so, name)
        f.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32),
                      ctypes.c_void_p]
        f.restype = ctypes.c_int
    so.poolexport_cuda_error_string.restype = ctypes.c_char_p
    return so


def _i32(v):
    v = int(v) & 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def _beta_bits(beta):
    return _i32(np.array([beta], np.float32).view(np.int32)[0])


def resolve(shape, a):
    """(output sizes, begin pads) per spatial axis, from tests/_reference.py."""
    k = len(shape) - 2
    s, d = a.get("strides") or [1] * k, a.get("dilations") or [1] * k
    pads = a.get("pads") or [0] * (2 * k)
    axes = [ref.axis_out(shape[2 + i], a["kernel_shape"][i], s[i], d[i], pads[i], pads[k + i], a.get("ceil_mode", False),
                         a.get("auto_pad", "NOTSET")) for i in range(k)]
    return [o for o, _ in axes], [b for _, b in axes]


def _run(lib, launch, op, x_np, p, out_shape):
    x = torch.from_numpy(np.ascontiguousarray(x_np)).cuda()
    y = torch.full(out_shape, float("nan"), dtype=x.dtype, device="cuda")
    arr = (ctypes.c_int32 * len(p))(*[_i32(v) for v in p])
    rc = launch(op, DT[x_np.dtype.type], x.data_ptr(), y.data_ptr(), arr, torch.cuda.current_stream().cuda_stream)
    assert rc == 0, lib.poolexport_cuda_error_string(rc).decode()
    torch.cuda.synchronize()
    return y.cpu().numpy()


def launch_window(lib, op, x, a, scalar, seed=0):
    k = x.ndim - 2
    out, begin = resolve(x.shape, a)
    pad3 = lambda v, fill: [fill] * (3 - k) + list(v)  # noqa: E731
    p = [x.shape[0], x.shape[1], *pad3(x.shape[2:], 1), *pad3(out, 1), *pad3(a["kernel_shape"], 1),
         *pad3(a.get("strides") or [1] * k, 1), *pad3(a.get("dilations") or [1] * k, 1), *pad3(begin, 0),
         scalar, _i32(seed), _i32(seed >> 32)]
    return _run(lib, lib.poolexport_cuda_launch_window, op, x, p, (*x.shape[:2], *out))


def launch_reduce(lib, op, x, axes, keepdims, scalar, seed=0):
    r = x.ndim
    red = sorted(v % r for v in (axes if axes else range(r)))
    out_shape = [1 if i in red else x.shape[i] for i in range(r)] if keepdims else [x.shape[i] for i in range(r) if i not in red]
    p = [r, *([1] * (6 - r) + list(x.shape)), sum(1 << (6 - r + v) for v in red), scalar, _i32(seed), _i32(seed >> 32)]
    return _run(lib, lib.poolexport_cuda_launch_reduce, op, x, p, out_shape)


def _pool_ref(x, fn, a):
    return ref.pool(x.astype(np.float64), fn, a["kernel_shape"], a.get("strides"), a.get("pads"), a.get("dilations"),
                    a.get("ceil_mode", False), a.get("auto_pad", "NOTSET"))


def _expect_close(y, expected, dtype):
    assert y.shape == expected.shape and not np.isnan(y).any(), "an output element was never written"
    np.testing.assert_allclose(y.astype(np.float64), expected, **TOL[dtype])


CASES = [
    ((2, 3, 11, 12), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ((2, 3, 10, 12), dict(kernel_shape=[2, 2], strides=[2, 2])),
    ((1, 2, 12, 11), dict(kernel_shape=[3, 2], strides=[1, 2], pads=[2, 0, 1, 1], dilations=[2, 3])),
    ((2, 2, 15, 35), dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=True)),
    ((2, 2, 11, 10), dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_LOWER")),
    ((2, 3, 17), dict(kernel_shape=[5], strides=[3], pads=[2, 1], ceil_mode=True)),
    ((1, 2, 5, 7, 6), dict(kernel_shape=[2, 3, 3], strides=[1, 2, 2], pads=[1, 1, 1, 0, 1, 1])),
]


@pytest.mark.parametrize("dtype", list(DT))
@pytest.mark.parametrize("shape,a", CASES)
def test_cuda_windowed_kernels_match_float64_reference(lib, shape, a, dtype):
    x = (np.random.default_rng(1).standard_normal(shape) * 3).astype(dtype)
    for beta in (1.0, 0.0, 4.0):
        y = launch_window(lib, 0, x, a, _beta_bits(beta))
        _expect_close(y, _pool_ref(x, lambda v, e: ref.soft_window(v, float(np.float32(beta))), a), dtype)
    y = launch_window(lib, 1, x, a, 0)
    _expect_close(y, _pool_ref(x, lambda v, e: ref.stochastic_expectation_window(v), a), dtype)
    for seed in (0, 12345, -(2**40) - 7):
        y = launch_window(lib, 1, x, a, 1, seed)
        np.testing.assert_array_equal(y.astype(np.float64), _pool_ref(x, lambda v, e: ref.stochastic_sample_window(v, seed, e), a))


# last: the innermost axis reduced with windows of 31/32/33 (a thread, then 32 lanes per
# output) and 1023/1024/1025 (32, then 256 lanes), the limits of reduce.h
REDUCE_CASES = [((2, 5, 3, 4), [1], True), ((2, 3, 4, 5), [2, 3], False), ((2, 3, 4, 2, 3), [0, 2, 4], True),
                ((3, 4, 5), None, True), ((3, 31), [1], False), ((3, 32), [1], False), ((3, 33), [1], False),
                ((2, 1023), [1], False), ((2, 1024), [1], True), ((2, 2, 1025), [2], False), ((2, 3, 40, 40), [2, 3], False)]


@pytest.mark.parametrize("dtype", list(DT))
@pytest.mark.parametrize("shape,axes,keepdims", REDUCE_CASES)
def test_cuda_reduce_kernels_match_float64_reference(lib, shape, axes, keepdims, dtype):
    x = (np.random.default_rng(2).standard_normal(shape) * 3).astype(dtype)
    x64 = x.astype(np.float64)
    y = launch_reduce(lib, 0, x, axes, keepdims, _beta_bits(1.5))
    _expect_close(y, ref.reduce(x64, lambda v, e: ref.soft_window(v, 1.5), axes, keepdims).reshape(y.shape), dtype)
    y = launch_reduce(lib, 1, x, axes, keepdims, 0)
    _expect_close(y, ref.reduce(x64, lambda v, e: ref.stochastic_expectation_window(v), axes, keepdims).reshape(y.shape),
                  dtype)
    y = launch_reduce(lib, 1, x, axes, keepdims, 1, 77)
    expected = ref.reduce(x64, lambda v, e: ref.stochastic_sample_window(v, 77, e), axes, keepdims).reshape(y.shape)
    np.testing.assert_array_equal(y.astype(np.float64), expected)


def _soft_k2s1_numpy(x64, beta):
    """SoftPool 2x2 stride 1 as a float64 NumPy formula (max-shifted softmax of 4 slices)."""
    taps = np.stack([x64[..., i:x64.shape[-2] - 1 + i, j:x64.shape[-1] - 1 + j] for i in (0, 1) for j in (0, 1)])
    z = beta * taps
    w = np.exp(z - z.max(axis=0))
    return (w * taps).sum(axis=0) / w.sum(axis=0)


def test_grid_stride_wrap_past_the_grid_limit(lib):
    """4096^2 outputs: 256 more than 65,535 blocks of 256 threads hold; the last ones are
    reached only through the grid-stride loop."""
    x = np.random.default_rng(3).uniform(-3, 3, (1, 1, 4097, 4097)).astype(np.float32)
    assert 4096 * 4096 == BLOCK * MAX_GRID + 256
    a = dict(kernel_shape=[2, 2], strides=[1, 1])
    y = launch_window(lib, 0, x, a, _beta_bits(1.0))
    assert not np.isnan(y).any(), "an output element was never written"
    np.testing.assert_allclose(y.astype(np.float64), _soft_k2s1_numpy(x.astype(np.float64), 1.0), rtol=2e-5, atol=2e-6)


def test_reduce_grid_stride_wrap_past_the_grid_limit(lib):
    """256 lanes per output (window 1024), one output per block: 65,537 outputs."""
    x = np.random.default_rng(4).uniform(-3, 3, (MAX_GRID + 2, 1024)).astype(np.float32)
    y = launch_reduce(lib, 0, x, [1], False, _beta_bits(1.0))
    x64 = x.astype(np.float64)
    w = np.exp(x64 - x64.max(axis=1, keepdims=True))
    assert not np.isnan(y).any()
    np.testing.assert_allclose(y.astype(np.float64), (w * x64).sum(axis=1) / w.sum(axis=1), rtol=2e-5, atol=2e-6)
    y = launch_reduce(lib, 1, x, [1], False, 0)
    r = np.maximum(x64, 0)
    np.testing.assert_allclose(y.astype(np.float64), (r * r).sum(axis=1) / r.sum(axis=1), rtol=2e-5, atol=2e-6)


def test_cuda_large_inputs_finite(lib):
    x = (np.sign(np.random.default_rng(5).standard_normal((2, 4, 16, 16))) * 1e4).astype(np.float16)
    a = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    y = launch_window(lib, 0, x, a, _beta_bits(1.0))
    _expect_close(y, _pool_ref(x, lambda v, e: ref.soft_window(v, 1.0), a), np.float16)
