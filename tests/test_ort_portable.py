"""The library's portable (non-AVX2) CPU loops, which an AVX2 machine never dispatches to.

Builds custom_ops/ with -DPOOLEXPORT_NO_AVX2 into a temporary directory and runs the
ORT op parity tests against that build (POOLEXPORT_ORT_LIBRARY points get_library_path
at it), so both code paths stay checked against the same references.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_ort_asan import ROOT, _known_headers


def test_portable_loops_pass_the_op_parity_tests(tmp_path):
    if not shutil.which("cmake") or not shutil.which("gcc"):
        pytest.skip("cmake or gcc missing")
    build = tmp_path / "portable"
    cfg = ["cmake", "-S", str(ROOT), "-B", str(build), "-DPOOLEXPORT_CUDA=OFF", "-DCMAKE_BUILD_TYPE=Release",
           "-DCMAKE_CXX_FLAGS=-DPOOLEXPORT_NO_AVX2"]
    headers = _known_headers()
    if headers:
        cfg.append(f"-DONNXRUNTIME_INCLUDE_DIR={headers}")
    for cmd in (cfg, ["cmake", "--build", str(build), "-j2", "--target", "poolexport_ort"]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lib = next(build.rglob("libpoolexport_ort.so"))
    env = dict(os.environ, POOLEXPORT_ORT_LIBRARY=str(lib))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(Path(__file__).with_name("test_ort_ops.py"))],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
