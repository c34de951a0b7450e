"""The contained child process of ``poolexport FILE``: confine first, then load and export.

The CLI (cli.py ``_run_contained``) starts ``python -c BOOTSTRAP child.py SCRATCH ARGV...``.
Landlock confines only the calling thread and the threads it starts later, so the
confinement must happen while the process has one thread, before torch (and its thread
pools) is imported; this file and sandbox.py therefore use the standard library only and
are loaded by path, not through the ``poolexport`` package (whose ``__init__`` imports
torch). After ``confine`` the child runs the ordinary CLI with its outputs redirected into
SCRATCH; the parent moves the ONNX file (and the report) to where the user asked.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Run by the parent as ``python -c BOOTSTRAP <this file> SCRATCH ARGV...``. It drops the
# current directory from sys.path before anything is imported from it.
BOOTSTRAP = (
    "import sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
    "import importlib.util as u; s = u.spec_from_file_location('_poolexport_child', sys.argv[1]); "
    "m = u.module_from_spec(s); s.loader.exec_module(m); sys.exit(m.main(sys.argv[2:]))"
)
# set in the child's environment after confinement; cli.run_export writes into it
CONTAINED_ENV = "POOLEXPORT_CONTAINED"
# test-only: with the sandbox enforced, load the file without the checks (tests show that
# the sandbox alone stops a payload); ignored when the sandbox is not enforced
UNCHECKED_ENV = "POOLEXPORT_TEST_UNCHECKED_LOAD"


def _load_by_path(name: str, file: Path):
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def main(argv: list[str]) -> int:
    scratch, rest = Path(argv[0]), argv[1:]
    sandbox = _load_by_path("_poolexport_sandbox", HERE / "sandbox.py")
    confinement = sandbox.confine(scratch)
    os.environ[CONTAINED_ENV] = str(scratch)
    tmp = scratch / "tmp"
    tmp.mkdir(exist_ok=True)
    for var in ("TMPDIR", "TEMP", "TMP"):
        os.environ[var] = str(tmp)
    os.environ["XDG_CACHE_HOME"] = str(tmp)
    os.environ["HOME"] = str(tmp)  # telemetry and caches (onnxruntime, openvino) write under HOME
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp)
    os.environ["TRITON_CACHE_DIR"] = str(tmp)

    from poolexport import _loading, cli

    cli.CONFINEMENT = confinement
    if os.environ.get(UNCHECKED_ENV) == "1" and confinement.enforced():
        _loading.UNCHECKED_LOAD_FOR_TESTS = True
    return cli.main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
