"""Local response normalisation (Krizhevsky, Sutskever, Hinton, NIPS 2012) with ONNX LRN
semantics: y = x / (bias + alpha / size * square_sum) ** beta over ``size`` neighbouring
channels [c - floor((size-1)/2), c + ceil((size-1)/2)]. torch.nn.LocalResponseNorm uses
the mirrored window, which differs for even ``size``."""
from __future__ import annotations

import torch
from torch import nn

from .. import functional as F


class LocalResponseNorm(nn.Module):
    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, bias: float = 1.0):
        super().__init__()
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"LocalResponseNorm: size must be a positive int, got {size!r}")
        self.size, self.alpha, self.beta, self.bias = size, float(alpha), float(beta), float(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.local_response_norm(x, self.size, self.alpha, self.beta, self.bias)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, bias={self.bias}"
