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

from test_ort_asan import build_library


def test_portable_loops_pass_the_op_parity_tests(tmp_path):
    if not shutil.which("cmake") or not shutil.which("gcc"):
        pytest.skip("cmake or gcc missing")
    lib = build_library(tmp_path / "portable", "-DCMAKE_BUILD_TYPE=Release", "-DCMAKE_CXX_FLAGS=-DPOOLEXPORT_NO_AVX2")
    env = dict(os.environ, POOLEXPORT_ORT_LIBRARY=str(lib))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(Path(__file__).with_name("test_ort_ops.py"))],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
