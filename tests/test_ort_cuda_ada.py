"""The adaPool family (EdscwPool, IdwPool, AdaPool, AdaUnpool) inside ONNX Runtime's CUDA
provider, on a GPU.

One-node models, float32 and float16, in sessions with ``session.disable_cpu_ep_fallback``
(a node our library did not place on CUDA fails the session), compared with the float64
oracles tests/_ada_oracle.py and tests/_ada_unpool_oracle.py; a Beta that does not
broadcast gets the CPU kernel's message. Needs onnxruntime-gpu, a CUDA device and a
library built with nvcc (tests/test_ort_cuda.py's rule).
"""
import numpy as np
import pytest
from onnx import TensorProto, helper

from poolexport import ort as pxort
from _oracle import windows
from test_kernels_emulated_ada import (UNPOOL_CASES, _beta_shapes, _unpool_expect, _unpool_inputs, expect_close,
                                       oracle)
from test_ort_cuda import REASON

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=REASON or "")]

ELEM = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}
OPS = {"edscw": "EdscwPool", "idw": "IdwPool", "ada": "AdaPool"}
WINDOWS = [dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
           dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
           dict(kernel_shape=[3], strides=[2], pads=[1, 1]),
           dict(kernel_shape=[2, 2, 2], strides=[2, 2, 2])]
SHAPES = {2: (2, 3, 9, 10), 1: (2, 3, 13), 3: (1, 2, 4, 6, 5)}


def _model(op, inputs, attrs, dtype):
    node = helper.make_node(op, inputs, ["Y"], domain="poolexport", **attrs)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, ELEM[dtype], None) for n in inputs],
                          [helper.make_tensor_value_info("Y", ELEM[dtype], None)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("poolexport", 1)],
                             ir_version=10).SerializeToString()


def _gpu_session(model):
    import onnxruntime as ort

    so = pxort.session_options()
    so.log_severity_level = 3
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    s = ort.InferenceSession(model, so, providers=["CUDAExecutionProvider"])
    assert s.get_providers() == ["CUDAExecutionProvider"]
    return s


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("a", WINDOWS)
@pytest.mark.parametrize("kind", list(OPS))
def test_ada_node_runs_on_our_cuda_kernel(kind, a, dtype):
    x = (np.random.default_rng(0).standard_normal(SHAPES[len(a["kernel_shape"])]) * 2).astype(dtype)
    inputs = ["X", "Beta"] if kind == "ada" else ["X"]
    sess = _gpu_session(_model(OPS[kind], inputs, a, dtype))
    y_shape = (*x.shape[:2], *windows(x.shape[2:], a)[0])
    for bshape in _beta_shapes(y_shape) if kind == "ada" else [None]:
        feeds = {"X": x}
        beta = None
        if bshape is not None:
            beta = feeds["Beta"] = np.random.default_rng(1).uniform(-0.25, 1.25, bshape).astype(dtype)
        y = sess.run(None, feeds)[0]
        assert y.dtype == dtype
        expect_close(kind, y, oracle(kind, x, a, beta), x, a, dtype)


def test_ada_beta_not_broadcasting_is_refused():
    sess = _gpu_session(_model("AdaPool", ["X", "Beta"], dict(kernel_shape=[2, 2], strides=[2, 2]), np.float32))
    x = np.zeros((1, 2, 4, 4), np.float32)
    with pytest.raises(Exception, match="does not broadcast to the output"):
        sess.run(None, {"X": x, "Beta": np.zeros((3, 1, 1), np.float32)})


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("case", list(UNPOOL_CASES))
def test_ada_unpool_node_runs_on_our_cuda_kernel(case, dtype):
    x, me, mm, beta = _unpool_inputs(case, dtype)
    sess = _gpu_session(_model("AdaUnpool", ["X", "MaskEdscw", "MaskEm", "Beta"], {}, dtype))
    y = sess.run(None, {"X": x, "MaskEdscw": me, "MaskEm": mm, "Beta": beta})[0]
    _unpool_expect(y, x, me, mm, beta, dtype)
