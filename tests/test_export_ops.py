"""Every poolexport op through both torch exporters, under every target, in fp32 and fp16.

Each export must pass onnx.checker (full_check), carry opset >= 18 and an IR version that
onnxruntime 1.31 reads, and match PyTorch (float64 reference, poolexport.parity) in every
runtime present (plain ONNX Runtime without the library, onnx's ReferenceEvaluator, and
the custom-op library when built) at batch and spatial sizes other than the export's.
"""
import copy
import functools

import onnx
import pytest
import torch
from onnx import helper

import poolexport.nn as pnn
from poolexport.onnx import apply_target
from poolexport.onnx.export import export_model
from poolexport.parity import check_parity, parity_shapes

LAYERS = {
    "SoftPool1d": (lambda: pnn.SoftPool1d(3, 2, padding=1, beta=0.5), (1, 3, 9)),
    "SoftPool2d": (lambda: pnn.SoftPool2d(2, ceil_mode=True), (1, 3, 7, 8)),
    "SoftPool2d-same": (lambda: pnn.SoftPool2d(3, 2, padding="same", dilation=2), (1, 2, 9, 8)),
    "SoftPool3d": (lambda: pnn.SoftPool3d(2, padding=1), (1, 2, 4, 5, 4)),
    "StochasticPool2d": (lambda: pnn.StochasticPool2d(3, 2, padding=1), (1, 3, 8, 7)),
    "SoftPoolReduce": (lambda: pnn.SoftPoolReduce(dim=(2, 3), keepdim=True, beta=2.0), (1, 3, 5, 6)),
    "StochasticPoolReduce": (lambda: pnn.StochasticPoolReduce(dim=1), (1, 4, 5, 6)),
}
OP_TYPE = {"SoftPool": "SoftPool", "StochasticPool": "StochasticPool", "SoftPoolReduce": "ReduceSoftPool",
           "StochasticPoolReduce": "ReduceStochasticPool"}
RUNTIMES = ("torch", "onnxruntime", "onnxruntime-fallback", "reference")


def op_type(layer: str) -> str:
    base = layer.split("-")[0].rstrip("123d") if "Reduce" not in layer else layer
    return OP_TYPE[base]


@functools.lru_cache(maxsize=None)
def _export(layer: str, exporter: str, fp16: bool):
    make, shape = LAYERS[layer]
    torch.manual_seed(0)
    module = make().eval()
    return module, shape, export_model(module, torch.randn(*shape), target=None, fp16=fp16, exporter=exporter)


def exported(layer, exporter, fp16, target):
    module, shape, proto = _export(layer, exporter, fp16)
    return module, shape, apply_target(copy.deepcopy(proto), target)


def node_attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def check_common(model):
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version <= 10
    assert {i.domain: i.version for i in model.opset_import}[""] >= 18


def check_runs(module, shape, model, fp16):
    shapes = parity_shapes(model, (2,) + tuple(shape[1:]))
    assert len(shapes) == 2
    assert all(a != b for a, b in zip(shapes[0][2:], shapes[1][2:])), "spatial sizes must be dynamic"
    report = check_parity(model, module, shapes, fp16=fp16, runtimes=RUNTIMES)
    ran = {r.runtime for r in report.results if r.status != "skip"}
    assert {"torch", "onnxruntime-fallback", "reference"} <= ran
    assert report.passed, [r for r in report.results if r.status not in ("pass", "skip")]


FAST = [(layer, "torchscript", fp16) for layer in LAYERS for fp16 in (False, True)]
DYNAMO = [(layer, "dynamo", False) for layer in LAYERS] + [("SoftPool2d", "dynamo", True),
                                                           ("StochasticPoolReduce", "dynamo", True)]


@pytest.mark.parametrize("layer,exporter,fp16", FAST + DYNAMO, ids=lambda v: str(v))
def test_ort_target(layer, exporter, fp16):
    module, shape, model = exported(layer, exporter, fp16, "ort")
    check_common(model)
    nodes = [n for n in model.graph.node if n.domain == "poolexport"]
    assert [n.op_type for n in nodes] == [op_type(layer)]
    assert {(f.domain, f.name) for f in model.functions} == {("poolexport", op_type(layer))}
    elem = model.graph.input[0].type.tensor_type.elem_type
    assert elem == (onnx.TensorProto.FLOAT16 if fp16 else onnx.TensorProto.FLOAT)
    check_runs(module, shape, model, fp16)


