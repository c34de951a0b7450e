"""The custom-op library's CUDA kernels inside ONNX Runtime's CUDA provider, on a GPU.

One-node models without a local function, in float32 and float16, for every op and mode,
in sessions with ``session.disable_cpu_ep_fallback``: a node our library did not place
on CUDA fails the session instead of running elsewhere, so a pass means our CUDA kernel
ran. Outputs are compared with the same library's CPU kernels (sampled picks bit for
bit). Needs onnxruntime-gpu (``pip install ".[gpu]"``), a CUDA device and a library
built with nvcc; torch may be the CPU build.
"""
import ctypes

import numpy as np
import pytest
from onnx import TensorProto, helper

from poolexport import ort as pxort


def _reason():
    try:
        import onnxruntime as ort
    except ImportError as e:
        return f"onnxruntime not importable: {e}"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime without the CUDA execution provider (pip install '.[gpu]': onnxruntime-gpu)"
    try:
        so = ctypes.CDLL(pxort.get_library_path())
    except (RuntimeError, OSError) as e:
        return str(e)
    if not hasattr(so, "poolexport_cuda_launch_window"):
        return "the custom-op library was built without CUDA (nvcc missing at build time)"
    return None


REASON = _reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=REASON or "")]

ELEM = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float16: dict(rtol=2e-3, atol=2e-3)}
SEED = 2**40 + 5
CASES = [
    ("SoftPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], beta=2.0)),
    ("StochasticPool", dict(kernel_shape=[2, 2], strides=[2, 2], mode="expectation")),
    ("StochasticPool", dict(kernel_shape=[3, 2], strides=[1, 2], dilations=[2, 1], mode="sample", seed=SEED)),
    ("ReduceSoftPool", dict(axes=[2, 3], keepdims=1, beta=0.5)),
    ("ReduceStochasticPool", dict(axes=[1], keepdims=0, mode="expectation")),
    ("ReduceStochasticPool", dict(axes=[2, 3], keepdims=1, mode="sample", seed=SEED)),
]


def _model(op, attrs, dtype):
    node = helper.make_node(op, ["X"], ["Y"], domain="poolexport", **attrs)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", ELEM[dtype], None)],
                          [helper.make_tensor_value_info("Y", ELEM[dtype], None)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("poolexport", 1)],
                             ir_version=10).SerializeToString()


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("op,attrs", CASES)
def test_node_runs_on_our_cuda_kernel(op, attrs, dtype):
    import onnxruntime as ort

    model = _model(op, attrs, dtype)
    so = pxort.session_options()
    so.log_severity_level = 3
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    gpu = ort.InferenceSession(model, so, providers=["CUDAExecutionProvider"])
    assert gpu.get_providers() == ["CUDAExecutionProvider"]
    # non-negative activations (after ReLU) plus zeros: sample mode's all-zero windows too
    x = np.maximum(np.random.default_rng(0).standard_normal((2, 3, 9, 10)), 0).astype(dtype)
    y_gpu = gpu.run(None, {"X": x})[0]
    y_cpu = pxort.session(model).run(None, {"X": x})[0]
    assert y_gpu.dtype == dtype and y_gpu.shape == y_cpu.shape
    if attrs.get("mode") == "sample":
        np.testing.assert_array_equal(y_gpu, y_cpu)
    else:
        np.testing.assert_allclose(y_gpu.astype(np.float64), y_cpu.astype(np.float64), **TOL[dtype])


# innermost windows at the CUDA reduce kernels' lane limits: 1023 (32 lanes per output),
# 1024 (256 lanes: a whole block), and a kept innermost axis (a thread per output)
@pytest.mark.parametrize("shape,attrs", [((2, 3, 1023), dict(axes=[2], keepdims=0)),
                                         ((2, 3, 1024), dict(axes=[2], keepdims=1)),
                                         ((2, 1100, 3), dict(axes=[1], keepdims=0))], ids=["1023", "1024", "kept-inner"])
@pytest.mark.parametrize("op,extra", [("ReduceSoftPool", dict(beta=1.0)), ("ReduceStochasticPool", dict(mode="expectation"))])
def test_reduce_lanes_on_our_cuda_kernel(op, extra, shape, attrs):
    import onnxruntime as ort

    model = _model(op, dict(attrs, **extra), np.float32)
    so = pxort.session_options()
    so.log_severity_level = 3
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    gpu = ort.InferenceSession(model, so, providers=["CUDAExecutionProvider"])
    x = np.random.default_rng(1).uniform(-2, 3, shape).astype(np.float32)
    y_gpu = gpu.run(None, {"X": x})[0]
    y_cpu = pxort.session(model).run(None, {"X": x})[0]
    np.testing.assert_allclose(y_gpu.astype(np.float64), y_cpu.astype(np.float64), rtol=2e-5, atol=2e-6)
