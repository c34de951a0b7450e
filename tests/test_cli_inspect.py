"""``poolexport inspect FILE.onnx``: ops, custom domains, what the file needs, dims, metadata
for each export target; a one-line refusal (exit 2) for files that are not ONNX or were cut
short; nothing run and no external data read."""
import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

import poolexport
import poolexport.nn as pnn
from poolexport import cli
from poolexport.onnx.export import export_model

ROOT = Path(poolexport.__file__).resolve().parents[1]


def run_cli(*args, cwd=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("POOLEXPORT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "poolexport.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inspect")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), pnn.SoftPool2d(2),
                              torch.nn.Conv2d(4, 4, 1), pnn.StochasticPool2d(2)).eval()
    raw = export_model(net, torch.randn(2, 3, 16, 16), target=None)
    out = {}
    for target in ("ort", "portable", "tensorrt"):
        from poolexport.onnx.targets import apply_target

        proto = onnx.ModelProto()
        proto.CopyFrom(raw)
        path = d / f"{target}.onnx"
        onnx.save(apply_target(proto, target), str(path))
        out[target] = path
    return out


def inspect_json(path) -> dict:
    proc = run_cli("inspect", path, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _counts(path):
    """Op counts read directly from the file with onnx, main graph and subgraphs."""
    model = onnx.load(str(path))
    counts = {}
    stack = [model.graph]
    while stack:
        g = stack.pop()
        for n in g.node:
            key = (n.domain or "ai.onnx", n.op_type)
            counts[key] = counts.get(key, 0) + 1
            for a in n.attribute:
                stack.extend([a.g] if a.HasField("g") else [])
                stack.extend(a.graphs)
    return counts


@pytest.mark.parametrize("target", ["ort", "portable", "tensorrt"])
def test_describes_each_target(files, target):
    info = inspect_json(files[target])
    assert info["size_bytes"] == files[target].stat().st_size
    assert info["producer"]["name"] == "pytorch"
    assert info["inputs"] == [{"name": "input", "dtype": "float32", "dims": ["batch", 3, "height", "width"]}]
    assert info["outputs"][0]["name"] == "output" and info["outputs"][0]["dims"][:2] == ["batch", 4]
    assert {(r["domain"], r["op_type"]): r["count"] for r in info["ops"]} == _counts(files[target])
    assert info["nodes"] == sum(_counts(files[target]).values())
    assert info["opset_imports"]["ai.onnx"] == 18
    assert info["poolexport_metadata"]["poolexport.target"] == target
    assert info["checker"] == "ok"
    assert info["external_data"] == []
    needs = info["needs"]
    if target == "portable":
        assert info["custom_domains"] == [] and "poolexport" not in info["opset_imports"]
        assert needs["custom_op_library"] is None and needs["runtime"].startswith("any ONNX runtime")
        return
    (domain,) = info["custom_domains"]
    assert domain["domain"] == "poolexport" and domain["version"] == 1
    assert domain["ops"] == ["SoftPool", "StochasticPool"]
    if target == "ort":
        assert domain["fallback_functions"] == ["SoftPool", "StochasticPool"]
        assert needs["custom_op_library"] == "libpoolexport_ort.so"
        assert "plain ONNX Runtime runs the file's fallback functions" in needs["runtime"]
        assert needs["library_found"] == poolexport.get_library_path()
    else:
        assert domain["fallback_functions"] == []
        assert needs["runtime"].startswith("TensorRT")


def test_text_output(files):
    proc = run_cli("inspect", files["ort"])
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for needle in ("IR version 10", "producer pytorch", "poolexport 1", "needs:", "libpoolexport_ort.so",
                   "[batch, 3, height, width]", "SoftPool", "fallback functions: SoftPool, StochasticPool",
                   "external data: none", "onnx.checker: ok"):
        assert needle in text, (needle, text)


def test_without_fallbacks_plain_onnxruntime_cannot_run_it(files, tmp_path):
    model = onnx.load(str(files["ort"]))
    del model.functions[:]
    path = tmp_path / "bare.onnx"
    onnx.save(model, str(path))
    notes = " ".join(inspect_json(path)["needs"]["notes"])
    assert "no fallback in the file for SoftPool, StochasticPool" in notes


def _assert_refused(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("poolexport: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.25, 0.5, 0.75, 0.99])
def test_cut_file_is_refused(files, tmp_path, fraction):
    data = files["ort"].read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: int(len(data) * fraction)])
    _assert_refused(run_cli("inspect", cut), "cut.onnx", "not an ONNX model, or the file is cut short")


def test_cut_files_in_process(files, tmp_path):
    """Every cut length of a small file is refused or parses to a model with a graph and an
    opset import; none raises anything but UsageError."""
    data = files["portable"].read_bytes()
    from poolexport.inspect_cmd import read_model

    cut = tmp_path / "cut.onnx"
    refused = 0
    for n in range(0, len(data), max(1, len(data) // 97)):
        cut.write_bytes(data[:n])
        try:
            model = read_model(cut)
        except cli.UsageError:
            refused += 1
            continue
        assert model.HasField("graph") and model.opset_import
    assert refused >= 90


@pytest.mark.parametrize("content", [b"", b"hello\n", b"\x08\x0a" * 3, os.urandom(4096), b"PK\x03\x04" + b"\0" * 60])
def test_not_onnx_is_refused(tmp_path, content):
    path = tmp_path / "x.onnx"
    path.write_bytes(content)
    _assert_refused(run_cli("inspect", path), "x.onnx")


def test_missing_and_directory(tmp_path):
    _assert_refused(run_cli("inspect", tmp_path / "nope.onnx"), "no such file")
    _assert_refused(run_cli("inspect", tmp_path), "not a regular file")


def test_external_data_is_listed_not_read(tmp_path):
    """Locations inside the folder, outside it, and a FIFO (opening it for reading would
    block): all listed, none read, nothing hangs."""
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"\0" * 64)
    os.mkfifo(folder / "pipe.bin")
    (tmp_path / "secret.bin").write_bytes(b"\1" * 16)
    inits = []
    for name, location in (("w", "weights.bin"), ("p", "pipe.bin"), ("s", "../secret.bin"), ("a", "/etc/passwd")):
        t = helper.make_tensor(name, TensorProto.FLOAT, [4], [0.0] * 4)
        t.ClearField("float_data")
        t.data_location = TensorProto.EXTERNAL
        t.external_data.add(key="location", value=location)
        t.external_data.add(key="length", value="16")
        inits.append(t)
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], initializer=inits)
    path = folder / "ext.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString())
    proc = run_cli("inspect", path, "--json")
    assert proc.returncode == 0, proc.stderr
    status = {e["location"]: (e["status"], e["size_bytes"]) for e in json.loads(proc.stdout)["external_data"]}
    assert status["weights.bin"] == ("ok", 64)
    assert status["pipe.bin"] == ("missing", None)
    assert status["../secret.bin"][0].startswith("outside") and status["../secret.bin"][1] is None
    assert status["/etc/passwd"][0].startswith("outside")


def test_inspect_runs_nothing(files):
    """No runtime is imported by inspect: the file is parsed, not loaded into one."""
    code = ("import sys; from poolexport import cli; rc = cli.main(['inspect', sys.argv[1], '--json']); "
            "print(sorted(m for m in ('onnxruntime', 'openvino', 'torch', 'tensorrt') if m in sys.modules), "
            "file=sys.stderr); sys.exit(rc)")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code, str(files["ort"])], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "[]"
