"""The GPU self-check, run end to end on the CPU with tests/fake_gpu.py (the CUDA kernels
compiled for host emulation, a fake CuPy that follows CuPy 13's RawModule): it passes on
the real kernels, and each backend's rows fail when that backend's kernel output is
corrupted (a planted bug), so no row passes whatever the kernels do. No GPU needed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fake_gpu
from poolexport import selfcheck
from poolexport.tensorrt import abi, ptx

TESTS = Path(__file__).resolve().parent
BACKENDS = ("library", "ptx", "torch")


@pytest.fixture(scope="module")
def fake_library(tmp_path_factory):
    if not (ptx.find_nvcc() or os.environ.get("POOLEXPORT_PTX")):
        pytest.skip("no nvcc to build the PTX the ptx backend loads")
    try:
        return fake_gpu.build_library(tmp_path_factory.mktemp("fake_gpu"))
    except RuntimeError as e:
        pytest.skip(str(e))


@pytest.fixture
def device(fake_library, monkeypatch):
    monkeypatch.setenv("FAKE_GPU_LIBRARY", str(fake_library))
    monkeypatch.setattr(fake_gpu.FakeDevice, "_lib", None)
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    for name in ("FAKE_GPU_CORRUPT", "FAKE_GPU_OLD_DRIVER"):
        monkeypatch.delenv(name, raising=False)
    return fake_gpu.FakeDevice()


def _rows(report, backend):
    return [r for r in report["checks"] + report["bandwidth"] if r["backend"] == backend]


def _cli(fake_library, tmp_path, **env):
    out = tmp_path / "report.json"
    run_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
                   FAKE_GPU_LIBRARY=str(fake_library), **env)
    proc = subprocess.run([sys.executable, "-m", "poolexport.selfcheck", "--gpu", "--device-layer", "fake_gpu:FakeDevice",
                           "--iters", "1", "-o", str(out)], capture_output=True, text=True, env=run_env, cwd=tmp_path,
                          timeout=900)
    return proc, json.loads(out.read_text())


def test_cli_passes_on_the_kernels_and_fails_on_a_corrupted_one(fake_library, tmp_path):
    proc, report = _cli(fake_library, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report["status"] == "pass" and report["skipped"] == {}
    for b in BACKENDS:
        rows = _rows(report, b)
        assert len(rows) == 2 * len(selfcheck.CASES) + 2 * len(selfcheck.BENCH_OPS)
        assert all(r["status"] == "pass" for r in rows), [r for r in rows if r["status"] != "pass"]
    assert report["versions"]["cupy"].startswith("13.") and set(report["steps"]) >= {"correctness_s", "bandwidth_s"}
    proc, report = _cli(fake_library, tmp_path, FAKE_GPU_CORRUPT="ptx")
    assert proc.returncode == 1 and report["status"] == "fail"
    assert f"ptx: 0/{2 * len(selfcheck.CASES)} kernel checks pass" in proc.stdout


def test_cases_cover_every_entry_point_and_the_broadcast_forms():
    """Each kernel of the ABI is checked, with every input it takes; AdaPool's Beta in a
    rank-lower, a per-channel and a one-element form; AdaUnpool's masks with N or C of 1
    and with C channels, on 1-D to 3-D."""
    assert {c[0] for c in selfcheck.CASES} == set(abi.KERNELS)
    for op in abi.KERNELS:
        cases = [c for c in selfcheck.CASES if c[0] == op]
        assert {len(c[1]) - 2 for c in cases} >= ({1, 2, 3} if op in abi.INPUTS else {2}), op
        assert all(len(c[3] if len(c) > 3 else []) == len(abi.kernel_inputs(op)) - 1 for c in cases), op
    for op in abi.INPUTS:  # Beta, the last input: a rank-lower form and a per-channel one (N, C order)
        betas = [(c[1], c[3][-1]) for c in selfcheck.CASES if c[0] == op]
        assert any(len(b) < len(x) for x, b in betas), op
        assert any(len(b) == len(x) and b[1] == x[1] > 1 and 1 in b for x, b in betas), op
    assert any(c[3] == [(1,)] for c in selfcheck.CASES if c[0] == "AdaPool")
    masks = [(c[1], m) for c in selfcheck.CASES if c[0] == "AdaUnpool" for m in c[3][:2]]
    for axis in (0, 1):
        assert any(m[axis] == 1 < x[axis] for x, m in masks) and any(m[axis] == x[axis] > 1 for x, m in masks)


@pytest.mark.parametrize("corrupt", BACKENDS)
def test_each_backend_row_fails_when_its_kernel_output_is_corrupted(device, monkeypatch, corrupt):
    monkeypatch.setenv("FAKE_GPU_CORRUPT", corrupt)
    report = selfcheck.run_gpu(1, device)
    assert report["status"] == "fail"
    for b in BACKENDS:
        statuses = {r["status"] for r in _rows(report, b)}
        assert statuses == ({"fail"} if b == corrupt else {"pass"}), (b, statuses)


def test_ptx_backend_loads_the_ptx_file_with_path(device, monkeypatch):
    """CuPy 13 compiles ``code=`` as CUDA C++: the PTX must come through ``path=``."""
    calls = []
    real = fake_gpu.RawModule

    def recording(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(sys.modules["cupy"], "RawModule", recording)
    backend = selfcheck.PTXBackend(device)
    assert len(calls) == 1 and set(calls[0]) == {"path"} and Path(calls[0]["path"]).read_text().startswith("//")
    assert ptx.ptx_entries(Path(calls[0]["path"]).read_text())
    assert backend.isa == ptx.ptx_isa(Path(calls[0]["path"]).read_text())


def test_fake_rawmodule_follows_cupy_13(device):
    cupy = sys.modules["cupy"]
    text = ptx.ptx_path().read_text()
    with pytest.raises(TypeError):
        cupy.RawModule()
    with pytest.raises(TypeError):
        cupy.RawModule(code=text, path=str(ptx.ptx_path()))
    with pytest.raises(TypeError):
        cupy.RawModule(text)  # keyword-only
    with pytest.raises(cupy.cuda.compiler.CompileException):  # the old self-check's call
        cupy.RawModule(code=text).get_function("poolexport_soft_pool_f32")
    module = cupy.RawModule(path=str(ptx.ptx_path()))
    with pytest.raises(cupy.cuda.driver.CUDADriverError):
        module.get_function("no_such_kernel")
    kernel = module.get_function("poolexport_reduce_soft_pool_f32")
    x, y = cupy.asarray(fake_gpu.np.ones((2, 4), "float32")), cupy.full((2,), fake_gpu.np.nan, dtype="float32")
    args = [fake_gpu.np.int32(v) for v in (2, 1, 1, 1, 1, 2, 4, 32, 1065353216)]
    with pytest.raises(TypeError):  # a Python int would go as 8 bytes to a 32-bit parameter
        kernel((1, 1, 1), (256, 1, 1), (x, *[int(a) for a in args], y))
    with pytest.raises(fake_gpu.CUDADriverError):
        kernel((1, 1, 1), (256, 1, 1), (x, *args[:-1], y))
    kernel((1, 1, 1), (256, 1, 1), (x, *args, y))
    assert (cupy.asnumpy(y) == 1).all()


def test_old_driver_skips_the_library_backend_with_its_reason(device, monkeypatch):
    monkeypatch.setenv("FAKE_GPU_OLD_DRIVER", "1")
    report = selfcheck.run_gpu(1, device)
    assert "CUDA 12.4" in report["skipped"]["library"] and "\n" not in report["skipped"]["library"]
    assert report["status"] == "pass" and not _rows(report, "library")
    assert selfcheck.run_gpu(1, device, require_all=True)["status"] == "fail"


def test_the_run_fits_a_15_minute_window():
    steps = selfcheck.estimate()
    assert [s for s, _, _ in steps][-1].startswith("bandwidth")
    total = sum(sec for _, sec, _ in steps)
    assert 10 < total < 5 * 60  # the pytest run and its margin take the rest of the 15 minutes
