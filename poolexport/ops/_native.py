"""The torch ops' native kernels through a plain C ABI (ctypes).

``libpoolexport_ort.so`` (built by ``pip install .``) carries the ONNX Runtime kernels and,
beside them, the torch ops' kernels: the same CPU forward code plus the backward kernels.
On CPU the ops normally reach them through the compiled registration
(``custom_ops/torch/stable_ops.cc``, see ``_registry.py``); this module is the other
way in, through ``extern "C"`` functions (``custom_ops/torch/torch_abi.h``) called with
ctypes: the CPU path where the compiled registration is unavailable (torch older than
2.10), and the CUDA path.

On CUDA tensors (library built with nvcc) the ops launch the ONNX Runtime CUDA build's
forward kernels (launch.h) and the backward kernels of custom_ops/cuda/backward.cu on
torch's current stream. The adaPool family (``ada_pool.py``) has its CPU entry here too
(:func:`ada`; its CUDA wrappers are ``_native_ada_cuda.py``). The pure-torch implementation
in ``soft_pool.py`` / ``stochastic_pool.py`` / ``ada_pool.py`` stays the reference, and the fallback for float64, bfloat16 and
devices without a kernel. Select it everywhere with ``POOLEXPORT_TORCH_KERNELS=reference``
or, in code (tests), ``with reference_kernels(): ...``.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from functools import lru_cache
from typing import Optional, Sequence

import torch

from .._cuda_driver import torch_cuda_kernels_usable
from .._window import WindowSpec

_ENV = "POOLEXPORT_TORCH_KERNELS"  # "reference": pure torch everywhere
_DTYPES = {torch.float32: 0, torch.float16: 1}
# op codes of torch_abi.h
SOFT, EXPECTATION, SAMPLE = 0, 1, 2
EDSCW, IDW, ADA = 0, 1, 2  # poolexport_torch_ada's

_state = threading.local()


@contextlib.contextmanager
def reference_kernels(enabled: bool = True):
    """Run the ops' pure-torch reference implementation in this thread (tests, debugging)."""
    from ._registry import compiled_cpu_kernels

    old = getattr(_state, "reference", False)
    _state.reference = enabled
    compiled = compiled_cpu_kernels()[0]
    if compiled:  # the compiled kernels keep their own per-thread choice
        old_compiled = _library().poolexport_torch_select_reference(int(enabled))
    try:
        yield
    finally:
        _state.reference = old
        if compiled:
            _library().poolexport_torch_select_reference(old_compiled)


def _reference_selected() -> bool:
    return getattr(_state, "reference", False) or os.environ.get(_ENV, "").lower() == "reference"


@lru_cache(maxsize=1)
def _library() -> Optional[ctypes.CDLL]:
    from ..ort import get_library_path

    try:
        lib = ctypes.CDLL(get_library_path())
        lib.poolexport_torch_abi_version.restype = ctypes.c_int
        if lib.poolexport_torch_abi_version() != 1:
            return None
    except (RuntimeError, OSError, AttributeError):  # not built, or an older library
        return None
    i64p = ctypes.POINTER(ctypes.c_int64)
    common = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, i64p]
    lib.poolexport_torch_window.argtypes = common + [ctypes.c_float, ctypes.c_int64, ctypes.c_int]
    lib.poolexport_torch_reduce.argtypes = common + [ctypes.c_int32, ctypes.c_float, ctypes.c_int64, ctypes.c_int]
    lib.poolexport_torch_window.restype = lib.poolexport_torch_reduce.restype = ctypes.c_int
    try:  # the adaPool family (a library older than these ops lacks it: the reference runs them)
        vp = ctypes.c_void_p
        lib.poolexport_torch_ada.argtypes = [ctypes.c_int, ctypes.c_int, vp, vp, i64p, ctypes.c_int, vp, vp, vp, i64p,
                                             ctypes.c_int, ctypes.c_int]
        lib.poolexport_torch_ada.restype = ctypes.c_int
        lib.ada = True
    except AttributeError:
        lib.ada = False
    try:  # built with CUDA: the forward launchers of launch.h and the backward ones of backward.h
        i32p, vp = ctypes.POINTER(ctypes.c_int32), ctypes.c_void_p
        for name in ("poolexport_cuda_launch_window", "poolexport_cuda_launch_reduce"):
            getattr(lib, name).argtypes = [ctypes.c_int, ctypes.c_int, vp, vp, i32p, vp]
        lib.poolexport_cuda_launch_window_backward.argtypes = [ctypes.c_int, ctypes.c_int, vp, vp, vp, vp, i32p, vp]
        lib.poolexport_cuda_launch_reduce_backward.argtypes = [ctypes.c_int, ctypes.c_int, vp, vp, vp, i32p, vp]
        lib.poolexport_cuda_error_string.restype = ctypes.c_char_p
        lib.cuda = True
    except AttributeError:
        lib.cuda = False
    return lib


