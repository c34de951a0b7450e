"""Every model of poolexport.models exports under each target and matches PyTorch in every
runtime present, in fp32 and fp16, at batch and spatial sizes other than the export's.

One torch.onnx export per (model, dtype) (the slow part); the three targets are applied to
copies of it. The sweep uses the TorchScript exporter (fast); the dynamo exporter runs on
two networks here and on every op in test_export_ops.py.
"""
import copy
import functools

import onnx
import pytest
import torch

from poolexport.onnx import apply_target
from poolexport.onnx.export import export_model
from poolexport.parity import check_parity, parity_shapes

models = pytest.importorskip("poolexport.models", reason="poolexport.models is not installed")
NAMES = models.list_models()
RUNTIMES = ("torch", "onnxruntime", "onnxruntime-fallback", "reference")


@functools.lru_cache(maxsize=None)
def _export(name: str, fp16: bool, exporter: str):
    torch.manual_seed(0)
    model = models.create_model(name).eval()
    for mod in model.modules():  # NewCBAM blocks start as the identity (gamma = 0): make them count
        if isinstance(mod, (models.NewCBAM, models.NewCBAMSeed)):
            torch.nn.init.constant_(mod.gamma, 0.5)
    shape = (2,) + tuple(models.default_input_shape(name)[1:])
    if exporter == "torchscript":  # the CLI's path for TorchScript archives; fast
        module = torch.jit.trace(model, torch.randn(*shape), check_trace=False)
    else:
        module = model
    return model, shape, export_model(module, torch.randn(*shape), target=None, fp16=fp16, exporter=exporter)


def _check(name, target, fp16, exporter, runtimes):
    model, shape, proto = _export(name, fp16, exporter)
    onnx_model = apply_target(copy.deepcopy(proto), target)
    onnx.checker.check_model(onnx_model, full_check=True)
    custom = [n for n in onnx_model.graph.node if n.domain == "poolexport"]
    if target == "portable":
        assert not custom and not onnx_model.functions
    if target == "tensorrt":
        assert not onnx_model.functions
        assert all({a.name for a in n.attribute} >= {"plugin_namespace", "plugin_version"} for n in custom)
        return  # no runtime here executes plugin nodes without TensorRT
    shapes = parity_shapes(onnx_model, shape)
    assert len(shapes) == 2 and shapes[1][0] != shapes[0][0] and shapes[1][2:] != shapes[0][2:]
    report = check_parity(onnx_model, model, shapes, fp16=fp16, runtimes=runtimes)
    ran = {r.runtime for r in report.results if r.status != "skip"}
    assert {"torch", "onnxruntime-fallback"} <= ran
    assert report.passed, [r for r in report.results if r.status not in ("pass", "skip")]


# fp16 on the ort target (its fallback runs the same decomposition as portable's inlined
# copy); keeps the sweep near a minute on two cores
@pytest.mark.parametrize("target,fp16", [("ort", False), ("ort", True), ("portable", False), ("tensorrt", False),
                                         ("tensorrt", True)], ids=["ort-fp32", "ort-fp16", "portable-fp32",
                                                                   "tensorrt-fp32", "tensorrt-fp16"])
@pytest.mark.parametrize("name", NAMES)
def test_model_exports(name, target, fp16):
    # onnx's ReferenceEvaluator is slow on whole networks: run it on the ort target only
    runtimes = RUNTIMES if target == "ort" else tuple(r for r in RUNTIMES if r != "reference")
    _check(name, target, fp16, "torchscript", runtimes)


@pytest.mark.parametrize("name", ["resnet_softpool", "newcbam"])
def test_model_exports_dynamo(name):
    """The dynamo exporter (the CLI's path for modules and .pt2 programs) on two networks."""
    _check(name, "ort", False, "dynamo", RUNTIMES)
