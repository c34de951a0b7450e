"""Mixed max-average pooling: alpha * max + (1 - alpha) * avg.

Lee, Gallagher, Tu, AISTATS 2016 ("Generalizing pooling functions in convolutional neural
networks: mixed, gated, and tree"). ``alpha`` is fixed, or learned (``learn_alpha=True``)
as one scalar per layer kept in [0, 1] through a sigmoid of a free parameter. Average
excludes padding; windowing is ONNX's (see ``poolexport._window``).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import nn

from .. import functional as F
from .._args import check_bool, check_dim, check_real
from ._window_pool import WindowPoolNd

_Size = Union[int, Sequence[int]]


class _Alpha(nn.Module):
    def _init_alpha(self, alpha: float, learn_alpha: bool) -> None:
        alpha = check_real(type(self).__name__, "alpha", alpha, 0.0, 1.0)
        self.learn_alpha = check_bool(type(self).__name__, "learn_alpha", learn_alpha)
        if self.learn_alpha:
            a = min(max(alpha, 1e-6), 1 - 1e-6)  # the logit of 0 or 1 is infinite
            self.alpha_logit = nn.Parameter(torch.tensor(math.log(a / (1 - a))))
        else:
            self._alpha = alpha

    @property
    def alpha(self) -> Union[float, torch.Tensor]:
        return torch.sigmoid(self.alpha_logit) if self.learn_alpha else self._alpha


class _MixedPoolNd(_Alpha, WindowPoolNd):
    _extra_args = ("learn_alpha",)

    def __init__(self, kernel_size: _Size, stride: Optional[_Size] = None, padding: Union[_Size, str] = 0,
                 dilation: _Size = 1, ceil_mode: bool = False, alpha: float = 0.5, learn_alpha: bool = False):
        WindowPoolNd.__init__(self, kernel_size, stride, padding, dilation, ceil_mode)
        self._init_alpha(alpha, learn_alpha)

    def _extra_kwargs(self) -> dict:
        return {"alpha": self.alpha}


class MixedPool1d(_MixedPoolNd):
    dims, _fn = 1, staticmethod(F.mixed_pool1d)


class MixedPool2d(_MixedPoolNd):
    dims, _fn = 2, staticmethod(F.mixed_pool2d)


class MixedPool3d(_MixedPoolNd):
    dims, _fn = 3, staticmethod(F.mixed_pool3d)


class MixedPoolReduce(_Alpha):
    """Mixed pooling over whole axes ``dim`` (global, or across channels in CBAM)."""

    def __init__(self, dim=None, keepdim: bool = False, alpha: float = 0.5, learn_alpha: bool = False):
        super().__init__()
        owner = type(self).__name__
        self.dim, self.keepdim = check_dim(owner, "dim", dim), check_bool(owner, "keepdim", keepdim)
        self._init_alpha(alpha, learn_alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.mixed_pool_reduce(x, self.dim, self.keepdim, self.alpha)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, keepdim={self.keepdim}, learn_alpha={self.learn_alpha}"
