"""Max-unpooling: the partial inverse of max pooling (indices from ``return_indices=True`` of
torch's or ``poolexport.nn``'s max pools, which agree),
a thin layer over torch's max_unpool with ONNX MaxUnpool's semantics (tested against
ONNX Runtime's MaxUnpool). torch's indices count within each (n, c) plane, ONNX's over the
whole tensor; ``torch.onnx.export(dynamo=True)`` writes the layer as ScatterND, which
needs no index conversion."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as TF
from torch import nn

from .._window import _check_ints

_Size = Union[int, Sequence[int]]


class _MaxUnpoolNd(nn.Module):
    _fn = None

    def __init__(self, kernel_size: _Size, stride: Optional[_Size] = None, padding: _Size = 0):
        super().__init__()
        owner = type(self).__name__
        _check_ints(owner, "kernel_size", kernel_size)
        if stride is not None:
            _check_ints(owner, "stride", stride)
        _check_ints(owner, "padding", padding)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: torch.Tensor, indices: torch.Tensor, output_size: Optional[Sequence[int]] = None):
        if indices.shape != x.shape:
            raise ValueError(f"{type(self).__name__}: indices must have the input's shape {tuple(x.shape)}, "
                             f"got {tuple(indices.shape)}")
        return type(self)._fn(x, indices, self.kernel_size, self.stride, self.padding, output_size)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxUnpool1d(_MaxUnpoolNd):
    _fn = staticmethod(TF.max_unpool1d)


class MaxUnpool2d(_MaxUnpoolNd):
    _fn = staticmethod(TF.max_unpool2d)


class MaxUnpool3d(_MaxUnpoolNd):
    _fn = staticmethod(TF.max_unpool3d)
