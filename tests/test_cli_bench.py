"""``poolexport bench FILE.onnx``: rows per runtime and batch, skips with reasons, batch and
dim handling (dynamic set from --batch/--dim, fixed refusing others), the JSON report, and
the statistics against NumPy."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import poolexport
import poolexport.nn as pnn
from poolexport import bench_cmd, cli
from poolexport.onnx.export import export_model

ROOT = Path(poolexport.__file__).resolve().parents[1]


def run_cli(*args):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("POOLEXPORT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "poolexport.cli", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), pnn.SoftPool2d(2)).eval()
    out = {}
    for target, dynamic in (("ort", ("batch", "spatial")), ("portable", ("batch",)), ("tensorrt", ("batch",))):
        path = d / f"{target}.onnx"
        onnx.save(export_model(net, torch.randn(2, 3, 8, 8), target=target, dynamic=dynamic), str(path))
        out[target] = path
    path = d / "static.onnx"
    onnx.save(export_model(net, torch.randn(2, 3, 8, 8), target="ort", dynamic=()), str(path))
    out["static"] = path
    path = d / "fp16.onnx"
    onnx.save(export_model(net, torch.randn(2, 3, 8, 8), target="ort", dynamic=("batch",), fp16=True), str(path))
    out["fp16"] = path
    return out


def bench_json(path, tmp_path, *extra):
    out = tmp_path / "bench.json"
    proc = run_cli("bench", path, "--warmup", "1", "--iters", "3", "--json", out, *extra)
    return proc, (json.loads(out.read_text()) if out.exists() else None)


def rows(report):
    return {(r["runtime"], r["batch"]): r for r in report["results"]}


def test_ort_file_with_and_without_the_library(files, tmp_path):
    proc, report = bench_json(files["ort"], tmp_path, "--batch", "1,3", "--dim", "height=8,width=12")
    assert proc.returncode == 0, proc.stderr
    got = rows(report)
    for runtime in ("onnxruntime+poolexport", "onnxruntime"):
        for b in (1, 3):
            r = got[(runtime, b)]
            assert r["status"] == "ok" and r["iters"] == 3, r
            assert r["shapes"] == {"input": [b, 3, 8, 12]}
            assert 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"]
            assert r["throughput_per_s"] == pytest.approx(b / (r["median_ms"] / 1000))
    skipped = {r["runtime"]: r["reason"] for r in report["results"] if r["status"] == "skip"}
    assert "custom-domain nodes" in skipped["openvino"]
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert "no CUDAExecutionProvider" in skipped["onnxruntime-cuda"]
    # the table on stdout, progress lines on stderr (not a terminal here)
    assert "onnxruntime+poolexport" in proc.stdout and "median ms" in proc.stdout
    assert "batch 3: timing" in proc.stderr


def test_portable_file_runs_plain_and_openvino(files, tmp_path):
    proc, report = bench_json(files["portable"], tmp_path, "--dim", "height=8", "--dim", "width=8")
    assert proc.returncode == 2 and "no dynamic dim named 'height'" in proc.stderr  # spatial dims are fixed here
    proc, report = bench_json(files["portable"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = rows(report)
    assert got[("onnxruntime", 1)]["status"] == "ok" and got[("onnxruntime", 8)]["status"] == "ok"  # default 1,8
    assert got[("onnxruntime+poolexport", None)]["status"] == "skip"
    try:
        import openvino  # noqa: F401
    except ImportError:
        assert got[("openvino", None)]["status"] == "skip"
    else:
        assert got[("openvino", 8)]["status"] == "ok"


def test_tensorrt_file_is_skipped_on_onnxruntime(files, tmp_path):
    proc, report = bench_json(files["tensorrt"], tmp_path, "--batch", "2")
    assert proc.returncode == 0, proc.stderr
    reasons = {r["runtime"]: r["reason"] for r in report["results"]}
    assert all(r["status"] == "skip" for r in report["results"])
    assert "build-engine" in reasons["onnxruntime+poolexport"]


def _assert_refused(proc, *needles):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("poolexport: error:"), proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_fixed_batch_refuses_other_sizes(files, tmp_path):
    _assert_refused(run_cli("bench", files["static"], "--batch", "1,2", "--iters", "1"),
                    "fixed batch of 2", "cannot run batch 1", "--dynamic batch")
    proc, report = bench_json(files["static"], tmp_path, "--runtimes", "onnxruntime+poolexport")
    assert proc.returncode == 0, proc.stderr
    assert [(r["runtime"], r["batch"]) for r in report["results"]] == [("onnxruntime+poolexport", 2)]
    proc, report = bench_json(files["static"], tmp_path, "--runtimes", "onnxruntime", "--batch", "2")
    assert proc.returncode == 0 and rows(report)[("onnxruntime", 2)]["status"] == "ok"


def test_dynamic_dims_need_sizes(files):
    _assert_refused(run_cli("bench", files["ort"], "--iters", "1"), "dim 'height' is dynamic", "--dim height=SIZE")
    _assert_refused(run_cli("bench", files["ort"], "--dim", "height=8", "--dim", "width=8", "--dim", "depth=3"),
                    "no dynamic dim named 'depth'")
    for bad in ("height", "height=0", "height=x", "=4"):
        _assert_refused(run_cli("bench", files["ort"], "--dim", bad), "--dim")
    for bad in ("0", "1,-2", "a"):
        _assert_refused(run_cli("bench", files["ort"], "--batch", bad), "--batch")
    _assert_refused(run_cli("bench", files["ort"], "--iters", "0"), "--iters")
    _assert_refused(run_cli("bench", files["ort"], "--runtimes", "tflite"), "tflite")


def test_not_onnx_is_refused(tmp_path):
    path = tmp_path / "x.onnx"
    path.write_bytes(b"not onnx at all")
    _assert_refused(run_cli("bench", path), "not an ONNX model")


def test_fp16_file_gets_fp16_inputs(files, tmp_path):
    proc, report = bench_json(files["fp16"], tmp_path, "--runtimes", "onnxruntime+poolexport", "--batch", "2")
    assert proc.returncode == 0, proc.stderr
    assert report["inputs"][0]["dtype"] == "float16"
    assert rows(report)[("onnxruntime+poolexport", 2)]["status"] == "ok"


def test_inputs_match_dtypes_and_shapes():
    specs = [bench_cmd.InputSpec("a", "float16", ["batch", 3]), bench_cmd.InputSpec("b", "int64", ["batch", "n"]),
             bench_cmd.InputSpec("c", "bool", [5])]
    batches, shapes = bench_cmd.shapes_for(specs, (1, 4), {"n": 7})
    assert batches == [1, 4]
    assert shapes[1] == {"a": (4, 3), "b": (4, 7), "c": (5,)}
    feeds = bench_cmd.random_inputs(specs, shapes[1])
    assert {k: (v.dtype.name, v.shape) for k, v in feeds.items()} == {
        "a": ("float16", (4, 3)), "b": ("int64", (4, 7)), "c": ("bool", (5,))}
    with pytest.raises(cli.UsageError, match="fixed batch of 2"):
        bench_cmd.shapes_for([bench_cmd.InputSpec("a", "float32", [2, 3])], (1,), {})
    assert bench_cmd.shapes_for([bench_cmd.InputSpec("a", "float32", [2, 3])], None, {})[0] == [2]


@pytest.mark.parametrize("n", [1, 2, 3, 10, 11, 50])
def test_percentiles_match_numpy(n):
    values = sorted(np.random.default_rng(n).exponential(size=n).tolist())
    for q in (50, 90, 0, 100):
        assert bench_cmd.percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12)
