"""Upsampling as in the seeds' pooling collections: Keras ``UpSampling2D`` (seed 004; it
repeats rows and columns) and seed 002's ``nearest_upsample`` / ``bilinear_upsample``. A
thin layer over ``torch.nn.functional.interpolate``, exported as ONNX Resize.

"nearest" is the seeds' exactly (output index i reads input index floor(i / s)).
"bilinear" uses half-pixel centres (torch's ``align_corners=False``, Keras's
``UpSampling2D(interpolation="bilinear")``). Seed 002's bilinear maps i to i / s instead,
and its weights vanish on the last row and column (h1 == h2 there), so its border is 0:
not reproduced.
"""
from __future__ import annotations

import numbers
from typing import Sequence, Union

import torch
from torch import nn

from .. import functional as F


class Upsample(nn.Module):
    def __init__(self, scale_factor: Union[float, Sequence[float]] = 2, mode: str = "nearest"):
        super().__init__()
        owner = type(self).__name__
        factors = scale_factor if isinstance(scale_factor, (tuple, list)) else (scale_factor,)
        if len(factors) == 0 or any(isinstance(f, bool) or not isinstance(f, numbers.Real) for f in factors):
            raise TypeError(f"{owner}: scale_factor must be a positive number or a sequence of them, "
                            f"got {scale_factor!r}")
        if not all(f > 0 for f in factors):
            raise ValueError(f"{owner}: scale_factor must be positive, got {scale_factor!r}")
        if not isinstance(mode, str) or mode not in F.UPSAMPLE_MODES:
            raise ValueError(f"{owner}: mode must be one of {F.UPSAMPLE_MODES}, got {mode!r}")
        self.scale_factor = tuple(float(f) for f in scale_factor) if isinstance(scale_factor, (tuple, list)) \
            else float(scale_factor)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.upsample(x, self.scale_factor, self.mode)

    def extra_repr(self) -> str:
        return f"scale_factor={self.scale_factor}, mode={self.mode!r}"
