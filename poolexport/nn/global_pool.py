"""Global pools: reduce every spatial axis of N x C x D1..Dk to N x C x 1..1 (or N x C with
``flatten=True``). One class per pool of the family; 1-D, 2-D and 3-D inputs alike.

ONNX forms: GlobalAveragePool / GlobalMaxPool (ReduceMean / ReduceMax), ReduceL2 (L2),
the ``poolexport`` custom ops ReduceSoftPool / ReduceStochasticPool, standard ops for
mixed pooling, avgmax (0.5 * (avg + max)) and catavgmax (concat(avg, max): N x 2C).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import functional as F
from .._args import check_bool, check_real, check_seed
from ..functional import reduce_soft_pool, reduce_stochastic_pool
from .mixed_pool import _Alpha
from .stochastic_pool import _draw_seed


def _spatial(x: torch.Tensor, name: str) -> list[int]:
    if x.dim() < 3:
        raise ValueError(f"{name}: input must be N x C x D1.. (rank >= 3), got shape {tuple(x.shape)}")
    return list(range(2, x.dim()))


class _GlobalPool(nn.Module):
    def __init__(self, flatten: bool = False):
        super().__init__()
        self.flatten = check_bool(type(self).__name__, "flatten", flatten)

    def _reduce(self, x: torch.Tensor, dims: list[int], keepdim: bool) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._reduce(x, _spatial(x, type(self).__name__), not self.flatten)

    def extra_repr(self) -> str:
        return f"flatten={self.flatten}"


class GlobalAvgPool(_GlobalPool):
    def _reduce(self, x, dims, keepdim):
        return x.mean(dims, keepdim=keepdim)


class GlobalMaxPool(_GlobalPool):
    def _reduce(self, x, dims, keepdim):
        return x.amax(dims, keepdim=keepdim)


class GlobalAvgMaxPool(_GlobalPool):
    """0.5 * (global average + global max): timm's avgmax (seed 002's AvgMaxPool is twice it)."""

    def _reduce(self, x, dims, keepdim):
        return F.avg_max_pool_reduce(x, dims, keepdim)


class GlobalCatAvgMaxPool(_GlobalPool):
    """concat(global average, global max) on the channel axis: N x 2C (timm's catavgmax)."""

    def _reduce(self, x, dims, keepdim):
        return F.cat_avg_max_pool_reduce(x, dims, keepdim)


class GlobalLpPool(_GlobalPool):
    """(sum |a|^p)^(1/p) over the spatial axes (ONNX GlobalLpPool); ``mean=True`` divides
    by count^(1/p) (RMS for p = 2)."""

    def __init__(self, norm_type: float = 2.0, mean: bool = False, flatten: bool = False):
        super().__init__(flatten)
        self.norm_type = F._check_p(type(self).__name__, norm_type)
        self.mean = check_bool(type(self).__name__, "mean", mean)

    def _reduce(self, x, dims, keepdim):
        return F.lp_pool_reduce(x, self.norm_type, dims, keepdim, self.mean)

    def extra_repr(self) -> str:
        return f"norm_type={self.norm_type}, mean={self.mean}, flatten={self.flatten}"


class GlobalL2Pool(GlobalLpPool):
    def __init__(self, mean: bool = False, flatten: bool = False):
        super().__init__(2.0, mean, flatten)


class GlobalSoftPool(_GlobalPool):
    """SoftPool over the spatial axes (poolexport ReduceSoftPool)."""

    def __init__(self, beta: float = 1.0, flatten: bool = False):
        super().__init__(flatten)
        self.beta = check_real(type(self).__name__, "beta", beta)

    def _reduce(self, x, dims, keepdim):
        return reduce_soft_pool(x, dims, keepdim, self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, flatten={self.flatten}"


class GlobalStochasticPool(_GlobalPool):
    """Stochastic pooling over the spatial axes: a Philox sample in training, the
    probabilistic weighting sum(a^2)/sum(a) in eval (poolexport ReduceStochasticPool)."""

    def __init__(self, seed: Optional[int] = None, flatten: bool = False):
        super().__init__(flatten)
        self.seed = check_seed(type(self).__name__, "seed", seed)

    def _reduce(self, x, dims, keepdim):
        if self.training:
            return reduce_stochastic_pool(x, dims, keepdim, "sample", _draw_seed(self.seed, x))
        return reduce_stochastic_pool(x, dims, keepdim, "expectation", 0)

    def extra_repr(self) -> str:
        return f"seed={self.seed}, flatten={self.flatten}"


class GlobalMixedPool(_Alpha, _GlobalPool):
    """alpha * global max + (1 - alpha) * global average; alpha fixed or learned."""

    def __init__(self, alpha: float = 0.5, learn_alpha: bool = False, flatten: bool = False):
        _GlobalPool.__init__(self, flatten)
        self._init_alpha(alpha, learn_alpha)

    def _reduce(self, x, dims, keepdim):
        return F.mixed_pool_reduce(x, dims, keepdim, self.alpha)

    def extra_repr(self) -> str:
        return f"learn_alpha={self.learn_alpha}, flatten={self.flatten}"
