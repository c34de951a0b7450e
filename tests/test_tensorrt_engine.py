"""Engine building and the TensorRT runner.

Without TensorRT: the ONNX preparation for TensorRT's parser, argument parsing of
``build-engine`` and its one-line error. With TensorRT and a GPU (skipped here, with the
reason): every op in float32 and float16 built into an engine from a one-node ONNX model,
run by ``TensorRTRunner`` and compared with the PyTorch ops.
"""
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from poolexport.ops import reduce_soft_pool, reduce_stochastic_pool, soft_pool, stochastic_pool
from poolexport.tensorrt import plugins
from poolexport.tensorrt.engine import graph_is_fp16, parse_shapes, parse_size
from poolexport.tensorrt.onnx_prep import prepare_onnx
from poolexport.tensorrt.runner import tensorrt_available


def one_node_model(op, shape, attrs, elem=TensorProto.FLOAT, dynamic_batch=False, with_function=False):
    in_shape = ["N"] + list(shape[1:]) if dynamic_batch else list(shape)
    x = helper.make_tensor_value_info("x", elem, in_shape)
    y = helper.make_tensor_value_info("y", elem, None)
    node = helper.make_node(op, ["x"], ["y"], domain="poolexport", **attrs)
    graph = helper.make_graph([node], "g", [x], [y])
    functions = []
    if with_function:  # what the ort target attaches (a decomposition); here a stand-in body
        functions = [helper.make_function("poolexport", op, ["X"], ["Y"], [helper.make_node("Identity", ["X"], ["Y"])],
                                          [helper.make_opsetid("", 18)])]
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("poolexport", 1)],
                             functions=functions, ir_version=10)


def _attrs(node):
    return [(a.name, helper.get_attribute_value(a)) for a in node.attribute]


def test_prepare_onnx_orders_fills_and_tags_attributes():
    seed = -(2**40) - 7  # 0xFFFFFEFF_FFFFFFF9: both words matter
    model = one_node_model("StochasticPool", [1, 2, 6, 6], dict(seed=seed, mode="sample", kernel_shape=[2, 2]),
                           with_function=True)
    before = model.SerializeToString()
    out = prepare_onnx(model)
    assert model.SerializeToString() == before  # the caller's model is untouched
    assert list(out.functions) == []
    assert _attrs(out.graph.node[0]) == [
        ("kernel_shape", [2, 2]), ("strides", [1, 1]), ("pads", [0, 0, 0, 0]), ("dilations", [1, 1]),
        ("ceil_mode", 0), ("auto_pad", b"NOTSET"), ("mode", b"sample"), ("seed_lo", -7), ("seed_hi", -257),
        ("plugin_namespace", b"poolexport"), ("plugin_version", b"1"), ("aot", 1),
    ]
    assert [a[0] for a in _attrs(out.graph.node[0])][:-3] == list(plugins.ATTRS["StochasticPool"])
    assert plugins.join_seed(-7, -257) == seed


def test_prepare_onnx_rejects_seed_and_its_words():
    model = one_node_model("ReduceStochasticPool", [2, 3], dict(seed=1, seed_lo=1, seed_hi=0))
    with pytest.raises(ValueError, match="ReduceStochasticPool: node .* has both seed and seed_lo/seed_hi"):
        prepare_onnx(model)


def test_prepare_onnx_fills_reduce_axes_from_input_rank():
    model = one_node_model("ReduceSoftPool", [2, 3, 4], dict(beta=0.5))
    model.graph.node[0].attribute.append(helper.make_attribute("axes", [], attr_type=onnx.AttributeProto.INTS))
    out = prepare_onnx(model)
    assert _attrs(out.graph.node[0])[:3] == [("axes", [0, 1, 2]), ("keepdims", 1), ("beta", 0.5)]


def test_prepare_onnx_is_idempotent_and_keeps_other_nodes():
    model = one_node_model("SoftPool", [1, 1, 5], dict(kernel_shape=[3], pads=[1, 1]))
    model.graph.node.append(helper.make_node("Relu", ["y"], ["z"]))
    once = prepare_onnx(model)
    assert prepare_onnx(once).SerializeToString() == once.SerializeToString()
    assert once.graph.node[1] == model.graph.node[1]