def available() -> bool:
    """Whether the installed library has the torch ops' native kernels."""
    return _library() is not None


def cuda_available() -> bool:
    """Whether the installed library was built with the CUDA kernels."""
    return available() and _library().cuda


_INT32_MAX = 2**31 - 1


def use_native(x: torch.Tensor) -> bool:
    if x.dtype not in _DTYPES or _reference_selected() or not available():
        return False
    if x.device.type == "cuda":  # the CUDA kernels take int32 sizes, and a driver as new as their runtime
        return _library().cuda and x.numel() <= _INT32_MAX and torch_cuda_kernels_usable()
    return x.device.type == "cpu"


def _int64s(values: Sequence[int]):
    return (ctypes.c_int64 * len(values))(*values)


@lru_cache(maxsize=256)
def _window_geometry(spec: WindowSpec, n: int, c: int, spatial: tuple[int, ...]):
    out, begin = spec.resolve(spatial)
    lead = 3 - spec.rank

    def padded(values, fill):
        return [fill] * lead + list(values)

    geom = [n, c] + padded(spatial, 1) + padded(out, 1) + padded(spec.kernel_shape, 1) + padded(spec.strides, 1)
    geom += padded(spec.dilations, 1) + padded(begin, 0)
    return _int64s(geom), out


def _check(rc: int, op: str) -> None:
    if rc == 1:
        raise ValueError(f"{op}: the native kernel rejected its arguments")
    if rc != 0:
        raise RuntimeError(f"{op}: the native kernel failed (out of memory?)")


def _result(x: torch.Tensor, grad: Optional[torch.Tensor], out_shape):
    """(result, grad, grad pointer): Y of ``out_shape`` for a forward (grad None), dX
    shaped like x for a backward, whose grad is made contiguous in x's dtype (kept alive
    by the caller while the kernel reads it)."""
    if grad is None:
        return x.new_empty(out_shape), None, None
    grad = grad.contiguous().to(x.dtype)
    return torch.empty_like(x), grad, grad.data_ptr()


