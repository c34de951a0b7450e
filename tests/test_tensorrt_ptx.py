"""The PTX the TensorRT plugins embed: built from the shared kernels, entry signatures
exactly what ``aot_impl`` passes (input pointer, int32 scalars, output pointer), and
assembled by ptxas for real GPUs (what the driver's JIT does at engine load).

Needs nvcc (this machine has one); skips with the reason otherwise.
"""
import shutil
import subprocess
from pathlib import Path

import pytest

from poolexport.tensorrt import abi, ptx

NVCC = ptx.find_nvcc()
pytestmark = [
    pytest.mark.skipif(NVCC is None, reason="nvcc not found: cannot build the TensorRT plugins' PTX"),
    pytest.mark.skipif(ptx.custom_ops_dir() is None, reason="custom_ops/ sources not found (installed wheel)"),
]


@pytest.fixture(scope="module")
def ptx_file(tmp_path_factory):
    return ptx.compile_ptx(tmp_path_factory.mktemp("ptx") / "k.ptx")


def test_entry_points_are_exactly_the_abi(ptx_file):
    entries = ptx.ptx_entries(ptx_file.read_text())
    assert sorted(entries) == sorted(abi.all_kernel_names())


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("op", sorted(abi.KERNELS))
def test_entry_signature_matches_aot_launch(ptx_file, op, dtype):
    params = ptx.ptx_entries(ptx_file.read_text())[abi.kernel_name(op, dtype)]
    n_scalars = len(abi.kernel_scalars(op))
    # TensorRT passes: input pointers, then the SymInt32 extra args, then output pointers
    assert params == ["u64"] * len(abi.kernel_inputs(op)) + ["u32"] * n_scalars + ["u64"]


@pytest.mark.parametrize("arch", ["sm_75", "sm_90"])
def test_ptx_assembles_for_real_gpus(ptx_file, arch):
    ptxas = shutil.which("ptxas") or str(Path(NVCC).parent / "ptxas")
    if not Path(ptxas).is_file():
        pytest.skip("ptxas not found next to nvcc")
    proc = subprocess.run([ptxas, f"-arch={arch}", str(ptx_file), "-o", "/dev/null"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_ptx_path_caches_by_source_hash(tmp_path, monkeypatch):
    monkeypatch.delenv("POOLEXPORT_PTX", raising=False)
    monkeypatch.setenv("POOLEXPORT_CACHE", str(tmp_path))
    monkeypatch.setattr(ptx, "_PACKAGE_PTX", tmp_path / "no-shipped")
    first = ptx.ptx_path()
    assert first.is_file() and first.parent.parent == tmp_path
    mtime = first.stat().st_mtime_ns
    monkeypatch.setattr(ptx, "compile_ptx", lambda *a, **k: pytest.fail("recompiled an up-to-date PTX"))
    assert ptx.ptx_path() == first and first.stat().st_mtime_ns == mtime


def test_shipped_ptx_used_only_when_built_from_same_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("POOLEXPORT_PTX", raising=False)
    monkeypatch.setenv("POOLEXPORT_CACHE", str(tmp_path / "cache"))
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    monkeypatch.setattr(ptx, "_PACKAGE_PTX", shipped)
    f = shipped / f"poolexport_kernels.{ptx.DEFAULT_ARCH}.ptx"
    f.write_text("// shipped\n")
    f.with_suffix(".json").write_text('{"source_hash": "%s"}' % ptx.source_hash(ptx.custom_ops_dir(), ptx.DEFAULT_ARCH))
    assert ptx.ptx_path() == f
    f.with_suffix(".json").write_text('{"source_hash": "stale"}')

    def fresh(out, arch, root=None, isa=None):
        Path(out).write_text("// fresh\n")
        return Path(out)

    monkeypatch.setattr(ptx, "compile_ptx", fresh)
    assert ptx.ptx_path().read_text() == "// fresh\n"


def test_missing_nvcc_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(ptx, "find_nvcc", lambda: None)
    with pytest.raises(ptx.PTXUnavailable, match="nvcc not found"):
        ptx.compile_ptx(tmp_path / "k.ptx")


def test_ptx_is_declared_at_a_cuda12_isa_and_ptxas_accepts_it(ptx_file):
    """nvcc 13 writes ISA 9.0, which CUDA 12 drivers reject; the PTX we ship says 8.0, and
    compile_ptx had ptxas (which refuses instructions newer than the declared ISA) check it."""
    assert ptx.ptx_isa(ptx_file.read_text()) == ptx.DEFAULT_ISA == "8.0"
    assert ptx.ISA_CUDA[ptx.DEFAULT_ISA] == (12, 0)


def test_an_isa_too_old_for_the_kernels_is_refused(tmp_path):
    """ptxas is the judge: ISA 7.8 (CUDA 11.8) still has all the kernels use; 6.0 has no
    sm_75 target, and compile_ptx says so instead of shipping it."""
    assert ptx.ptx_isa(ptx.compile_ptx(tmp_path / "k78.ptx", isa="7.8").read_text()) == "7.8"
    with pytest.raises(ptx.PTXUnavailable, match="newer PTX ISA than 6.0"):
        ptx.compile_ptx(tmp_path / "k60.ptx", isa="6.0")


def test_driver_check_names_both_versions():
    text = ".version 9.0\n.target sm_75\n"
    with pytest.raises(ptx.PTXUnavailable) as e:
        ptx.check_driver(text, driver=(12, 4))
    msg = str(e.value)
    assert "\n" not in msg and "CUDA 12.4" in msg and "CUDA 13.0" in msg and "ISA 9.0" in msg
    ptx.check_driver(text, driver=(13, 0))
    ptx.check_driver(".version 8.0\n", driver=(12, 0))
