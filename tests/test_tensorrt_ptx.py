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
    n_scalars = len(abi.kernel_params(op)) - 2
    # TensorRT passes: input pointers, then the SymInt32 extra args, then output pointers
    assert params == ["u64"] + ["u32"] * n_scalars + ["u64"]


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

    def fresh(out, arch, root=None):
        Path(out).write_text("// fresh\n")
        return Path(out)

    monkeypatch.setattr(ptx, "compile_ptx", fresh)
    assert ptx.ptx_path().read_text() == "// fresh\n"


def test_missing_nvcc_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(ptx, "find_nvcc", lambda: None)
    with pytest.raises(ptx.PTXUnavailable, match="nvcc not found"):
        ptx.compile_ptx(tmp_path / "k.ptx")
