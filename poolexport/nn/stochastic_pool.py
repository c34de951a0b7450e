"""Stochastic pooling modules (Zeiler and Fergus, ICLR 2013).

"Stochastic Pooling for Regularization of Deep Convolutional Neural Networks": in
training each window outputs one activation drawn with probability p_i = a_i / sum(a)
(activations assumed non-negative; negatives count as 0); in evaluation it outputs the
probabilistic weighting sum(p_i a_i). Picks come from a counter-based generator
(``poolexport._philox``) keyed by the seed and the output element, so they are
reproducible on every backend.

``seed=None`` draws a fresh seed from torch's global generator at every training
forward (reproducible under ``torch.manual_seed``); an int fixes it. Under torch.compile
the fresh seed is drawn inside the graph, as a tensor: one graph serves every step, and
given the same generator state it draws the seed eager draws.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from .. import functional as F
from .._args import check_bool, check_dim, check_seed
from ..ops.stochastic_pool import draw_seed, fresh_seed
from ._window_pool import WindowPoolNd

_Size = Union[int, Sequence[int]]


def _draw_seed(seed: Optional[int], x: torch.Tensor) -> Union[int, torch.Tensor]:
    """The seed of a training forward on x: a fixed one, or a fresh one from torch's global
    generator (reproducible under torch.manual_seed).

    Inside torch.compile the fresh seed stays a tensor drawn by an op of the graph: as a
    Python int it would break the graph at ``.item()`` and come back as a constant that
    the next graph specialises on, one compilation per step. torch.export and tracing
    keep the int (the exported op's seed is an integer attribute)."""
    if seed is not None:
        return int(seed)
    if torch.compiler.is_compiling() and not torch.compiler.is_exporting():
        return draw_seed(x)
    return int(fresh_seed())


class _StochasticPoolNd(WindowPoolNd):
    _extra_args = ("seed",)

    def __init__(self, kernel_size: _Size, stride: Optional[_Size] = None, padding: Union[_Size, str] = 0,
                 dilation: _Size = 1, ceil_mode: bool = False, seed: Optional[int] = None):
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode)
        self.seed = check_seed(type(self).__name__, "seed", seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return type(self)._fn(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                                  mode="sample", seed=_draw_seed(self.seed, x))
        return type(self)._fn(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                              mode="expectation")


class StochasticPool1d(_StochasticPoolNd):
    dims, _fn = 1, staticmethod(F.stochastic_pool1d)


class StochasticPool2d(_StochasticPoolNd):
    dims, _fn = 2, staticmethod(F.stochastic_pool2d)


class StochasticPool3d(_StochasticPoolNd):
    dims, _fn = 3, staticmethod(F.stochastic_pool3d)


class StochasticPoolReduce(nn.Module):
    """Stochastic pooling over whole axes (global, or across channels in CBAM)."""

    def __init__(self, dim=None, keepdim: bool = False, seed: Optional[int] = None):
        super().__init__()
        owner = type(self).__name__
        self.dim, self.keepdim = check_dim(owner, "dim", dim), check_bool(owner, "keepdim", keepdim)
        self.seed = check_seed(owner, "seed", seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return F.stochastic_pool_reduce(x, self.dim, self.keepdim, "sample", _draw_seed(self.seed, x))
        return F.stochastic_pool_reduce(x, self.dim, self.keepdim, "expectation")

    def extra_repr(self) -> str:
        return f"dim={self.dim}, keepdim={self.keepdim}, seed={self.seed}"