def window(op: str, code: int, x: torch.Tensor, spec: WindowSpec, beta: float = 1.0, seed: int = 0,
           grad: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Forward (grad None: Y) or backward (dX) of a windowed op on a CPU tensor."""
    x = x.contiguous()
    n, c, *spatial = x.shape
    geom, out = _window_geometry(spec, n, c, tuple(spatial))
    result, grad, gptr = _result(x, grad, (n, c, *out))
    if x.is_cuda:
        _cuda_window(op, code, x, gptr, result, geom, beta, seed)
    else:
        rc = _library().poolexport_torch_window(code, _DTYPES[x.dtype], x.data_ptr(), gptr, result.data_ptr(), geom,
                                                float(beta), int(seed), torch.get_num_threads())
        _check(rc, op)
    return result


@lru_cache(maxsize=256)
def _reduce_geometry(shape: tuple[int, ...], reduced: tuple[int, ...]):
    """The 6 padded axes and mask of kernel_abi.h (neighbouring axes of one kind merged,
    size-1 axes dropped), or None when that needs more than 6 groups."""
    dims, kinds = [], []
    for i, s in enumerate(shape):
        if s == 1:
            continue
        red = i in reduced
        if dims and kinds[-1] == red:
            dims[-1] *= s
        else:
            dims.append(s)
            kinds.append(red)
    if len(dims) > 6:
        return None
    lead = 6 - len(dims)
    mask = sum(1 << (lead + i) for i, red in enumerate(kinds) if red)
    return _int64s([1] * lead + dims), mask


def reduce(op: str, code: int, x: torch.Tensor, reduced: tuple[int, ...], out_shape, beta: float = 1.0,
           seed: int = 0, grad: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """Forward or backward of a reduce op on a CPU tensor; None if the layout is unsupported."""
    geometry = _reduce_geometry(tuple(x.shape), reduced)
    if geometry is None:
        return None
    dims, mask = geometry
    x = x.contiguous()
    result, grad, gptr = _result(x, grad, out_shape)
    if x.is_cuda:
        _cuda_reduce(op, code, x, gptr, result, dims, mask, beta, seed)
    else:
        rc = _library().poolexport_torch_reduce(code, _DTYPES[x.dtype], x.data_ptr(), gptr, result.data_ptr(), dims,
                                                mask, float(beta), int(seed), torch.get_num_threads())
        _check(rc, op)
    return result


def ada_available() -> bool:
    """Whether the installed library has the adaPool family's CPU kernels."""
    return available() and _library().ada


def ada(op: str, code: int, x: torch.Tensor, spec: WindowSpec, beta: Optional[torch.Tensor] = None,
        grad: Optional[torch.Tensor] = None):
    """The adaPool family on CPU tensors (code EDSCW, IDW or ADA; beta: AdaPool's Beta, in
    x's dtype): Y for a forward (grad None); dX for a backward, (dX, dBeta) for AdaPool's."""
    x = x.contiguous()
    n, c, *spatial = x.shape
    geom, out = _window_geometry(spec, n, c, tuple(spatial))
    result, grad, gptr = _result(x, grad, (n, c, *out))
    bptr, bshape, bdim, dbeta = None, None, 0, None
    if beta is not None:
        beta = beta.contiguous()
        bptr, bshape, bdim = beta.data_ptr(), _int64s(beta.shape), beta.dim()
        if grad is not None:
            dbeta = torch.empty_like(beta)
    rc = _library().poolexport_torch_ada(code, _DTYPES[x.dtype], x.data_ptr(), bptr, bshape, bdim, gptr,
                                         result.data_ptr(), None if dbeta is None else dbeta.data_ptr(), geom,
                                         spec.rank, torch.get_num_threads())
    _check(rc, op)
    return result if dbeta is None else (result, dbeta)


# ------------------------------------------------------------------ CUDA (launch.h, backward.h)
def _scalars(code: int, beta: float, seed: int) -> list[int]:
    """beta_bits (SoftPool) or the sample flag, then the seed's low and high 32 bits (int32)."""
    first = int(torch.tensor([beta], dtype=torch.float32).view(torch.int32)) if code == SOFT else int(code == SAMPLE)
    s = int(seed) & 0xFFFFFFFFFFFFFFFF

    def i32(v):
        return v - (1 << 32) if v >= 1 << 31 else v

    return [first, i32(s & 0xFFFFFFFF), i32(s >> 32)]


def _cuda_check(rc: int, op: str) -> None:
    if rc:
        raise RuntimeError(f"{op}: CUDA launch failed: {_library().poolexport_cuda_error_string(rc).decode()}")


def _cuda_window(op, code, x, gptr, result, geom, beta, seed) -> None:
    lib = _library()
    p = (ctypes.c_int32 * 23)(*list(geom), *_scalars(code, beta, seed))
    with torch.cuda.device(x.device):
        stream = torch.cuda.current_stream(x.device).cuda_stream
        if gptr is None:
            rc = lib.poolexport_cuda_launch_window(int(code != SOFT), _DTYPES[x.dtype], x.data_ptr(), result.data_ptr(),
                                                   p, stream)
        else:
            outputs = p[0] * p[1] * p[5] * p[6] * p[7]
            ws = torch.empty(3 * max(outputs, 1), dtype=torch.float32, device=x.device)
            rc = lib.poolexport_cuda_launch_window_backward(code, _DTYPES[x.dtype], x.data_ptr(), gptr,
                                                            result.data_ptr(), ws.data_ptr(), p, stream)
    _cuda_check(rc, op)


def _cuda_reduce(op, code, x, gptr, result, dims, mask, beta, seed) -> None:
    lib = _library()
    p = (ctypes.c_int32 * 11)(x.dim(), *list(dims), mask, *_scalars(code, beta, seed))
    with torch.cuda.device(x.device):
        stream = torch.cuda.current_stream(x.device).cuda_stream
        if gptr is None:
            rc = lib.poolexport_cuda_launch_reduce(int(code != SOFT), _DTYPES[x.dtype], x.data_ptr(), result.data_ptr(),
                                                   p, stream)
        else:
            rc = lib.poolexport_cuda_launch_reduce_backward(code, _DTYPES[x.dtype], x.data_ptr(), gptr,
                                                            result.data_ptr(), p, stream)
    _cuda_check(rc, op)
