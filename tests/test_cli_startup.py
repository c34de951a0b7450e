"""Startup: ``poolexport --help`` and the subcommands' help import no torch, onnx,
onnxruntime, onnxscript or rich (each costs 0.3-3 s to import), and ``import poolexport``
still registers the ops with torch, now or when torch is loaded later.

Asserted on imports, not on wall time (the machine's load would make a time flaky); the
measured time is printed for the record (pytest -s)."""
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import poolexport

HEAVY = ("torch", "onnx", "onnxruntime", "onnxscript", "rich", "openvino")
ROOT = Path(poolexport.__file__).resolve().parents[1]


def _python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("argv", [["--help"], ["inspect", "--help"], ["bench", "--help"], ["no-such.pt"]])
def test_help_imports_nothing_heavy(argv):
    proc = _python(f"""
        import sys, time
        start = time.perf_counter()
        from poolexport import cli
        try:
            rc = cli.main({argv!r})
        except SystemExit as e:
            rc = e.code
        heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
        print("RESULT", rc, heavy, f"{{time.perf_counter() - start:.2f}}", file=sys.stderr)
    """)
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("RESULT")]
    assert line, proc.stderr
    _, rc, *rest = line[0].split(" ", 2)
    heavy, seconds = rest[0].rsplit(" ", 1)
    print(f"{' '.join(argv)}: {seconds} s in-process")
    assert heavy == "[]", f"{argv} imported {heavy}"
    if argv[-1] == "--help":
        assert rc in ("0", "None") and "usage: poolexport" in proc.stdout
    else:  # a missing model file is refused before anything heavy is imported
        assert rc == "2" and "no such file" in proc.stderr


def test_help_lists_the_subcommands():
    proc = _python("""
        from poolexport import cli
        try:
            cli.main(["--help"])
        except SystemExit:
            pass
    """)
    for name in ("inspect", "bench", "build-engine"):
        assert name in proc.stdout, proc.stdout


def test_console_script_help_wall_time():
    """The installed console script, end to end (the number is for the record)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "poolexport.cli", "--help"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    seconds = time.perf_counter() - start
    print(f"python -m poolexport.cli --help: {seconds:.2f} s wall")
    assert proc.returncode == 0 and "usage: poolexport" in proc.stdout, proc.stderr


def test_help_constants_match_the_modules_they_copy():
    """cli.py copies a few constants to build its help without importing parity/export."""
    from poolexport import cli, parity
    from poolexport.onnx import export

    assert cli.PARITY_RUNTIMES == parity.RUNTIMES
    assert cli.REFERENCE_MAX_PARAMS == parity.REFERENCE_MAX_PARAMS
    assert cli.DYNAMIC_CHOICES == export.DYNAMIC_CHOICES
    from poolexport import inspect_cmd
    from poolexport.onnx import domain

    assert inspect_cmd.POOLEXPORT_DOMAIN == domain.DOMAIN


@pytest.mark.parametrize("order", ["torch first", "poolexport first"])
def test_import_poolexport_registers_the_ops_with_torch(order):
    first, second = ("torch", "poolexport") if order == "torch first" else ("poolexport", "torch")
    proc = _python(f"""
        import sys
        import {first}
        import {second}
        import poolexport, torch
        print("torch loaded by import poolexport alone:", "{first}" == "poolexport" and "torch" in sys.modules)
        x = torch.randn(1, 1, 4, 4)
        y = torch.ops.poolexport.soft_pool(x, [2, 2], [2, 2], [0, 0, 0, 0], [1, 1], False, "NOTSET", 1.0)
        print("shape", tuple(y.shape))
        assert poolexport.nn.SoftPool2d(2)(x).shape == y.shape
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "shape (1, 1, 2, 2)" in proc.stdout


def test_import_poolexport_alone_does_not_load_torch():
    proc = _python("""
        import sys
        import poolexport
        print(sorted(m for m in ("torch", "onnx", "onnxruntime") if m in sys.modules))
        print(poolexport.get_library_path is not None)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "[]"


@pytest.mark.parametrize("first", ["poolexport.selfcheck", "poolexport._window", "poolexport.functional",
                                   "poolexport.ops", "poolexport.nn"])
def test_a_submodule_that_loads_torch_registers_the_ops_without_a_warning(first):
    # the submodule is half-loaded when torch finishes loading: registering then would import
    # it again (a circular import); registration waits until nothing of poolexport is half-loaded
    proc = _python(f"""
        import warnings
        warnings.simplefilter("error")
        import {first}
        import poolexport.ops  # what every user of the ops imports (or a module that does)
        import torch
        x = torch.randn(1, 1, 4, 4)
        print(tuple(torch.ops.poolexport.soft_pool(x, [2, 2], [2, 2], [0] * 4, [1, 1], False, "NOTSET", 1.0).shape))
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "RuntimeWarning" not in proc.stderr
    assert proc.stdout.strip() == "(1, 1, 2, 2)"