@pytest.mark.parametrize("layer,exporter,fp16", FAST + DYNAMO[:3], ids=lambda v: str(v))
def test_portable_target(layer, exporter, fp16):
    module, shape, model = exported(layer, exporter, fp16, "portable")
    check_common(model)
    assert not any(n.domain == "poolexport" for n in model.graph.node)
    assert "poolexport" not in {i.domain for i in model.opset_import}
    assert not model.functions
    check_runs(module, shape, model, fp16)


@pytest.mark.parametrize("layer", list(LAYERS))
def test_tensorrt_target(layer):
    _, _, model = exported(layer, "torchscript", False, "tensorrt")
    check_common(model)
    assert not model.functions
    (node,) = [n for n in model.graph.node if n.domain == "poolexport"]
    assert node.op_type == op_type(layer)
    attrs = node_attrs(node)
    assert attrs["plugin_namespace"] == b"poolexport" and attrs["plugin_version"] == b"1"
    assert attrs["aot"] == 1
    # tensorrt.plugin hands attributes to the plugin by position: all of them, in the
    # torch op's argument order (the one op signature every backend shares), the int64
    # seed as two int32 words (TensorRT's parser narrows INT attributes to int32)
    torch_op = {"SoftPool": "soft_pool", "StochasticPool": "stochastic_pool", "ReduceSoftPool": "reduce_soft_pool",
                "ReduceStochasticPool": "reduce_stochastic_pool"}[node.op_type]
    arguments = [a.name for a in getattr(torch.ops.poolexport, torch_op).default._schema.arguments[1:]]
    arguments = [w for a in arguments for w in (("seed_lo", "seed_hi") if a == "seed" else (a,))]
    fields = [a.name for a in node.attribute if a.name not in ("plugin_namespace", "plugin_version", "aot")]
    assert fields == arguments


@pytest.mark.parametrize("layer", list(LAYERS))
def test_exporters_agree(layer):
    """Both exporters give the same custom node with the same attributes."""
    nodes = []
    for exporter in ("torchscript", "dynamo"):
        _, _, model = exported(layer, exporter, False, "ort")
        (node,) = [n for n in model.graph.node if n.domain == "poolexport"]
        nodes.append((node.op_type, node_attrs(node)))
    assert nodes[0] == nodes[1]


def test_attributes_are_explicit_onnx_values():
    """PyTorch's stride default (= kernel) and symmetric padding become ONNX attributes."""
    _, _, model = exported("SoftPool1d", "torchscript", False, "ort")
    (node,) = [n for n in model.graph.node if n.domain == "poolexport"]
    assert node_attrs(node) == dict(kernel_shape=[3], strides=[2], pads=[1, 1], dilations=[1], ceil_mode=0,
                                    auto_pad=b"NOTSET", beta=0.5)
    _, _, model = exported("SoftPool2d-same", "torchscript", False, "ort")
    (node,) = [n for n in model.graph.node if n.domain == "poolexport"]
    assert node_attrs(node)["auto_pad"] == b"SAME_UPPER" and node_attrs(node)["dilations"] == [2, 2]


def test_training_mode_sample_exports_bit_exact():
    """A StochasticPool2d traced in training mode (mode="sample", fixed seed) exports, and
    the decomposition reproduces PyTorch's picks exactly at other sizes."""
    module = pnn.StochasticPool2d(2, seed=1)
    module.train()
    traced = torch.jit.trace(module, torch.rand(1, 1, 4, 4), check_trace=False)
    proto = export_model(traced, torch.rand(1, 1, 4, 4), target=None)
    model = apply_target(copy.deepcopy(proto), "ort")
    onnx.checker.check_model(model, full_check=True)
    (node,) = [n for n in model.graph.node if n.domain == "poolexport"]
    assert node_attrs(node)["mode"] == b"sample" and node_attrs(node)["seed"] == 1
    x = torch.rand(3, 1, 6, 8)
    import onnxruntime as ort

    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(y), module(x), rtol=0, atol=0)
