"""The ``poolexport`` command: a real export of a shipped example, one-line errors with a
non-zero exit for bad input (run in a subprocess, as a user would), and subcommand dispatch."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import poolexport
import poolexport.nn as pnn
from poolexport import cli

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run_cli(*args, cwd):
    env = dict(os.environ)
    # the subprocess imports the same poolexport as this test process
    env["PYTHONPATH"] = str(Path(poolexport.__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("POOLEXPORT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "poolexport.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("poolexport: error:")
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), pnn.SoftPool2d(2)).eval()
    torch.save(net, d / "full.pt")
    torch.save(net.state_dict(), d / "weights.pt")
    (d / "junk.pt").write_bytes(b"definitely not a model\n" * 10)
    return d


def test_missing_file(tmp_path):
    assert_one_line_error(run_cli("nope.pt", cwd=tmp_path), "nope.pt", "no such file")


def test_unknown_format(files, tmp_path):
    assert_one_line_error(run_cli(files / "junk.pt", "-o", tmp_path / "x.onnx", cwd=tmp_path), "unknown format")


def test_pickle_needs_trust(files, tmp_path):
    assert_one_line_error(run_cli(files / "full.pt", "-o", tmp_path / "x.onnx", cwd=tmp_path),
                          "--trust-pickle", "runs code")


def test_malformed_input_shape(files, tmp_path):
    assert_one_line_error(run_cli(files / "weights.pt", "--input-shape", "1x3xabc", cwd=tmp_path), "--input-shape")


def test_unknown_arch(files, tmp_path):
    assert_one_line_error(run_cli(files / "weights.pt", "--arch", "no_such_net", "-o", tmp_path / "x.onnx",
                                  cwd=tmp_path), "--arch", "no_such_net")


def test_state_dict_needs_arch(files, tmp_path):
    assert_one_line_error(run_cli(files / "weights.pt", "-o", tmp_path / "x.onnx", cwd=tmp_path), "--arch")


def test_unwritable_output(tmp_path):
    assert_one_line_error(run_cli(EXAMPLES / "newcbam.ts", "-o", tmp_path / "missing_dir" / "x.onnx", cwd=tmp_path),
                          "-o", "does not exist")


def test_bad_flag_value_is_one_line(tmp_path):
    assert_one_line_error(run_cli(EXAMPLES / "newcbam.ts", "--target", "tflite", cwd=tmp_path), "--target")


def test_export_shipped_example(tmp_path):
    """The README's first command on the TorchScript example: ONNX file, table, JSON, exit 0."""
    out, report = tmp_path / "newcbam.onnx", tmp_path / "report.json"
    proc = run_cli(EXAMPLES / "newcbam.ts", "-o", out, "--json", report, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out.is_file() and "parity: pass" in proc.stdout and "onnxruntime-fallback" in proc.stdout
    data = json.loads(report.read_text())
    assert data["passed"] is True and data["target"] == "ort" and data["format"] == "torchscript"
    shapes = data["parity"]["input_shapes"]
    assert len(shapes) == 2 and shapes[0] != shapes[1]
    statuses = {r["runtime"]: r["status"] for r in data["parity"]["results"]}
    assert statuses["onnxruntime-fallback"] == "pass" and statuses["reference"] == "pass"
    assert data["target_verified"] is True and "target ort verified on onnxruntime" in proc.stdout
    # not a terminal: progress comes as timestamped lines, one per step, on stderr
    steps = [line for line in proc.stderr.splitlines() if line.startswith("poolexport: [")]
    assert any("exporting newcbam.ts" in line for line in steps)
    assert any("parity: reference" in line for line in steps)


def test_trusted_pickle_portable(files, tmp_path):
    out = tmp_path / "full.onnx"
    proc = run_cli(files / "full.pt", "--trust-pickle", "--input-shape", "1x3x8x8", "--target", "portable",
                   "--exporter", "torchscript", "--runtimes", "torch,onnxruntime-fallback", "-o", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import onnx

    assert not any(n.domain == "poolexport" for n in onnx.load(str(out)).graph.node)


def test_parity_failure_exits_1(monkeypatch, tmp_path, capsys):
    import poolexport.parity as parity

    real = parity.check_parity

    def failing(*args, **kwargs):
        report = real(*args, **kwargs)
        for r in report.results:
            if r.status == "pass":
                r.status = "fail"
        return report

    monkeypatch.setattr(parity, "check_parity", failing)
    # --trust-pickle: the export runs in this process (not the contained child), so the patch applies
    rc = cli.main([str(EXAMPLES / "newcbam.ts"), "-o", str(tmp_path / "m.onnx"), "--exporter", "torchscript",
                   "--runtimes", "torch,onnxruntime-fallback", "--dynamic", "none", "--trust-pickle"])
    assert rc == 1
    assert "FAIL" in capsys.readouterr().out


def test_subcommand_registry(capsys):
    seen = {}

    def add(p):
        p.add_argument("--name", required=True)

    def run(args):
        seen["name"] = args.name
        return 7

    cli.register_command("hello-test", add, run, help="test command")
    try:
        assert cli.main(["hello-test", "--name", "x"]) == 7 and seen == {"name": "x"}
        # no subcommand still means export
        assert cli.main(["hello-test.pt"]) == 2
        assert "no such file" in capsys.readouterr().err
    finally:
        cli._COMMANDS.pop("hello-test", None)
    with pytest.raises(ValueError, match="register_command"):
        cli.register_command("-bad", add, run)
