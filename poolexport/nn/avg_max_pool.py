"""Average and max pooling with ONNX windowing (``poolexport._window``): any padding
(including ONNX begin/end pads, 'same', 'valid'), dilation for average pooling too,
padding never counted. The windowed forms ``create_pool("avg"/"max", "window")`` builds."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from . import functional as F

_Size = Union[int, Sequence[int]]


class _PoolNd(nn.Module):
    _fn = None

    def __init__(self, kernel_size: _Size, stride: Optional[_Size] = None, padding: Union[_Size, str] = 0,
                 dilation: _Size = 1, ceil_mode: bool = False):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.ceil_mode = dilation, ceil_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return type(self)._fn(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class AvgPool1d(_PoolNd):
    _fn = staticmethod(F.avg_pool1d)


class AvgPool2d(_PoolNd):
    _fn = staticmethod(F.avg_pool2d)


class AvgPool3d(_PoolNd):
    _fn = staticmethod(F.avg_pool3d)


class MaxPool1d(_PoolNd):
    _fn = staticmethod(F.max_pool1d)


class MaxPool2d(_PoolNd):
    _fn = staticmethod(F.max_pool2d)


class MaxPool3d(_PoolNd):
    _fn = staticmethod(F.max_pool3d)
