"""SoftPool modules (Stergiou, Poppe, Kalliatakis, ICCV 2021).

"Refining activation downsampling with SoftPool": each window's output is the
softmax(beta * a)-weighted sum of its activations, computed stably (window max
subtracted first). ``beta`` is an inverse temperature: 0 gives average pooling, large
values approach max pooling.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from .. import functional as F
from .._args import check_bool, check_dim, check_real
from ._window_pool import WindowPoolNd

_Size = Union[int, Sequence[int]]


class _SoftPoolNd(WindowPoolNd):
    _extra_args = ("beta",)

    def __init__(self, kernel_size: _Size, stride: Optional[_Size] = None, padding: Union[_Size, str] = 0,
                 dilation: _Size = 1, ceil_mode: bool = False, beta: float = 1.0):
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode)
        self.beta = check_real(type(self).__name__, "beta", beta)

    def _extra_kwargs(self) -> dict:
        return {"beta": self.beta}


class SoftPool1d(_SoftPoolNd):
    dims, _fn = 1, staticmethod(F.soft_pool1d)


class SoftPool2d(_SoftPoolNd):
    dims, _fn = 2, staticmethod(F.soft_pool2d)


class SoftPool3d(_SoftPoolNd):
    dims, _fn = 3, staticmethod(F.soft_pool3d)


class SoftPoolReduce(nn.Module):
    """SoftPool over whole axes (global pooling with ``dim=(2, 3)``, or across channels)."""

    def __init__(self, dim=None, keepdim: bool = False, beta: float = 1.0):
        super().__init__()
        owner = type(self).__name__
        self.dim, self.keepdim = check_dim(owner, "dim", dim), check_bool(owner, "keepdim", keepdim)
        self.beta = check_real(owner, "beta", beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.soft_pool_reduce(x, self.dim, self.keepdim, self.beta)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, keepdim={self.keepdim}, beta={self.beta}"
