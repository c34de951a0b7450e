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

_Size = Union[int, Sequence[int]]


class _SoftPoolNd(nn.Module):
    _fn = None

    def __init__(self, kernel_size: _Size, stride: Optional[_Size] = None, padding: Union[_Size, str] = 0,
                 dilation: _Size = 1, ceil_mode: bool = False, beta: float = 1.0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.ceil_mode, self.beta = dilation, ceil_mode, float(beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return type(self)._fn(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode, self.beta)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}, beta={self.beta}")


class SoftPool1d(_SoftPoolNd):
    _fn = staticmethod(F.soft_pool1d)


class SoftPool2d(_SoftPoolNd):
    _fn = staticmethod(F.soft_pool2d)


class SoftPool3d(_SoftPoolNd):
    _fn = staticmethod(F.soft_pool3d)


class SoftPoolReduce(nn.Module):
    """SoftPool over whole axes (global pooling with ``dim=(2, 3)``, or across channels)."""

    def __init__(self, dim=None, keepdim: bool = False, beta: float = 1.0):
        super().__init__()
        self.dim, self.keepdim, self.beta = dim, keepdim, float(beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.soft_pool_reduce(x, self.dim, self.keepdim, self.beta)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, keepdim={self.keepdim}, beta={self.beta}"
