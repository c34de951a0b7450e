"""adaPool modules (Stergiou and Poppe, "AdaPool: Exponential Adaptive Pooling for
Information-Retaining Downsampling", IEEE TIP 2022).

* ``EdscwPool{1,2,3}d``: weights softmax(DSC(a_i, mean)) per window (eDSCW);
* ``IdwPool{1,2,3}d``: inverse-distance weights 1 / |a_i - mean| (the window mean where
  a value equals it);
* ``AdaPool{1,2,3}d``: beta * eDSCW + (1 - beta) * SoftPool, beta a learned mask. By
  default one learned value shared by every output position; ``beta_shape`` = the output's
  spatial shape gives the repository's per-position mask (its size is then fixed by the
  input size the layer is meant for, as in the repository).

Windows take PyTorch-style arguments (stride defaults to the kernel size; padding an int,
per-axis tuple, ``"same"`` or ``"valid"``); padded positions never enter a window.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from .._args import check_bool, check_real
from .._window import window_spec_for_input
from ..ops import ada_pool as _ops
from ._window_pool import WINDOW_ARGS, WindowPoolNd

_Size = Union[int, Sequence[int]]


def _args(name, x, k, kernel_size, stride, padding, dilation, ceil_mode):
    spec = window_spec_for_input(name, x, k, kernel_size, stride, padding, dilation, ceil_mode)
    return (list(spec.kernel_shape), list(spec.strides), list(spec.pads), list(spec.dilations), spec.ceil_mode,
            spec.auto_pad)


def _windowed(op, name: str, k: int, doc: str):
    def fn(x: torch.Tensor, kernel_size: _Size, stride: Optional[_Size] = None, padding: Union[_Size, str] = 0,
           dilation: _Size = 1, ceil_mode: bool = False) -> torch.Tensor:
        return op(x, *_args(name, x, k, kernel_size, stride, padding, dilation, ceil_mode))

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc
    return fn


def _ada(k: int):
    name = f"ada_pool{k}d"

    def fn(x: torch.Tensor, beta: torch.Tensor, kernel_size: _Size, stride: Optional[_Size] = None,
           padding: Union[_Size, str] = 0, dilation: _Size = 1, ceil_mode: bool = False) -> torch.Tensor:
        return _ops.ada_pool(x, beta, *_args(name, x, k, kernel_size, stride, padding, dilation, ceil_mode))

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"adaPool over {k} spatial axes: beta * eDSCW + (1 - beta) * SoftPool, beta broadcast to the output."
    return fn


edscw_pool1d, edscw_pool2d, edscw_pool3d = (
    _windowed(_ops.edscw_pool, f"edscw_pool{k}d", k, f"eDSCW pooling over {k} spatial axes.") for k in (1, 2, 3))
idw_pool1d, idw_pool2d, idw_pool3d = (
    _windowed(_ops.idw_pool, f"idw_pool{k}d", k, f"IDW pooling over {k} spatial axes.") for k in (1, 2, 3))
ada_pool1d, ada_pool2d, ada_pool3d = (_ada(k) for k in (1, 2, 3))


class EdscwPool1d(WindowPoolNd):
    dims, _fn = 1, staticmethod(edscw_pool1d)


class EdscwPool2d(WindowPoolNd):
    dims, _fn = 2, staticmethod(edscw_pool2d)


class EdscwPool3d(WindowPoolNd):
    dims, _fn = 3, staticmethod(edscw_pool3d)


class IdwPool1d(WindowPoolNd):
    dims, _fn = 1, staticmethod(idw_pool1d)


class IdwPool2d(WindowPoolNd):
    dims, _fn = 2, staticmethod(idw_pool2d)


class IdwPool3d(WindowPoolNd):
    dims, _fn = 3, staticmethod(idw_pool3d)


class _AdaPoolNd(WindowPoolNd):
    """``beta_shape``: None (one value for every position) or the output's spatial shape
    (one per position, the repository's form); ``beta`` its initial value; ``trainable``
    False keeps it a buffer."""

    _extra_args = ("beta_shape", "trainable")

    def __init__(self, kernel_size: _Size, stride: Optional[_Size] = None, padding: Union[_Size, str] = 0,
                 dilation: _Size = 1, ceil_mode: bool = False, beta: float = 0.5,
                 beta_shape: Optional[Sequence[int]] = None, trainable: bool = True, device=None, dtype=None):
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode)
        owner = type(self).__name__
        check_real(owner, "beta", beta)
        self.trainable = check_bool(owner, "trainable", trainable)
        shape = (1,) * self.dims if beta_shape is None else tuple(beta_shape)
        if len(shape) != self.dims or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in shape):
            raise ValueError(f"{owner}: beta_shape must be {self.dims} positive ints (the output's spatial shape), "
                             f"got {beta_shape!r}")
        self.beta_shape = shape
        value = torch.full(shape, float(beta), device=device, dtype=dtype)
        if trainable:
            self.beta = nn.Parameter(value)
        else:
            self.register_buffer("beta", value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a cast only when the dtypes differ: an unconditional one is recorded by torch.export
        # with x's dtype baked in, and the program could no longer run in float64 (parity's
        # reference) or float16
        beta = self.beta if self.beta.dtype == x.dtype else self.beta.to(x.dtype)
        return type(self)._fn(x, beta, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)

    def extra_repr(self) -> str:
        return ", ".join(f"{n}={getattr(self, n)}" for n in WINDOW_ARGS + self._extra_args)


class AdaPool1d(_AdaPoolNd):
    dims, _fn = 1, staticmethod(ada_pool1d)


class AdaPool2d(_AdaPoolNd):
    dims, _fn = 2, staticmethod(ada_pool2d)


class AdaPool3d(_AdaPoolNd):
    dims, _fn = 3, staticmethod(ada_pool3d)


__all__ = ["EdscwPool1d", "EdscwPool2d", "EdscwPool3d", "IdwPool1d", "IdwPool2d", "IdwPool3d", "AdaPool1d",
           "AdaPool2d", "AdaPool3d"]
