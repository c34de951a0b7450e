"""The adaPool family's kernels launched the way the TensorRT plugins launch them: the same
PTX (``poolexport.tensorrt.ptx``), entry points, int32 arguments (``shapes.kernel_args`` with
Beta's / the masks' shapes) and grid rule (``abi.launch_grid`` of ``shapes.launch_total``),
loaded with CuPy's ``RawModule`` instead of TensorRT; inputs in the entry point's order
(``abi.kernel_inputs``). Compared with the float64 oracles on the CPU at the tolerances of
tests/test_kernels_emulated_ada.py. Needs a CUDA GPU, CuPy and nvcc
(tests/test_tensorrt_gpu.py's rule).
"""
import numpy as np
import pytest

from poolexport.tensorrt import abi, ptx, shapes
from _oracle import windows
from test_kernels_emulated_ada import UNPOOL_CASES, _unpool_expect, _unpool_inputs, expect_close, oracle
from test_tensorrt_gpu import REASON

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=REASON or "")]

CASES = [
    ("EdscwPool", [2, 3, 17], dict(kernel_shape=[4], strides=[3], pads=[2, 1], ceil_mode=1), None),
    ("IdwPool", [2, 3, 12, 11], dict(kernel_shape=[3, 3], strides=[2, 2], dilations=[2, 1], pads=[1, 1, 1, 1]), None),
    ("EdscwPool", [1, 2, 6, 7, 8], dict(kernel_shape=[2, 2, 3], strides=[2, 1, 2], pads=[1, 0, 1, 0, 1, 1]), None),
    ("AdaPool", [2, 3, 12, 11], dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), "spatial"),
    ("AdaPool", [2, 3, 16], dict(kernel_shape=[2], strides=[2]), "channel"),
    ("AdaPool", [1, 2, 6, 7, 8], dict(kernel_shape=[2, 2, 2], strides=[2, 2, 2], ceil_mode=1), "scalar"),
]
KIND = {"EdscwPool": "edscw", "IdwPool": "idw", "AdaPool": "ada"}


def _launch(module, op, inputs, attrs, grid=None):
    import cupy

    dtype = "float16" if inputs[0].dtype == np.float16 else "float32"
    shp = [list(t.shape) for t in inputs]
    args, out_shape = shapes.kernel_args(op, shp[0], attrs, others=shp[1:])
    dev = [cupy.asarray(np.ascontiguousarray(t)) for t in inputs]
    y = cupy.full(out_shape, np.nan, dtype=dev[0].dtype)  # NaN: an element left unwritten shows
    g = abi.launch_grid(shapes.launch_total(op, shp[0], attrs, others=shp[1:])) if grid is None else grid
    module.get_function(abi.kernel_name(op, dtype))((g, 1, 1), (abi.BLOCK, 1, 1), (*dev, *[np.int32(a) for a in args], y))
    cupy.cuda.runtime.deviceSynchronize()
    return cupy.asnumpy(y)


@pytest.fixture(scope="module")
def module():
    import cupy

    return cupy.RawModule(path=str(ptx.ptx_path()))


def _inputs(op, shape, attrs, beta_form, dtype):
    x = (np.random.default_rng(0).standard_normal(shape) * 2).astype(dtype)
    if op != "AdaPool":
        return [x], None
    out = windows(shape[2:], attrs)[0]
    bshape = {"spatial": tuple(out), "channel": (shape[1],) + (1,) * len(out), "scalar": ()}[beta_form]
    beta = np.random.default_rng(1).uniform(-0.25, 1.25, bshape).astype(dtype)
    return [x, beta], beta


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("op,shape,attrs,beta_form", CASES)
def test_ptx_ada_kernels_match_float64_oracle(module, op, shape, attrs, beta_form, dtype):
    inputs, beta = _inputs(op, shape, attrs, beta_form, dtype)
    y = _launch(module, op, inputs, attrs)
    expect_close(KIND[op], y, oracle(KIND[op], inputs[0], attrs, beta), inputs[0], attrs, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("case", list(UNPOOL_CASES))
def test_ptx_ada_unpool_matches_float64_oracle(module, case, dtype):
    x, me, mm, beta = _unpool_inputs(case, dtype)
    _unpool_expect(_launch(module, "AdaUnpool", [x, me, mm, beta], {}), x, me, mm, beta, dtype)


def test_any_grid_covers_every_element(module):
    op, shape, attrs, beta_form = CASES[3]
    inputs, _ = _inputs(op, shape, attrs, beta_form, np.float32)
    np.testing.assert_array_equal(_launch(module, op, inputs, attrs, grid=1), _launch(module, op, inputs, attrs))
