"""The CUDA driver on this machine, against what our CUDA code needs.

Two questions, one answer each:

* :func:`driver_version`: the CUDA version of the installed driver, read from
  ``libcuda.so.1`` (``cuDriverGetVersion``) with ctypes, so no CUDA Python package is
  needed. The TensorRT PTX check (``tensorrt/ptx.py``) and the self-check use it.
* :func:`library_cuda_problem`: whether the driver can run the custom-op library's CUDA
  kernels. The library links the CUDA runtime statically, and a driver older than that
  runtime fails every launch ("insufficient driver"). The comparison itself lives in the
  library (``poolexport_cuda_version_error``, custom_ops/cuda/kernels.cu): ONNX Runtime's
  CUDA kernels refuse to run with its one-line reason, and the torch ops ask the same
  function here, so both paths decide the same way.

:func:`torch_cuda_kernels_usable` is the torch ops' gate: with a driver that is too old
they fall back to the pure-torch reference implementation and say so once, in one line.
"""
from __future__ import annotations

import ctypes
import threading
import warnings
from typing import Optional

_lock = threading.Lock()
_verdict: Optional[bool] = None


def driver_version() -> tuple[int, int] | None:
    """CUDA version of the installed driver (cuDriverGetVersion), None without a driver."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    v = ctypes.c_int(0)
    if cuda.cuDriverGetVersion(ctypes.byref(v)) != 0 or v.value <= 0:
        return None
    return v.value // 1000, (v.value % 1000) // 10


def library_cuda_problem(lib: ctypes.CDLL) -> Optional[str]:
    """None when the driver can run ``lib``'s CUDA kernels, else one line naming the
    driver's CUDA version and the library's runtime (or saying there is no driver)."""
    check = lib.poolexport_cuda_version_error
    check.restype = ctypes.c_char_p
    why = check()
    return why.decode() if why else None


def torch_cuda_kernels_usable() -> bool:
    """Whether the torch ops may launch the library's CUDA kernels. False, with one
    RuntimeWarning per process, when the driver is older than the library's CUDA runtime;
    the ops then run their reference implementation on the CUDA tensors."""
    global _verdict
    if _verdict is not None:
        return _verdict
    with _lock:
        if _verdict is None:
            from .ops._native import _library

            lib = _library()
            why = library_cuda_problem(lib) if lib is not None and getattr(lib, "cuda", False) else None
            if why:
                warnings.warn(f"poolexport: torch ops on CUDA use the reference implementation: {why}", RuntimeWarning,
                              stacklevel=3)
            _verdict = why is None
    return _verdict


def _reset_for_tests() -> None:
    """Forget the verdict (tests that fake a driver)."""
    global _verdict
    _verdict = None
