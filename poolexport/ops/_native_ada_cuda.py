"""The adaPool family's torch ops on CUDA tensors: the CUDA forward kernels of
custom_ops/cuda/ada_kernels.cu (``poolexport_cuda_launch_ada``, launch.h) and the backward
kernels of custom_ops/cuda/ada_backward.cu (``poolexport_cuda_launch_ada_backward``,
backward.h), launched through ctypes on torch's current stream.

Used where :func:`usable` holds (float32 / float16 CUDA tensors, the library built with
CUDA and usable by the driver, sizes within int32: ``_native.use_native``'s rule); the
pure-torch implementation in ``ada_pool.py`` stays the reference and the fallback.

Beta is read in X's dtype (a float32 Beta with float16 X is rounded to float16 first).
dBeta comes back in Beta's dtype: the kernel writes each output's term (eDSCW - eM) * g in
float32 and it is summed here over Beta's broadcast axes (``sum_to_size``).
"""
from __future__ import annotations

import ctypes
from functools import lru_cache
from typing import Optional

import torch

from .._window import WindowSpec
from . import _native

KINDS = {"edscw_pool": 0, "idw_pool": 1, "ada_pool": 2}  # op codes of launch.h / backward.h


@lru_cache(maxsize=1)
def _library() -> Optional[ctypes.CDLL]:
    """The library with the adaPool CUDA launchers bound, or None (not built with CUDA, or
    built before these launchers existed)."""
    lib = _native._library() if _native.cuda_available() else None
    if lib is None or not hasattr(lib, "poolexport_cuda_launch_ada_backward"):
        return None
    vp, i32p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32)
    lib.poolexport_cuda_launch_ada.argtypes = [ctypes.c_int, ctypes.c_int, vp, vp, vp, i32p, vp]
    lib.poolexport_cuda_launch_ada.restype = ctypes.c_int
    lib.poolexport_cuda_launch_ada_backward.argtypes = [ctypes.c_int, ctypes.c_int, vp, vp, vp, vp, vp, vp, i32p,
                                                        vp]
    lib.poolexport_cuda_launch_ada_backward.restype = ctypes.c_int
    lib.poolexport_cuda_ada_backward_workspace.argtypes = [ctypes.c_int]
    lib.poolexport_cuda_ada_backward_workspace.restype = ctypes.c_int
    return lib


def usable(x: torch.Tensor, beta: Optional[torch.Tensor] = None) -> bool:
    """Whether the CUDA kernels take this call (else the caller runs the pure-torch path)."""
    if not x.is_cuda or not _native.use_native(x) or _library() is None:
        return False
    return beta is None or (beta.device == x.device and beta.is_floating_point() and beta.numel() <= _native._INT32_MAX)


def beta_dims5(beta_shape, out_shape) -> list[int]:
    """Beta's shape in the 5-D view (N, C, d, h, w) of the output (kernel_abi.h): numpy's
    right alignment, then 1 for each missing leading spatial axis. Raises ValueError when
    Beta does not broadcast to the output."""
    rank = len(out_shape)
    if len(beta_shape) > rank or any(b not in (1, o) for b, o in zip(reversed(beta_shape), reversed(out_shape))):
        raise ValueError(f"AdaPool: beta of shape {list(beta_shape)} does not broadcast to the output "
                         f"{list(out_shape)}")
    full = [1] * (rank - len(beta_shape)) + list(beta_shape)
    return full[:2] + [1] * (5 - rank) + full[2:]


def _params(x: torch.Tensor, spec: WindowSpec, beta: Optional[torch.Tensor]):
    """(p[25] of launch.h, the output's shape)."""
    n, c, *spatial = x.shape
    geom, out = _native._window_geometry(spec, n, c, tuple(spatial))
    out_shape = (n, c, *out)
    dims = beta_dims5(tuple(beta.shape), out_shape) if beta is not None else [1] * 5
    return (ctypes.c_int32 * 25)(*list(geom), *dims), out_shape


def _stream(x: torch.Tensor) -> int:
    return torch.cuda.current_stream(x.device).cuda_stream


def _check(rc: int, kind: str) -> None:
    if rc:
        raise RuntimeError(f"{kind}: CUDA launch failed: {_library().poolexport_cuda_error_string(rc).decode()}")


def forward(kind: str, x: torch.Tensor, beta: Optional[torch.Tensor], spec: WindowSpec) -> torch.Tensor:
    """Y of ``kind`` (``edscw_pool``, ``idw_pool``, ``ada_pool``; beta None but for
    ``ada_pool``) on a CUDA tensor x, in x's dtype."""
    code = KINDS[kind]
    x = x.contiguous()
    b = beta.to(x.dtype).contiguous() if code == 2 else None
    p, out_shape = _params(x, spec, b)
    y = x.new_empty(out_shape)
    with torch.cuda.device(x.device):
        rc = _library().poolexport_cuda_launch_ada(code, _native._DTYPES[x.dtype], x.data_ptr(),
                                                   None if b is None else b.data_ptr(), y.data_ptr(), p, _stream(x))
    _check(rc, kind)
    return y


def backward(kind: str, grad: torch.Tensor, x: torch.Tensor, beta: Optional[torch.Tensor],
             spec: WindowSpec) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(dX in x's dtype, dBeta in beta's dtype and shape, None but for ``ada_pool``) for the
    output gradient ``grad`` (the output's shape)."""
    code = KINDS[kind]
    x = x.contiguous()
    b = beta.to(x.dtype).contiguous() if code == 2 else None
    p, out_shape = _params(x, spec, b)
    g = grad.to(x.dtype).contiguous()
    if tuple(g.shape) != out_shape:
        raise ValueError(f"{kind}: gradient of shape {list(g.shape)} for an output of shape {list(out_shape)}")
    lib = _library()
    outputs = g.numel()
    ws = torch.empty(lib.poolexport_cuda_ada_backward_workspace(code) * max(outputs, 1), dtype=torch.float32,
                     device=x.device)
    terms = torch.empty(out_shape if code == 2 else (1,), dtype=torch.float32, device=x.device)
    dx = torch.empty_like(x)
    with torch.cuda.device(x.device):
        rc = lib.poolexport_cuda_launch_ada_backward(code, _native._DTYPES[x.dtype], x.data_ptr(),
                                                     None if b is None else b.data_ptr(), g.data_ptr(), dx.data_ptr(),
                                                     terms.data_ptr(), ws.data_ptr(), p, _stream(x))
    _check(rc, kind)
    if code != 2:
        return dx, None
    return dx, terms.sum_to_size(beta.shape).to(beta.dtype)
