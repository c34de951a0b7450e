"""The torch ops' CUDA gate against the driver (poolexport/_cuda_driver.py).

A stand-in ``libcuda.so.1`` (cuDriverGetVersion returns $FAKE_CUDA_DRIVER_VERSION) is put
first on LD_LIBRARY_PATH of a child process, so both readers see it: the ctypes query and
the library's statically linked CUDA runtime (the check ONNX Runtime's CUDA kernels run).
Runs wherever the library was built with nvcc; no GPU needed. The stand-in tensor only
carries what ``use_native`` reads (dtype, device, numel): torch here has no CUDA.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from poolexport.ops import _native

FAKE_LIBCUDA = r"""
#include <stdlib.h>
int cuDriverGetVersion(int* v) { *v = atoi(getenv("FAKE_CUDA_DRIVER_VERSION")); return 0; }
int cuInit(unsigned flags) { (void)flags; return 100; /* CUDA_ERROR_NO_DEVICE */ }
"""

CHILD = textwrap.dedent("""
    import json, types, warnings
    import torch
    from poolexport import _cuda_driver
    from poolexport.ops import _native
    from poolexport.tensorrt import ptx

    cuda_tensor = types.SimpleNamespace(dtype=torch.float32, device=torch.device("cuda", 0), numel=lambda: 12)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        uses = [_native.use_native(cuda_tensor) for _ in range(3)]
    print(json.dumps(dict(driver=ptx.driver_version(), uses=uses, usable=_cuda_driver.torch_cuda_kernels_usable(),
                          warnings=[str(w.message) for w in seen], categories=[w.category.__name__ for w in seen])))
""")


@pytest.fixture(scope="module")
def fake_libcuda(tmp_path_factory):
    if not _native.cuda_available():
        pytest.skip("the library was built without CUDA: no driver check to run")
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler for the stand-in libcuda.so.1")
    d = tmp_path_factory.mktemp("libcuda")
    (d / "fake.c").write_text(FAKE_LIBCUDA)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(d / "libcuda.so.1"), str(d / "fake.c")], check=True)
    return d


def _child(fake_libcuda, version: int) -> dict:
    import json

    env = dict(os.environ, FAKE_CUDA_DRIVER_VERSION=str(version),
               LD_LIBRARY_PATH=f"{fake_libcuda}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    env.pop("POOLEXPORT_TORCH_KERNELS", None)
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_old_driver_falls_back_with_one_line_warning_once(fake_libcuda):
    got = _child(fake_libcuda, 12040)  # CUDA 12.4: older than the library's CUDA 13 runtime
    assert got["driver"] == [12, 4]
    assert got["uses"] == [False, False, False] and got["usable"] is False
    assert len(got["warnings"]) == 1, got["warnings"]  # once per process, not per call
    msg = got["warnings"][0]
    assert got["categories"] == ["RuntimeWarning"]
    assert "\n" not in msg and "reference implementation" in msg
    assert "CUDA 12.4" in msg and "CUDA 13." in msg  # names both versions


@pytest.mark.parametrize("version", [13000, 13020])
def test_current_driver_uses_the_cuda_kernels_silently(fake_libcuda, version):
    got = _child(fake_libcuda, version)
    assert got["driver"] == [version // 1000, version % 1000 // 10]
    assert got["uses"] == [True, True, True] and got["usable"] is True
    assert got["warnings"] == []


def test_runtime_boundary_is_the_librarys_own_runtime(fake_libcuda):
    """The library's runtime version R (from its message): R - 1 falls back, R runs."""
    import re

    msg = _child(fake_libcuda, 1000)["warnings"][0]
    major, minor = map(int, re.search(r"built with the CUDA (\d+)\.(\d+) runtime", msg).groups())
    runtime = major * 1000 + minor * 10
    assert _child(fake_libcuda, runtime - 1)["usable"] is False
    assert _child(fake_libcuda, runtime)["usable"] is True
