"""The custom-op library built with AddressSanitizer, driven by the random-case script.

Builds custom_ops/ with -DPOOLEXPORT_SANITIZE=address into a temporary directory (CPU
kernels only; reusing the headers the main build found), then runs
test_ort_fuzz.py's cases (library only, no torch) in a python process with libasan
preloaded. Any heap/stack overflow or use-after-free aborts that process, which fails
the test.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _gcc_lib(name):
    try:
        out = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return os.path.realpath(out) if os.path.isabs(out) and os.path.exists(out) else None


def _known_headers():
    for cache in glob.glob(str(ROOT / "build" / "*" / "CMakeCache.txt")):
        m = re.search(r"^ONNXRUNTIME_INCLUDE_DIR:PATH=(.+)$", Path(cache).read_text(), re.M)
        if m and Path(m.group(1), "onnxruntime_lite_custom_op.h").exists():
            return m.group(1)
    return None


def build_library(build: Path, *defines: str, source: Path = ROOT) -> Path:
    """Configure and build the CPU-only library into ``build`` (from the project at
    ``source``); returns the .so."""
    cfg = ["cmake", "-S", str(source), "-B", str(build), "-DPOOLEXPORT_CUDA=OFF", *defines]
    headers = _known_headers()
    if headers:
        cfg.append(f"-DONNXRUNTIME_INCLUDE_DIR={headers}")
    for cmd in (cfg, ["cmake", "--build", str(build), "-j2", "--target", "poolexport_ort"]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return next(build.rglob("libpoolexport_ort.so"))


@pytest.fixture(scope="module")
def asan_build(tmp_path_factory):
    if not shutil.which("cmake") or not shutil.which("gcc"):
        pytest.skip("cmake or gcc missing")
    # libstdc++ preloaded too: python itself is C, and ASan's __cxa_throw interceptor
    # needs the real one resolved at start-up (the ORT kernels throw and catch inside)
    asan, cxx = _gcc_lib("libasan.so"), _gcc_lib("libstdc++.so")
    if asan is None or cxx is None:
        pytest.skip("libasan (gcc's AddressSanitizer runtime) missing")
    lib = build_library(tmp_path_factory.mktemp("asan"), "-DPOOLEXPORT_SANITIZE=address",
                        "-DCMAKE_BUILD_TYPE=RelWithDebInfo")
    return lib, f"{asan} {cxx}"


# each CPU path of the kernels (test_cpu_isa.py), pinned by POOLEXPORT_CPU_ISA
@pytest.mark.parametrize("isa", ["avx512", "avx2", "portable"])
def test_library_under_address_sanitizer(asan_build, isa):
    from test_cpu_isa import RANK, best_path

    if RANK[isa] > RANK[best_path()]:
        pytest.skip(f"this CPU lacks the {isa} path's instructions (it runs {best_path()}); tested where the CPU has it")
    lib, preload = asan_build
    env = dict(os.environ, LD_PRELOAD=preload, POOLEXPORT_ORT_LIBRARY=str(lib), POOLEXPORT_CPU_ISA=isa,
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1")
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "test_ort_fuzz.py"), "400", "--no-torch"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert "AddressSanitizer" not in proc.stderr, proc.stderr[-6000:]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "cases ok=" in proc.stdout
