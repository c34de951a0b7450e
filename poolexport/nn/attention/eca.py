"""Efficient Channel Attention (Wang, Wu, Zhu, Li, Zuo, Hu, CVPR 2020, "ECA-Net").

A global pool to N x C, a 1-D convolution across channels (no bias, no dimensionality
reduction) with the adaptive kernel size k = t if t is odd else t + 1, where
t = int(|(log2(C) + b) / gamma|), then sigmoid and per-channel scaling.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import nn

from ..factory import create_pool
from ._util import check_channels, descriptor, one_map_per_channel, per_channel


def eca_kernel_size(channels: int, gamma: float = 2, b: float = 1) -> int:
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


class ECA(nn.Module):
    def __init__(self, channels: int, pool: Union[str, nn.Module] = "avg", gamma: float = 2, b: float = 1,
                 kernel_size: Optional[int] = None, pool_kwargs: Optional[dict] = None):
        super().__init__()
        check_channels(channels, "ECA")
        if gamma == 0:
            raise ValueError("ECA: gamma must be non-zero")
        k = kernel_size if kernel_size is not None else eca_kernel_size(channels, gamma, b)
        if not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise ValueError(f"ECA: kernel_size must be a positive odd int, got {k!r}")
        self.kernel_size = k
        self.pool = create_pool(one_map_per_channel(pool, "ECA", "pool"), "global", flatten=True, argname="ECA: pool",
                                **(pool_kwargs or {}))
        self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = descriptor(self.pool, x).unsqueeze(1)  # N x 1 x C: channels become the conv's axis
        s = torch.sigmoid(self.conv(y)).squeeze(1)
        return x * per_channel(s, x)
