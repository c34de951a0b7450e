"""Global pools: reduce every spatial axis of N x C x D1..Dk to N x C x 1..1 (or N x C with
``flatten=True``). One class per pool of the family; 1-D, 2-D and 3-D inputs alike.

ONNX forms: GlobalAveragePool / GlobalMaxPool (ReduceMean / ReduceMax), ReduceL2 (L2),
the ``poolexport`` custom ops ReduceSoftPool / ReduceStochasticPool, standard ops for
mixed pooling.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..ops import reduce_soft_pool, reduce_stochastic_pool
from . import functional as F
from .mixed_pool import _Alpha


def _spatial(x: torch.Tensor, name: str) -> list[int]:
    if x.dim() < 3:
        raise ValueError(f"{name}: input must be N x C x D1.. (rank >= 3), got shape {tuple(x.shape)}")
    return list(range(2, x.dim()))


class _GlobalPool(nn.Module):
    def __init__(self, flatten: bool = False):
        super().__init__()
        self.flatten = bool(flatten)

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


class GlobalLpPool(_GlobalPool):
    """(sum |a|^p)^(1/p) over the spatial axes (ONNX GlobalLpPool); ``mean=True`` divides
    by count^(1/p) (RMS for p = 2)."""

    def __init__(self, norm_type: float = 2.0, mean: bool = False, flatten: bool = False):
        super().__init__(flatten)
        self.norm_type, self.mean = F._check_p("GlobalLpPool", norm_type), bool(mean)

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
        self.beta = float(beta)

    def _reduce(self, x, dims, keepdim):
        return reduce_soft_pool(x, dims, keepdim, self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, flatten={self.flatten}"


def draw_seed(seed: Optional[int]) -> int:
    """A fixed seed, or a fresh one from torch's global generator (reproducible under
    torch.manual_seed)."""
    if seed is not None:
        return int(seed)
    return int(torch.randint(0, 2**62, (), dtype=torch.int64))


class GlobalStochasticPool(_GlobalPool):
    """Stochastic pooling over the spatial axes: a Philox sample in training, the
    probabilistic weighting sum(a^2)/sum(a) in eval (poolexport ReduceStochasticPool)."""

    def __init__(self, seed: Optional[int] = None, flatten: bool = False):
        super().__init__(flatten)
        self.seed = seed

    def _reduce(self, x, dims, keepdim):
        if self.training:
            return reduce_stochastic_pool(x, dims, keepdim, "sample", draw_seed(self.seed))
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
