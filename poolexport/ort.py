"""ONNX Runtime integration: the poolexport custom-op library (CPU and CUDA kernels).

The library is built by ``pip install`` (custom_ops/, CMake) and installed inside the
package. Load it the way onnxruntime-extensions users know::

    so = onnxruntime.SessionOptions()
    so.register_custom_ops_library(poolexport.get_library_path())

or get a ready session with :func:`session`. Importing this module does not import
onnxruntime.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

LIBRARY_NAME = "libpoolexport_ort.so"
_ENV = "POOLEXPORT_ORT_LIBRARY"  # override, e.g. an AddressSanitizer build


def _candidates():
    env = os.environ.get(_ENV)
    if env:
        yield Path(env)
        return
    here = Path(__file__).resolve().parent
    yield here / LIBRARY_NAME
    # editable installs keep the compiled library in site-packages, not in the source tree
    for entry in sys.path:
        if entry:
            yield Path(entry) / "poolexport" / LIBRARY_NAME


def get_library_path() -> str:
    """Path of the installed custom-op library; RuntimeError if it was not built."""
    for path in _candidates():
        if path.is_file():
            return str(path)
    raise RuntimeError(
        f"poolexport: the ONNX Runtime custom-op library ({LIBRARY_NAME}) is not installed; "
        "build it with `pip install .` (needs a C++ compiler and CMake)"
        + (f", or fix {_ENV}={os.environ[_ENV]}" if os.environ.get(_ENV) else "")
    )


def session_options(options=None):
    """SessionOptions (new or given) with the custom-op library registered."""
    import onnxruntime as ort

    so = options if options is not None else ort.SessionOptions()
    so.register_custom_ops_library(get_library_path())
    return so


def session(model, providers: Sequence | None = None, options=None, **kwargs):
    """An InferenceSession on ``model`` (path or bytes) with the library registered.

    ``providers`` defaults to CPU. Check ``sess.get_providers()``: onnxruntime silently
    falls back to CPU when a requested provider cannot be used.
    """
    import onnxruntime as ort

    if isinstance(model, (str, os.PathLike)):
        model = os.fspath(model)
    return ort.InferenceSession(
        model, sess_options=session_options(options), providers=list(providers or ["CPUExecutionProvider"]), **kwargs
    )
