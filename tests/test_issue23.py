"""Issue 23, "a deployment engineer's day": plain torch.onnx export, export_model with
return_indices and the caller's train flags, dead initializers, metadata, --version,
the unverified TensorRT target and serving status codes."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import poolexport
import poolexport.nn as pnn


# ---------------------------------------------------------------- item 2: plain torch.onnx.export
def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), pnn.SoftPool2d(2), pnn.StochasticPool2d(2),
                         pnn.SoftPoolReduce(dim=(2, 3))).eval()


def test_plain_torch_onnx_export_dynamo_translates_poolexport_ops():
    """No custom_translation_table: poolexport nodes come out, and ONNX Runtime with the
    library runs them to torch's answer."""
    from poolexport.ort import session

    model, x = _tiny(), torch.randn(2, 3, 12, 12)
    program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    proto = program.model_proto
    ops = {(n.domain, n.op_type) for n in proto.graph.node}
    assert {("poolexport", "SoftPool"), ("poolexport", "StochasticPool"), ("poolexport", "ReduceSoftPool")} <= ops
    sess = session(proto.SerializeToString())
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_import_poolexport_registers_lazily_with_torch_onnx():
    """``import poolexport`` does not load torch.onnx/onnxscript, and a torch.onnx loaded
    afterwards knows the ops (a fresh interpreter, so the import order is the user's)."""
    code = textwrap.dedent("""
        import sys, torch, poolexport, poolexport.nn as pnn
        assert "onnxscript" not in sys.modules, "import poolexport loaded onnxscript"
        m = torch.nn.Sequential(pnn.SoftPool2d(2)).eval()
        p = torch.onnx.export(m, (torch.randn(1, 2, 4, 4),), dynamo=True, verbose=False)
        print(sorted({(n.domain, n.op_type) for n in p.model_proto.graph.node}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "('poolexport', 'SoftPool')" in out.stdout


# ---------------------------------------------------------------- item 3: export_model
class _PoolUnpool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = pnn.MaxPool2d(2, return_indices=True)
        self.unpool = pnn.MaxUnpool2d(2)

    def forward(self, x):
        y, idx = self.pool(self.conv(x))
        return self.unpool(y, idx)


def test_export_model_return_indices_with_default_dynamic_dims():
    """A max pool with return_indices exports with the default dynamic batch and spatial
    dims (its index unpadding used %, aten.remainder with a symbolic size) and matches
    torch at a second shape."""
    from poolexport.onnx.export import export_model
    from poolexport.parity import check_parity, parity_shapes

    torch.manual_seed(0)
    model = _PoolUnpool().eval()
    proto = export_model(model, torch.randn(1, 3, 8, 8), target="ort")
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    report = check_parity(proto, model, parity_shapes(proto, (1, 3, 8, 8)),
                          runtimes=("torch", "onnxruntime", "onnxruntime-fallback"))
    assert report.passed, report


def test_export_model_restores_callers_training_flags():
    from poolexport.onnx.export import export_model

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.5), pnn.SoftPool2d(2), nn.BatchNorm2d(4))
    model.train()
    model[3].eval()  # mixed flags come back as they were
    before = [m.training for m in model.modules()]
    export_model(model, torch.randn(1, 3, 8, 8), target="ort")
    assert [m.training for m in model.modules()] == before


# ---------------------------------------------------------------- item 4: unverified target
def _no_tensorrt():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return
    pytest.skip("TensorRT is installed: the target can be verified here")


def test_tensorrt_target_unverified_exits_nonzero_unless_allowed(tmp_path, capfd):
    """--target tensorrt without TensorRT: exit EXIT_UNVERIFIED and say how to accept it;
    --allow-unverified: exit 0; a skip note names its runtime once."""
    from pathlib import Path

    from poolexport import cli

    _no_tensorrt()
    ts = Path(__file__).resolve().parents[1] / "examples" / "newcbam.ts"
    common = [str(ts), "--target", "tensorrt", "--runtimes", "torch,onnxruntime-fallback,tensorrt",
              "--dynamic", "none", "--trust-pickle"]
    code = cli.main(common + ["-o", str(tmp_path / "a.onnx")])
    out = capfd.readouterr().out
    assert code == cli.EXIT_UNVERIFIED != 0
    assert "not verified on tensorrt" in out and "--allow-unverified" in out
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "a.onnx")).metadata_props}
    assert meta["poolexport.target"] == "tensorrt" and meta["poolexport.version"] == poolexport.__version__
    assert "onnxruntime-fallback: onnxruntime-fallback:" not in out
    assert "onnxruntime-fallback: the file carries poolexport nodes" in out
    code = cli.main(common + ["-o", str(tmp_path / "b.onnx"), "--allow-unverified"])
    out = capfd.readouterr().out
    assert code == 0, out
    assert "not verified on tensorrt" in out and "--allow-unverified given" in out


def test_no_parity_is_not_an_unverified_failure(tmp_path):
    from pathlib import Path

    from poolexport import cli

    ts = Path(__file__).resolve().parents[1] / "examples" / "newcbam.ts"
    assert cli.main([str(ts), "--target", "tensorrt", "--no-parity", "--dynamic", "none", "--trust-pickle",
                     "-o", str(tmp_path / "a.onnx")]) == 0


# ---------------------------------------------------------------- item 6: --version
def test_version_flag(capsys):
    from poolexport import cli

    assert cli.main(["--version"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == f"poolexport {poolexport.__version__} (ONNX domain poolexport version 1)"


# ---------------------------------------------------------------- items 5 and 6: dead initializers, metadata
import copy  # noqa: E402
import functools  # noqa: E402

from poolexport import models  # noqa: E402

TARGETS = ("ort", "portable", "tensorrt")


@functools.lru_cache(maxsize=None)
def _raw_export(name: str):
    from poolexport.onnx.export import export_model

    torch.manual_seed(0)
    model = models.create_model(name).eval()
    return export_model(model, torch.randn(*models.default_input_shape(name)), target=None)


def _exported(name: str, target: str) -> onnx.ModelProto:
    from poolexport.onnx import apply_target

    return apply_target(copy.deepcopy(_raw_export(name)), target)


def _read_names(graph, names):
    for node in graph.node:
        names.update(node.input)
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                _read_names(a.g, names)
            for g in a.graphs:
                _read_names(g, names)
    names.update(o.name for o in graph.output)
    return names


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", models.list_models())
def test_exported_files_have_no_dead_initializers(name, target, capfd):
    """Item 5: no initializer that no node (subgraphs included) reads, no value_info of a
    name no node produces, and ONNX Runtime's load-time warning does not appear."""
    model = _exported(name, target)
    read = _read_names(model.graph, set())
    dead = [t.name for t in model.graph.initializer if t.name not in read]
    assert not dead, f"initializers no node reads: {dead[:10]}"
    produced = {o for n in model.graph.node for o in n.output}
    assert all(vi.name in produced for vi in model.graph.value_info)
    if target == "tensorrt":
        return  # plugin nodes: ONNX Runtime does not load the file
    import onnxruntime as ort

    from poolexport.ort import session

    so = ort.SessionOptions()
    so.log_severity_level = 1  # info: the "Removing initializer" warning included
    capfd.readouterr()
    session(model.SerializeToString(), options=so)
    err = capfd.readouterr().err
    # the load-time warning of a dead initializer; ORT's own optimizer later logs "Removing
    # initializer ... It is no longer used by any node" at info level for what it folds
    dead = [line for line in err.splitlines() if "Removing initializer" in line and "not used by any node" in line]
    assert not dead, dead[:5]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", models.list_models())
def test_exported_files_carry_metadata(name, target):
    """Item 6: metadata_props name the producer version, target, required library, domain version."""
    model = _exported(name, target)
    meta = {p.key: p.value for p in model.metadata_props}
    has_custom = any(n.domain == "poolexport" for n in model.graph.node)
    library = {"ort": "libpoolexport_ort.so", "portable": "none"}.get(target)
    assert meta["poolexport.version"] == poolexport.__version__
    assert meta["poolexport.target"] == target
    assert meta["poolexport.domain_version"] == "1"
    if target == "tensorrt":
        assert meta["poolexport.custom_op_library"].startswith("poolexport.tensorrt plugins") == has_custom
    else:
        assert meta["poolexport.custom_op_library"] == (library if has_custom else "none")
