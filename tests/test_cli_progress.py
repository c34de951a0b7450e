"""The export's progress labels name the step that is running: each real step (torch.onnx's
export, its optimizer, the target pass, onnx.checker, the save, the float64 reference and
each runtime's parity run) is recorded as it starts, and the label shown at that moment
must be the one for that step."""
import json

import onnx
import pytest
import torch

import poolexport.nn as pnn
from poolexport import cli, parity
from poolexport.onnx import export as export_mod


class _Recorder:
    """Stands in for the progress display; keeps the labels in order."""

    def __init__(self, events):
        self.events = events

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, description, **kwargs):
        self.events.append(("label", description))
        return 0

    def update(self, task, description=None, **kwargs):
        if description is not None:
            self.events.append(("label", description))


def _wrap(monkeypatch, obj, name, step, events):
    real = getattr(obj, name)

    def wrapped(*args, **kwargs):
        events.append(("step", step))
        return real(*args, **kwargs)

    monkeypatch.setattr(obj, name, wrapped)


@pytest.fixture
def events(monkeypatch):
    events = []
    monkeypatch.setattr(cli, "_progress", lambda console: _Recorder(events))
    _wrap(monkeypatch, torch.onnx, "export", "export", events)
    _wrap(monkeypatch, torch.onnx.ONNXProgram, "optimize", "optimize", events)
    _wrap(monkeypatch, export_mod, "apply_target", "target", events)
    _wrap(monkeypatch, onnx.checker, "check_model", "check", events)
    _wrap(monkeypatch, onnx, "save", "save", events)
    _wrap(monkeypatch, parity, "reference_outputs", "reference", events)
    real_runner = parity._runner

    def runner(runtime, *args, **kwargs):
        events.append(("step", f"parity {runtime}"))
        return real_runner(runtime, *args, **kwargs)

    monkeypatch.setattr(parity, "_runner", runner)
    return events


EXPECTED = {  # step -> the label it must run under
    "export": "export: torch.onnx (dynamo exporter)",
    "optimize": "optimize: onnxscript optimizer",
    "target": "target portable: poolexport nodes, node names, metadata",
    "check": "check: onnx.checker (full_check)",
    "save": "save: net.onnx",
    "reference": "reference: PyTorch float64 forward (2 shapes)",
    "parity torch": "parity: torch",
    "parity onnxruntime-fallback": "parity: onnxruntime-fallback",
}


def test_each_step_runs_under_its_own_label(events, tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), pnn.SoftPool2d(2)).eval()
    model = tmp_path / "net.pt"
    torch.save(net, model)
    rc = cli.main([str(model), "--trust-pickle", "--input-shape", "1x3x8x8", "--target", "portable",
                   "-o", str(tmp_path / "net.onnx"), "--runtimes", "torch,onnxruntime-fallback",
                   "--json", str(tmp_path / "r.json")])
    assert rc == 0
    assert json.loads((tmp_path / "r.json").read_text())["passed"] is True
    label = None
    seen = []
    for kind, text in events:
        if kind == "label":
            label = text
        elif text in EXPECTED:  # onnx.checker also runs inside torch.onnx's export, under "export"
            if text == "check" and label != EXPECTED["check"]:
                assert label == EXPECTED["export"], (text, label)
                continue
            assert label == EXPECTED[text], f"step {text!r} ran under the label {label!r}"
            seen.append(text)
    assert list(dict.fromkeys(seen)) == list(EXPECTED), seen
    labels = [t for k, t in events if k == "label"]
    assert labels[0] == "exporting net.pt (portable)"
    assert labels[1:] == list(EXPECTED.values())  # one label per step, in order, none left over
