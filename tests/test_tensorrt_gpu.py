"""The kernels the TensorRT plugins launch, launched the way the plugins launch them.

Same PTX (``poolexport.tensorrt.ptx``), same entry points, same int32 arguments
(``shapes.kernel_args``) and the same grid rule (``abi.launch_grid`` of ``shapes.launch_total``), loaded with CuPy's
``RawModule`` instead of TensorRT, and compared with the PyTorch ops on CPU tensors (the CPU kernels) for every op in
float32 and float16. Needs a CUDA GPU, CuPy and nvcc (a lent GPU machine has them).
"""
import numpy as np
import pytest
import torch

from poolexport.ops import reduce_soft_pool, reduce_stochastic_pool, soft_pool, stochastic_pool
from poolexport.tensorrt import abi, ptx, shapes


def _gpu_reason():
    try:
        import cupy
    except Exception as e:  # ImportError, or CUDA libraries missing
        return f"CuPy not importable: {type(e).__name__}: {e}"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA device"
    except Exception as e:
        return f"no CUDA device: {e}"
    if ptx.find_nvcc() is None:
        return "nvcc not found: cannot build the PTX"
    return None


REASON = _gpu_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=REASON or "")]


@pytest.fixture(scope="module")
def module():
    import cupy

    return cupy.RawModule(path=str(ptx.ptx_path()))


def _window_ref(op, x, a):
    k = len(a["kernel_shape"])
    args = (a["kernel_shape"], a.get("strides", [1] * k), a.get("pads", [0] * 2 * k), a.get("dilations", [1] * k),
            bool(a.get("ceil_mode", 0)), a.get("auto_pad", "NOTSET"))
    if op == "SoftPool":
        return soft_pool(x, *args, a.get("beta", 1.0))
    return stochastic_pool(x, *args, a.get("mode", "expectation"), a.get("seed", 0))


def _reduce_ref(op, x, a):
    if op == "ReduceSoftPool":
        return reduce_soft_pool(x, a["axes"], bool(a["keepdims"]), a.get("beta", 1.0))
    return reduce_stochastic_pool(x, a["axes"], bool(a["keepdims"]), a.get("mode", "expectation"), a.get("seed", 0))


CASES = [
    ("SoftPool", [2, 3, 17], dict(kernel_shape=[4], strides=[3], pads=[2, 1], ceil_mode=1, beta=0.5)),
    ("SoftPool", [2, 3, 12, 11], dict(kernel_shape=[3, 3], strides=[2, 2], dilations=[2, 1], auto_pad="SAME_LOWER")),
    ("SoftPool", [1, 2, 6, 7, 8], dict(kernel_shape=[2, 2, 3], strides=[2, 1, 2], pads=[1, 0, 1, 0, 1, 1], beta=4.0)),
    ("SoftPool", [2, 4, 9, 9], dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], beta=0.0)),
    ("StochasticPool", [2, 3, 16], dict(kernel_shape=[3], strides=[2], pads=[1, 1], mode="sample", seed=-7)),
    ("StochasticPool", [2, 3, 12, 10], dict(kernel_shape=[2, 3], strides=[2, 2], ceil_mode=1, mode="sample",
                                           seed=2**35 + 11)),
    ("StochasticPool", [1, 2, 5, 6, 7], dict(kernel_shape=[2, 2, 2], strides=[1, 2, 2], mode="expectation")),
    ("ReduceSoftPool", [2, 16, 7, 5], dict(axes=[1], keepdims=1, beta=1.5)),
    ("ReduceSoftPool", [3, 4, 5], dict(axes=[0, 2], keepdims=0, beta=1.0)),
    ("ReduceStochasticPool", [2, 16, 6, 6], dict(axes=[1], keepdims=1, mode="sample", seed=123)),
    ("ReduceStochasticPool", [2, 3, 2, 3, 2, 2, 3], dict(axes=[0, 2, 3, 6], keepdims=0, mode="sample", seed=5)),
    ("ReduceStochasticPool", [4, 9], dict(axes=[1], keepdims=0, mode="expectation")),
    # innermost windows of 1023 (32 lanes per output) and 1024 (256 lanes: a whole block)
    ("ReduceSoftPool", [2, 3, 1023], dict(axes=[2], keepdims=0, beta=1.0)),
    ("ReduceSoftPool", [2, 3, 1024], dict(axes=[2], keepdims=1, beta=1.0)),
    ("ReduceStochasticPool", [3, 1100], dict(axes=[1], keepdims=0, mode="expectation")),
]


def _launch(module, op, x_cpu, attrs, grid=None):
    import cupy

    dtype = "float16" if x_cpu.dtype == torch.float16 else "float32"
    args, out_shape = shapes.kernel_args(op, list(x_cpu.shape), attrs)
    x = cupy.asarray(x_cpu.numpy())
    y = cupy.full(out_shape, np.nan, dtype=x.dtype)  # NaN: an element left unwritten shows
    kernel = module.get_function(abi.kernel_name(op, dtype))
    g = abi.launch_grid(shapes.launch_total(op, list(x_cpu.shape), attrs)) if grid is None else grid
    kernel((g, 1, 1), (abi.BLOCK, 1, 1), (x, *[np.int32(a) for a in args], y))
    cupy.cuda.runtime.deviceSynchronize()
    return cupy.asnumpy(y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("op,shape,attrs", CASES)
def test_ptx_kernels_match_torch_ops(module, op, shape, attrs, dtype):
    torch.manual_seed(0)
    x = (torch.randn(*shape) * 2).to(dtype)
    if op == "SoftPool" and attrs.get("beta", 1.0) == 4.0:
        x = x * 40  # large activations: the stable formulation must stay finite
    got = _launch(module, op, x, attrs)
    ref = (_window_ref if op in ("SoftPool", "StochasticPool") else _reduce_ref)(op, x, attrs).numpy()
    assert got.shape == ref.shape and np.isfinite(got).all()
    if attrs.get("mode") == "sample":
        np.testing.assert_array_equal(got, ref)  # the same Philox picks, bit for bit
    elif dtype == torch.float16:
        np.testing.assert_allclose(got.astype(np.float32), ref.astype(np.float32), rtol=2e-3, atol=2e-3)
    else:  # device expf vs host exp and summation order: a few float32 ulps of the inputs' scale
        scale = max(1.0, float(x.abs().max()))
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("op,shape,attrs", [CASES[1], CASES[5], CASES[9]])
def test_any_grid_covers_every_element(module, op, shape, attrs):
    x = torch.randn(*shape)
    np.testing.assert_array_equal(_launch(module, op, x, attrs, grid=1), _launch(module, op, x, attrs))
