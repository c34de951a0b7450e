"""Bilinear pooling (Lin, RoyChowdhury, Maji, ICCV 2015, "Bilinear CNN models for
fine-grained visual recognition"): the outer product of two feature maps at each location,
averaged over locations, signed square root, L2 normalisation. Output N x (C1 * C2)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import functional as F


class BilinearPool(nn.Module):
    def __init__(self, signed_sqrt: bool = True, normalize: bool = True, eps: float = 1e-12):
        super().__init__()
        self.signed_sqrt, self.normalize, self.eps = bool(signed_sqrt), bool(normalize), float(eps)

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        return F.bilinear_pool(x, y, self.signed_sqrt, self.normalize, self.eps)

    def extra_repr(self) -> str:
        return f"signed_sqrt={self.signed_sqrt}, normalize={self.normalize}"