@pytest.mark.parametrize("op,attrs,match", [
    ("SoftPool", dict(pads=[0, 0]), "SoftPool: kernel_shape is required"),
    ("SoftPool", dict(kernel_shape=[2], alpha=1.0), "SoftPool: unknown attribute"),
    ("MaxPool", dict(kernel_shape=[2]), "MaxPool: no TensorRT plugin"),
])
def test_prepare_onnx_rejects_bad_nodes(op, attrs, match):
    with pytest.raises(ValueError, match=match):
        prepare_onnx(one_node_model(op, [1, 1, 5], attrs))


@pytest.mark.parametrize("op,attrs", [
    ("StochasticPool", dict(kernel_shape=[2, 2], strides=[1, 2])),
    ("ReduceStochasticPool", dict(axes=[2, 3], keepdims=1)),
])
def test_prepared_file_gives_the_same_picks_in_onnxruntime(op, attrs):
    """A prepared (tensorrt-target) file carries seed_lo/seed_hi; our ONNX Runtime kernels
    read them, so that file samples exactly like the documented int64 seed."""
    import onnxruntime as ort

    from _reference import pool, reduce, stochastic_sample_window
    from poolexport.parity import Skip, custom_op_library

    try:
        library = custom_op_library()
    except Skip as e:
        pytest.skip(str(e))
    seed = 2**40 + 5
    model = prepare_onnx(one_node_model(op, [2, 3, 6, 6], dict(attrs, mode="sample", seed=seed)))
    so = ort.SessionOptions()
    so.register_custom_ops_library(library)
    x = np.random.default_rng(3).random((2, 3, 6, 6), dtype=np.float32)
    y = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    pick = lambda vals, e: stochastic_sample_window(vals, seed, e)  # noqa: E731
    expected = (pool(x, pick, attrs["kernel_shape"], attrs["strides"]) if op == "StochasticPool"
                else reduce(x, pick, attrs["axes"], True))
    np.testing.assert_array_equal(y, expected.astype(np.float32))


def test_parse_shapes_and_sizes():
    assert parse_shapes("x:1x3x8x8/2x3x16x16/4x3x32x32") == {"x": ((1, 3, 8, 8), (2, 3, 16, 16), (4, 3, 32, 32))}
    assert parse_shapes("a:2x3,b:1x1/2x2/3x3")["a"] == ((2, 3), (2, 3), (2, 3))
    for bad in ("x", "x:1x2/3", "x:4x3/2x3/8x3", "x:ax3"):
        with pytest.raises(ValueError, match="--shapes"):
            parse_shapes(bad)
    assert parse_size("1G") == 1 << 30 and parse_size("512M") == 512 << 20 and parse_size("4096") == 4096
    with pytest.raises(ValueError, match="--workspace"):
        parse_size("lots")


def test_graph_dtype_detection():
    assert graph_is_fp16(one_node_model("SoftPool", [1, 1, 4], dict(kernel_shape=[2]), elem=TensorProto.FLOAT16))
    assert not graph_is_fp16(one_node_model("SoftPool", [1, 1, 4], dict(kernel_shape=[2])))


