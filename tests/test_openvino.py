"""OpenVINO (CPU plugin) as a parity runtime: every example network's portable file within
the tolerance, fp32 and fp16; ort files through their inlined functions; tensorrt files
skipped; the note with the error at OpenVINO's default precision; a skip naming the
missing package where openvino is not installed.

Each network is exported once per dtype with the TorchScript exporter (fast); the CLI test
runs the shipped dynamo-exported example as the README shows it.
"""
import copy
import functools
import json
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from poolexport.onnx import apply_target
from poolexport.onnx.export import export_model
from poolexport.parity import TOLERANCES, check_parity, errors, parity_shapes, reference_outputs

models = pytest.importorskip("poolexport.models", reason="poolexport.models is not installed")
ov = pytest.importorskip("openvino", reason="openvino is not installed (pip install '.[openvino]')")
NAMES = models.list_models()
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "resnet_softpool.pt2"


@functools.lru_cache(maxsize=None)
def _export(name: str, fp16: bool):
    torch.manual_seed(0)
    model = models.create_model(name).eval()
    shape = (2,) + tuple(models.default_input_shape(name)[1:])
    module = torch.jit.trace(model, torch.randn(*shape), check_trace=False)
    return model, shape, export_model(module, torch.randn(*shape), target=None, fp16=fp16, exporter="torchscript")


def _file(name, target, fp16=False):
    model, shape, proto = _export(name, fp16)
    return model, shape, apply_target(copy.deepcopy(proto), target)


def _only(report, runtime="openvino"):
    rows = [r for r in report.results if r.runtime == runtime]
    assert rows, report.results
    return rows


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name", NAMES)
def test_portable_file_passes(name, fp16):
    model, shape, onnx_model = _file(name, "portable", fp16)
    shapes = parity_shapes(onnx_model, shape)
    assert len(shapes) == 2  # the dynamic batch and spatial axes reach OpenVINO too
    report = check_parity(onnx_model, model, shapes, fp16=fp16, runtimes=("openvino",))
    rows = _only(report)
    assert [r.status for r in rows] == ["pass", "pass"], rows


def test_ort_file_runs_through_its_inlined_functions():
    model, shape, onnx_model = _file("resnet_softpool", "ort")
    assert any(n.domain == "poolexport" for n in onnx_model.graph.node)
    # OpenVINO alone does not use the file's local functions: the harness has to inline them
    with pytest.raises(Exception, match="SoftPool"):
        ov.Core().read_model(onnx_model.SerializeToString())
    report = check_parity(onnx_model, model, [shape], runtimes=("openvino",))
    assert [r.status for r in _only(report)] == ["pass"]


def test_tensorrt_file_is_skipped_with_the_reason():
    model, shape, onnx_model = _file("resnet_softpool", "tensorrt")
    report = check_parity(onnx_model, model, [shape], runtimes=("openvino",))
    (row,) = _only(report)
    assert row.status == "skip" and "local functions" in row.reason and "tensorrt" in row.reason


def test_sample_mode_is_skipped_with_the_reason():
    """StochasticPool mode='sample' decomposes with ai.onnx.ml's LabelEncoder, which
    OpenVINO cannot read: a skip naming it, not an error that fails the whole check."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3, 8, 8])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    node = helper.make_node("StochasticPool", ["X"], ["Y"], domain="poolexport", kernel_shape=[2, 2], strides=[2, 2],
                            mode="sample", seed=7)
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]), ir_version=10,
                              opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("poolexport", 1)])
    portable = apply_target(model, "portable")
    with pytest.raises(Exception, match="LabelEncoder"):  # the fact the skip rests on
        ov.Core().read_model(portable.SerializeToString())
    report = check_parity(portable, torch.nn.Identity(), [(2, 3, 8, 8)], runtimes=("openvino",))
    (row,) = _only(report)
    assert row.status == "skip" and "LabelEncoder" in row.reason


def test_pins_f32():
    """The check runs at f32 whatever OpenVINO's default is on this CPU."""
    from poolexport.parity import _runner

    model, shape, onnx_model = _file("eca", "portable")
    run = _runner("openvino", onnx_model, model)
    assert run.pinned.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32


def test_note_gives_the_error_at_the_default_precision():
    model, shape, onnx_model = _file("newcbam", "portable")
    report = check_parity(onnx_model, model, [shape], runtimes=("openvino",))
    (row,) = _only(report)
    # measured here independently: a default compile, PyTorch float64 as the reference
    compiled = ov.Core().compile_model(ov.Core().read_model(onnx_model.SerializeToString()), "CPU")
    precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)  # check_parity's input (seed 0)
    ref = reference_outputs(model, [x])[0]
    abs_err, rel_err = errors(compiled(x)[0], ref)
    m = re.fullmatch(r"OpenVINO's default precision on this CPU is (\w+): max rel err (\S+), (.*)", row.note)
    assert m, row.note
    assert m.group(1) == precision
    assert float(m.group(2)) == pytest.approx(rel_err, rel=0.01, abs=1e-12)
    tol = TOLERANCES["float32"]
    within = abs_err <= tol.atol + tol.rtol * np.max(np.abs(ref))
    assert (m.group(3) == "within the tolerance") == within, row.note
    assert report.to_dict()["results"][0]["note"] == row.note


def test_note_says_how_far_outside_the_tolerance():
    """A default-precision error above the tolerance (as bf16 gives, ~1e-3): shown with
    the ratio and the fix. The reference is shifted by 1e-3 relative to make the gap on
    any CPU."""
    from poolexport.parity import _runner

    model, shape, onnx_model = _file("eca", "portable")
    run = _runner("openvino", onnx_model, model)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    ref = reference_outputs(model, [x])[0]
    shifted = ref + 1e-3 * np.max(np.abs(ref))
    note = run.note([x], [shifted], TOLERANCES["float32"])
    m = re.search(r", ([\d.]+)x the tolerance; pin INFERENCE_PRECISION_HINT=f32", note)
    assert m, note
    tol = TOLERANCES["float32"]
    gap = 1e-3 * np.max(np.abs(ref)) / (tol.atol + tol.rtol * np.max(np.abs(shifted)))
    assert float(m.group(1)) == pytest.approx(gap, rel=0.02)  # give or take OpenVINO's own error


def test_missing_package_is_a_skip_naming_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    model, shape, onnx_model = _file("eca", "portable")
    report = check_parity(onnx_model, model, [shape], runtimes=("openvino",))
    (row,) = _only(report)
    assert row.status == "skip" and "openvino" in row.reason and "poolexport[openvino]" in row.reason


@pytest.mark.skipif(not EXAMPLE.exists(), reason="examples/resnet_softpool.pt2 is not in this checkout")
def test_cli_shows_the_openvino_row_and_its_note(tmp_path, capfd):
    from poolexport.cli import main

    report = tmp_path / "report.json"
    code = main([str(EXAMPLE), "--target", "portable", "-o", str(tmp_path / "m.onnx"), "--json", str(report),
                 "--runtimes", "torch,openvino", "--allow-unverified"])
    out = capfd.readouterr().out
    assert code == 0, out  # without --allow-unverified: 3 (the portable target's own runtime did not run)
    rows = [r for r in json.loads(report.read_text())["parity"]["results"] if r["runtime"] == "openvino"]
    assert len(rows) == 2 and all(r["status"] == "pass" for r in rows)
    assert all(r["note"].startswith("OpenVINO's default precision on this CPU is ") for r in rows)
    mark = re.search(r"openvino\s.*pass \[(\d)\]", out)
    assert mark, out
    assert f"[{mark.group(1)}] openvino: OpenVINO's default precision" in " ".join(out.split())
