"""Lp / L2 pooling: (sum |a|^p)^(1/p) per window, or the mean form (mean |a|^p)^(1/p)
(p = 2: RMS pooling, sqrt(mean(a^2))). Sermanet, Chintala, LeCun, ICPR 2012 ("Convolutional
neural networks applied to house numbers digit classification") use L2 pooling.

Arguments follow ``torch.nn.LPPool2d`` (norm_type, kernel_size, stride, ceil_mode; ``L2PoolNd``
drops norm_type, so its third positional is ``ceil_mode``, a bool: ``L2Pool2d(3, 2, "same")``
raises instead of binding "same" to it), with keyword-only ``padding`` (int, tuple, ONNX
begin/end pads, 'same' or 'valid') and ``dilation`` as extensions. Padding is zero, which adds nothing to sum |a|^p: the norm form matches ONNX
``LpPool`` with the same pads; the mean form divides by the window's valid positions.
Unlike torch's lp_pool (which raises a to the p-th power keeping its sign), |a| is used,
so odd p and negative inputs give the p-norm.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from .. import functional as F
from .._args import check_bool, check_dim
from ._window_pool import WindowPoolNd

_Size = Union[int, Sequence[int]]


class _LpPoolNd(WindowPoolNd):
    _extra_args = ("norm_type", "mean")

    def __init__(self, norm_type: float, kernel_size: _Size, stride: Optional[_Size] = None, ceil_mode: bool = False,
                 *, padding: Union[_Size, str] = 0, dilation: _Size = 1, mean: bool = False):
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode)
        self.norm_type = F._check_p(type(self).__name__, norm_type)
        self.mean = check_bool(type(self).__name__, "mean", mean)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return type(self)._fn(x, self.norm_type, self.kernel_size, self.stride, self.ceil_mode,
                              padding=self.padding, dilation=self.dilation, mean=self.mean)


class LpPool1d(_LpPoolNd):
    dims, _fn = 1, staticmethod(F.lp_pool1d)


class LpPool2d(_LpPoolNd):
    dims, _fn = 2, staticmethod(F.lp_pool2d)


class LpPool3d(_LpPoolNd):
    dims, _fn = 3, staticmethod(F.lp_pool3d)


def _l2(base):
    class L2(base):
        __doc__ = f"{base.__name__} with p = 2 (``mean=True``: RMS pooling)."

        def __init__(self, kernel_size: _Size, stride: Optional[_Size] = None, ceil_mode: bool = False, *,
                     padding: Union[_Size, str] = 0, dilation: _Size = 1, mean: bool = False):
            super().__init__(2.0, kernel_size, stride, ceil_mode, padding=padding, dilation=dilation, mean=mean)

    L2.__name__ = L2.__qualname__ = base.__name__.replace("Lp", "L2")
    return L2


L2Pool1d, L2Pool2d, L2Pool3d = _l2(LpPool1d), _l2(LpPool2d), _l2(LpPool3d)


class LpPoolReduce(nn.Module):
    """Lp pooling over whole axes ``dim`` (e.g. ``dim=1, keepdim=True``: across channels)."""

    def __init__(self, norm_type: float = 2.0, dim=None, keepdim: bool = False, mean: bool = False):
        super().__init__()
        owner = type(self).__name__
        self.norm_type = F._check_p(owner, norm_type)
        self.dim, self.keepdim = check_dim(owner, "dim", dim), check_bool(owner, "keepdim", keepdim)
        self.mean = check_bool(owner, "mean", mean)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.lp_pool_reduce(x, self.norm_type, self.dim, self.keepdim, self.mean)

    def extra_repr(self) -> str:
        return f"norm_type={self.norm_type}, dim={self.dim}, keepdim={self.keepdim}, mean={self.mean}"