def test_build_engine_without_tensorrt_is_one_line(tmp_path):
    if tensorrt_available() is None:
        pytest.skip("TensorRT is available here")
    path = tmp_path / "m.onnx"
    onnx.save(one_node_model("SoftPool", [1, 1, 4], dict(kernel_shape=[2])), path)
    proc = subprocess.run([sys.executable, "-m", "poolexport.tensorrt.cli", str(path), "-o", str(tmp_path / "m.plan")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")
    assert "TensorRT" in proc.stderr or "nvcc" in proc.stderr


def test_register_plugins_without_tensorrt_names_what_is_missing():
    if tensorrt_available() is None:
        pytest.skip("TensorRT is available here")
    from poolexport.tensorrt import TensorRTUnavailable, register_plugins

    with pytest.raises(TensorRTUnavailable, match="TensorRT Python package not importable|no CUDA|tensorrt.plugin"):
        register_plugins()


# ------------------------------------------------------------------ needs TensorRT + GPU
REASON = tensorrt_available()


def needs_trt(test):
    return pytest.mark.gpu(pytest.mark.skipif(REASON is not None, reason=REASON or "")(test))


CASES = [
    ("SoftPool", [2, 3, 9, 8], dict(kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 1, 1], ceil_mode=1, beta=0.7),
     lambda x, a: soft_pool(x, a["kernel_shape"], a["strides"], a["pads"], [1, 1], True, "NOTSET", a["beta"])),
    ("SoftPool", [2, 2, 7, 6, 5], dict(kernel_shape=[2, 3, 2], auto_pad="SAME_UPPER", dilations=[1, 1, 2]),
     lambda x, a: soft_pool(x, a["kernel_shape"], [1, 1, 1], [0] * 6, a["dilations"], False, "SAME_UPPER", 1.0)),
    ("StochasticPool", [2, 3, 10], dict(kernel_shape=[3], strides=[2], mode="sample", seed=2**40 + 5),
     lambda x, a: stochastic_pool(x, [3], [2], [0, 0], [1], False, "NOTSET", "sample", a["seed"])),
    ("StochasticPool", [1, 4, 8, 8], dict(kernel_shape=[2, 2], strides=[2, 2]),
     lambda x, a: stochastic_pool(x, [2, 2], [2, 2], [0] * 4, [1, 1], False, "NOTSET", "expectation", 0)),
    ("ReduceSoftPool", [2, 8, 5, 5], dict(axes=[1], keepdims=1, beta=2.0),
     lambda x, a: reduce_soft_pool(x, [1], True, 2.0)),
    ("ReduceStochasticPool", [2, 8, 5, 5], dict(axes=[1], keepdims=0, mode="sample", seed=3),
     lambda x, a: reduce_stochastic_pool(x, [1], False, "sample", 3)),
]


@needs_trt
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("op,shape,attrs,reference", CASES, ids=lambda c: c if isinstance(c, str) else None)
def test_engine_matches_torch_ops(tmp_path, op, shape, attrs, reference, dtype):
    from poolexport.tensorrt import build_engine
    from poolexport.tensorrt.runner import TensorRTRunner

    elem = TensorProto.FLOAT16 if dtype == "float16" else TensorProto.FLOAT
    path = tmp_path / "m.onnx"
    onnx.save(one_node_model(op, shape, attrs, elem=elem, dynamic_batch=True), path)
    lo, hi = [1] + shape[1:], [4] + shape[1:]
    build_engine(path, tmp_path / "m.plan", shapes={"x": (lo, shape, hi)})
    runner = TensorRTRunner(tmp_path / "m.plan")
    torch_dtype = torch.float16 if dtype == "float16" else torch.float32
    x = (torch.randn(*shape) * 3).to(torch_dtype)
    got = runner({"x": x.numpy()})["y"]
    expected = reference(x, attrs).numpy()
    assert got.shape == expected.shape and got.dtype == expected.dtype
    scale = max(1.0, float(x.abs().max()))
    tol = dict(rtol=2e-3, atol=2e-3) if dtype == "float16" else dict(rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(got.astype(np.float64), expected.astype(np.float64), **tol)


@needs_trt
@pytest.mark.parametrize("fp16", [False, True], ids=["float32", "float16"])
@pytest.mark.parametrize("arch", ["newcbam", "cbam_stochastic_l2", "resnet_softpool", "se_effnet", "eca"])
def test_example_models_parity_on_tensorrt(arch, fp16):
    """The parity harness's ``tensorrt`` runtime on every example network (export shape and
    another dynamic shape), with the harness's stated tolerances."""
    from poolexport.models import create_model, default_input_shape
    from poolexport.onnx import export_model
    from poolexport.parity import check_parity, parity_shapes

    torch.manual_seed(0)
    net = create_model(arch).eval()
    shape = default_input_shape(arch)
    proto = export_model(net, torch.randn(*shape), target="tensorrt", fp16=fp16)
    report = check_parity(proto, net, parity_shapes(proto, shape), fp16=fp16, runtimes=["tensorrt"])
    statuses = [(r.status, r.shape, r.reason, r.max_abs) for r in report.results]
    assert statuses and all(s[0] == "pass" for s in statuses), statuses
