"""Weighted average pooling: a learned weight per channel multiplies the input before
averaging, y[n, c] = avg(w[c] * x[n, c]). The channel count is a constructor argument
(never inferred from the first input), so the parameter exists before any forward."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from .. import functional as F
from .._args import check_bool
from ._window_pool import WindowPoolNd

_Size = Union[int, Sequence[int]]


class _ChannelWeight(nn.Module):
    def _init_weight(self, channels: int) -> None:
        if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
            raise ValueError(f"{type(self).__name__}: channels must be a positive int, got {channels!r}")
        self.channels = channels
        self.weight = nn.Parameter(torch.ones(channels))

    def _weighted(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3 or x.shape[1] != self.channels:
            raise ValueError(f"{type(self).__name__}: input must be N x {self.channels} x D1.., "
                             f"got shape {tuple(x.shape)}")
        return x * self.weight.reshape(1, -1, *([1] * (x.dim() - 2)))


class _WeightedAvgPoolNd(_ChannelWeight, WindowPoolNd):
    def __init__(self, channels: int, kernel_size: _Size, stride: Optional[_Size] = None,
                 padding: Union[_Size, str] = 0, dilation: _Size = 1, ceil_mode: bool = False):
        WindowPoolNd.__init__(self, kernel_size, stride, padding, dilation, ceil_mode)
        self._init_weight(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self._weighted(x))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, " + super().extra_repr()


class WeightedAvgPool1d(_WeightedAvgPoolNd):
    dims, _fn = 1, staticmethod(F.avg_pool1d)


class WeightedAvgPool2d(_WeightedAvgPoolNd):
    dims, _fn = 2, staticmethod(F.avg_pool2d)


class WeightedAvgPool3d(_WeightedAvgPoolNd):
    dims, _fn = 3, staticmethod(F.avg_pool3d)


class GlobalWeightedAvgPool(_ChannelWeight):
    def __init__(self, channels: int, flatten: bool = False):
        super().__init__()
        self._init_weight(channels)
        self.flatten = check_bool(type(self).__name__, "flatten", flatten)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._weighted(x).mean(list(range(2, x.dim())), keepdim=not self.flatten)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, flatten={self.flatten}"
