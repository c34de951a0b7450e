"""Average, max, avgmax and catavgmax pooling over whole axes: the reduction forms CBAM's
spatial branch uses across channels (``dim=1, keepdim=True``). ONNX ReduceMean / ReduceMax."""
from __future__ import annotations

import torch
from torch import nn

from .. import functional as F
from .._args import check_bool, check_dim


class AvgPoolReduce(nn.Module):
    _fn = staticmethod(F.avg_pool_reduce)

    def __init__(self, dim=None, keepdim: bool = False):
        super().__init__()
        owner = type(self).__name__
        self.dim, self.keepdim = check_dim(owner, "dim", dim), check_bool(owner, "keepdim", keepdim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return type(self)._fn(x, self.dim, self.keepdim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, keepdim={self.keepdim}"


class MaxPoolReduce(AvgPoolReduce):
    _fn = staticmethod(F.max_pool_reduce)


class AvgMaxPoolReduce(AvgPoolReduce):
    """0.5 * (mean + max) over ``dim``."""

    _fn = staticmethod(F.avg_max_pool_reduce)


class CatAvgMaxPoolReduce(AvgPoolReduce):
    """concat(mean, max) over ``dim`` on the channel axis (across channels: N x 2 x D1..)."""

    _fn = staticmethod(F.cat_avg_max_pool_reduce)
