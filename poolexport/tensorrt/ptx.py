"""PTX of the shared CUDA kernels, for TensorRT's ahead-of-time plugins.

``nvcc -ptx`` compiles ``custom_ops/trt/poolexport_kernels.cu``, which includes the very
kernel definitions the ONNX Runtime CUDA build compiles (one math, many backends). The
PTX is looked up, in order:

1. ``$POOLEXPORT_PTX`` (a file), for deployments that ship it themselves;
2. the copy shipped in the package (``poolexport/tensorrt/_ptx/``, installed by the CMake
   target in ``custom_ops/trt/`` or written by ``python -m poolexport.tensorrt.ptx --ship``)
   when no kernel sources are around, or when its ``.json`` says it was built from the
   sources found;
3. a cache (``$POOLEXPORT_CACHE`` or ``~/.cache/poolexport``), compiled on demand with
   nvcc (``$POOLEXPORT_NVCC``, ``$CUDACXX``, ``PATH``, ``/usr/local/cuda/bin``).

PTX is forward compatible: the driver JIT-compiles ``compute_75`` PTX for any newer GPU,
but a driver reads only PTX ISA versions up to its own CUDA version's, and nvcc 13 writes
ISA 9.0 (CUDA 13 drivers, R580+). So the PTX is declared at an older ISA, 8.0 by default
(every CUDA 12 or 13 driver reads it; ``$POOLEXPORT_PTX_ISA`` or ``--isa`` to change),
and ptxas, which rejects any instruction the declared ISA lacks, checks the result for
sm_75. Before TensorRT or CuPy loads the PTX, :func:`check_driver` compares the driver's
CUDA version with the one the ISA needs and fails with one line naming both.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

from .._cuda_driver import driver_version  # noqa: F401  (one driver query; check_driver uses it)

DEFAULT_ARCH = "compute_75"  # the oldest virtual arch nvcc 13 still accepts
DEFAULT_ISA = "8.0"  # CUDA 12.0: read by every CUDA 12 and 13 driver
# PTX ISA version -> the CUDA version whose driver reads it first (NVIDIA's PTX ISA notes)
ISA_CUDA = {"7.8": (11, 8), "8.0": (12, 0), "8.1": (12, 1), "8.2": (12, 2), "8.3": (12, 3), "8.4": (12, 4),
            "8.5": (12, 5), "8.6": (12, 7), "8.7": (12, 8), "8.8": (12, 9), "9.0": (13, 0)}
ENTRY = Path("trt") / "poolexport_kernels.cu"
_PACKAGE_PTX = Path(__file__).parent / "_ptx"


class PTXUnavailable(RuntimeError):
    """No PTX could be found or built; the message names what is missing."""


def custom_ops_dir() -> Path | None:
    """The kernel sources: $POOLEXPORT_CUSTOM_OPS, else the checkout this package lives in
    (editable install), else a checkout at or above the working directory (a regular
    install run from the repository, as CI does)."""
    env = os.environ.get("POOLEXPORT_CUSTOM_OPS")
    if env:
        return Path(env) if (Path(env) / ENTRY).is_file() else None
    here = Path(__file__).resolve().parents[2]
    cwd = Path.cwd().resolve()
    for base in (here, cwd, *list(cwd.parents)[:3]):
        if (base / "custom_ops" / ENTRY).is_file():
            return base / "custom_ops"
    return None


def find_nvcc() -> str | None:
    for env in ("POOLEXPORT_NVCC", "CUDACXX"):
        if os.environ.get(env) and Path(os.environ[env]).is_file():
            return os.environ[env]
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.is_file() else None


def _sources(root: Path) -> list[Path]:
    files = [root / ENTRY]
    for sub in ("include", "cuda", "ort", "trt"):
        d = root / sub
        if d.is_dir():
            files += [p for p in d.rglob("*") if p.suffix in (".h", ".cuh", ".cu") and p.is_file()]
    return sorted(set(files))


def default_isa() -> str:
    isa = os.environ.get("POOLEXPORT_PTX_ISA") or DEFAULT_ISA
    if isa not in ISA_CUDA:
        raise PTXUnavailable(f"POOLEXPORT_PTX_ISA={isa!r}: expected one of {', '.join(ISA_CUDA)}")
    return isa


_VERSION_RE = re.compile(r"^\.version\s+(\d+\.\d+)\s*$", re.M)


def ptx_isa(text: str) -> str:
    """The ``.version`` a PTX module declares."""
    m = _VERSION_RE.search(text)
    if m is None:
        raise PTXUnavailable("PTX has no .version directive")
    return m.group(1)


def lower_isa(text: str, isa: str) -> str:
    """The PTX declared at ``isa`` when nvcc wrote a newer one (ptxas checks the result)."""
    have = ptx_isa(text)
    if tuple(map(int, have.split("."))) <= tuple(map(int, isa.split("."))):
        return text
    return _VERSION_RE.sub(f".version {isa}", text, count=1)


def source_hash(root: Path, arch: str, isa: str | None = None) -> str:
    h = hashlib.sha256(f"{arch} isa {isa or default_isa()}".encode())
    for p in _sources(root):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def compile_ptx(output: Path, arch: str = DEFAULT_ARCH, nvcc: str | None = None, root: Path | None = None,
                isa: str | None = None) -> Path:
    """Run nvcc -ptx on the TensorRT entry source, declare the result at ``isa`` (default
    :func:`default_isa`) and have ptxas check it; returns ``output``."""
    isa = isa or default_isa()
    root = root or custom_ops_dir()
    if root is None:
        raise PTXUnavailable(f"PTX sources missing: custom_ops/{ENTRY} not found (set POOLEXPORT_CUSTOM_OPS)")
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise PTXUnavailable("nvcc not found (set POOLEXPORT_NVCC or put the CUDA toolkit's bin on PATH)")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    cmd = [nvcc, "-ptx", f"-arch={arch}", "-std=c++17", "--fmad=true", "-I", str(root / "include"), str(root / ENTRY),
           "-o", str(output)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PTXUnavailable(f"nvcc failed ({' '.join(cmd)}):\n{proc.stderr.strip()}")
    output.write_text(lower_isa(output.read_text(), isa))
    ptxas = Path(nvcc).parent / "ptxas"
    if ptxas.is_file():  # rejects any instruction PTX ISA `isa` does not have
        sm = "sm_" + arch.split("_")[-1]
        proc = subprocess.run([str(ptxas), f"-arch={sm}", str(output), "-o", os.devnull], capture_output=True, text=True)
        if proc.returncode != 0:
            raise PTXUnavailable(f"the kernels need a newer PTX ISA than {isa} (ptxas: {proc.stderr.strip()})")
    return output


def check_driver(text: str, driver: tuple[int, int] | None = None) -> None:
    """Fail with one line when the driver cannot read this PTX (no driver: no check)."""
    driver = driver or driver_version()
    if driver is None:
        return
    isa = ptx_isa(text)
    need = ISA_CUDA.get(isa)
    if need is None or driver >= need:
        return
    raise PTXUnavailable(
        f"the CUDA driver supports CUDA {driver[0]}.{driver[1]} but the kernels' PTX (ISA {isa}) needs CUDA "
        f"{need[0]}.{need[1]}: update the driver or rebuild the PTX with POOLEXPORT_PTX_ISA=8.0"
    )


def _cache_dir() -> Path:
    base = os.environ.get("POOLEXPORT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "poolexport")
    return Path(base) / "ptx"


def ptx_path(arch: str = DEFAULT_ARCH) -> Path:
    """Path of an up-to-date PTX file (see the module docstring for the search order)."""
    isa = default_isa()
    if os.environ.get("POOLEXPORT_PTX"):
        return Path(os.environ["POOLEXPORT_PTX"])
    root = custom_ops_dir()
    shipped = _PACKAGE_PTX / f"poolexport_kernels.{arch}.ptx"
    meta = shipped.with_suffix(".json")
    if shipped.is_file():
        if root is None:
            return shipped  # an installed wheel: no sources to compare with
        if meta.is_file() and json.loads(meta.read_text()).get("source_hash") == source_hash(root, arch, isa):
            return shipped
    if root is None:
        raise PTXUnavailable(
            "PTX missing: no shipped poolexport/tensorrt/_ptx and no custom_ops/ sources (set POOLEXPORT_PTX)"
        )
    cached = _cache_dir() / f"poolexport_kernels.{arch}.{source_hash(root, arch, isa)}.ptx"
    if not cached.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            out = compile_ptx(Path(tmp) / "k.ptx", arch, root=root, isa=isa)
            cached.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(out), cached)
    return cached


@lru_cache(maxsize=4)
def load_ptx(arch: str = DEFAULT_ARCH) -> str:
    return ptx_path(arch).read_text()


_ENTRY_RE = re.compile(r"\.entry\s+([A-Za-z_$][\w$]*)\s*\((.*?)\)", re.S)
_PARAM_RE = re.compile(r"\.param\s+\.(\w+)")


def ptx_entries(ptx: str) -> dict[str, list[str]]:
    """{entry name: [PTX parameter types]} of every ``.entry`` in a PTX module."""
    return {m.group(1): _PARAM_RE.findall(m.group(2)) for m in _ENTRY_RE.finditer(ptx)}


def ship(arch: str = DEFAULT_ARCH) -> Path:
    """Compile into the package (``_ptx/``) with a hash of the sources it came from."""
    root = custom_ops_dir()
    out = compile_ptx(_PACKAGE_PTX / f"poolexport_kernels.{arch}.ptx", arch, root=root)
    isa = default_isa()
    out.with_suffix(".json").write_text(json.dumps({"arch": arch, "isa": isa, "source_hash": source_hash(root, arch, isa)})
                                        + "\n")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m poolexport.tensorrt.ptx", description=__doc__.splitlines()[0])
    p.add_argument("--arch", default=DEFAULT_ARCH, help="virtual architecture (default %(default)s)")
    p.add_argument("--isa", help=f"PTX ISA version to declare (default $POOLEXPORT_PTX_ISA or {DEFAULT_ISA})")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--ship", action="store_true", help="write poolexport/tensorrt/_ptx/ (package data)")
    g.add_argument("-o", "--output", type=Path, help="write the PTX to this file")
    args = p.parse_args(argv)
    if args.isa:
        os.environ["POOLEXPORT_PTX_ISA"] = args.isa
    try:
        out = ship(args.arch) if args.ship else (compile_ptx(args.output, args.arch) if args.output else ptx_path(args.arch))
    except PTXUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    entries = ptx_entries(out.read_text())
    print(f"{out}: {len(entries)} kernels: {', '.join(sorted(entries))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
