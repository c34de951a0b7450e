"""Average and max pooling over whole axes: the reduction forms CBAM's spatial branch
uses across channels (``dim=1, keepdim=True``). ONNX ReduceMean / ReduceMax."""
from __future__ import annotations

import torch
from torch import nn

from . import functional as F


class AvgPoolReduce(nn.Module):
    def __init__(self, dim=None, keepdim: bool = False):
        super().__init__()
        self.dim, self.keepdim = dim, keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool_reduce(x, self.dim, self.keepdim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, keepdim={self.keepdim}"


class MaxPoolReduce(AvgPoolReduce):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool_reduce(x, self.dim, self.keepdim)
