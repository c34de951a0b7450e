"""LSE (log-sum-exp) pooling: y = (1/r) log(mean exp(r x)) per window or plane.

Pinheiro, Collobert, "From Image-level to Pixel-level Labeling with Convolutional
Networks", CVPR 2015. A smooth pool between average (r -> 0) and max (r -> inf); r is
learned by default (one value, or one per channel with ``channels=C``). The global form is
timm's ``LsePlus2d`` (huggingface/pytorch-image-models, timm/layers/other_pool.py: r = 10,
learnable), computed with the same max shift; here also windowed, across channels, and
stable for a learned r that reaches 0 (the mean) or turns negative (a soft min). The export
is standard ONNX (see ``poolexport._gem_lse``).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from .. import functional as F
from .._args import check_bool, check_dim
from ._window_pool import WindowPoolNd
from .gem_pool import exponent_repr, init_exponent

_Size = Union[int, Sequence[int]]


class _LsePoolNd(WindowPoolNd):
    def __init__(self, kernel_size: _Size, stride: Optional[_Size] = None, padding: Union[_Size, str] = 0,
                 dilation: _Size = 1, ceil_mode: bool = False, r: float = 10.0, learn_r: bool = True,
                 channels: Optional[int] = None):
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode)
        init_exponent(self, "r", r, learn_r, channels)

    def _extra_kwargs(self) -> dict:
        return {"r": self.r}

    def extra_repr(self) -> str:
        return super().extra_repr() + f", r={exponent_repr(self.r)}"


class LsePool1d(_LsePoolNd):
    dims, _fn = 1, staticmethod(F.lse_pool1d)


class LsePool2d(_LsePoolNd):
    dims, _fn = 2, staticmethod(F.lse_pool2d)


class LsePool3d(_LsePoolNd):
    dims, _fn = 3, staticmethod(F.lse_pool3d)


class LsePoolReduce(nn.Module):
    """LSE pooling over whole axes ``dim`` (e.g. ``dim=1, keepdim=True``: across channels); r shared."""

    def __init__(self, dim=None, keepdim: bool = False, r: float = 10.0, learn_r: bool = True):
        super().__init__()
        owner = type(self).__name__
        self.dim, self.keepdim = check_dim(owner, "dim", dim), check_bool(owner, "keepdim", keepdim)
        init_exponent(self, "r", r, learn_r, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.lse_pool_reduce(x, self.r, self.dim, self.keepdim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, keepdim={self.keepdim}, r={exponent_repr(self.r)}"


class GlobalLsePool(nn.Module):
    """LSE pooling over every spatial axis of N x C x D1..: N x C x 1.. (``flatten=True``: N x C,
    timm's LsePlus2d default)."""

    def __init__(self, r: float = 10.0, learn_r: bool = True, channels: Optional[int] = None, flatten: bool = False):
        super().__init__()
        init_exponent(self, "r", r, learn_r, channels)
        self.flatten = check_bool(type(self).__name__, "flatten", flatten)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3:
            raise ValueError(f"{type(self).__name__}: input must be N x C x D1.. (rank >= 3), got shape "
                             f"{tuple(x.shape)}")
        return F.lse_pool_reduce(x, self.r, list(range(2, x.dim())), not self.flatten)

    def extra_repr(self) -> str:
        return f"r={exponent_repr(self.r)}, flatten={self.flatten}"
