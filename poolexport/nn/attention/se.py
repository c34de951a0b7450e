"""Squeeze-and-Excitation (Hu, Shen, Sun, CVPR 2018, "Squeeze-and-excitation networks").

squeeze: a global pool to N x C; excitation: FC C -> hidden, activation, FC hidden -> C,
sigmoid; scale: multiply the input per channel. EfficientNet (Tan and Le, ICML 2019) uses
``act="swish"`` and reduction 4 (of the block's input width). The pool is a choice:
``pool="l2"``, ``"soft"``, ... or any module producing N x C (x 1..).
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from ..factory import create_pool
from ._util import check_channels, create_act, descriptor, hidden_width, one_map_per_channel, per_channel


class SE(nn.Module):
    def __init__(self, channels: int, reduction: float = 16, pool: Union[str, nn.Module] = "avg",
                 act: Union[str, nn.Module] = "relu", min_channels: int = 1,
                 hidden_channels: Optional[int] = None, gate: Union[str, nn.Module] = "sigmoid",
                 pool_kwargs: Optional[dict] = None):
        super().__init__()
        check_channels(channels, "SE")
        hidden = hidden_channels or hidden_width(channels, reduction, min_channels, "SE")
        self.pool = create_pool(one_map_per_channel(pool, "SE", "pool"), "global", flatten=True, argname="SE: pool",
                                **(pool_kwargs or {}))
        self.fc1 = nn.Linear(channels, hidden)
        self.act = create_act(act, "SE")
        self.fc2 = nn.Linear(hidden, channels)
        self.gate = create_act(gate, "SE", "gate")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.fc2(self.act(self.fc1(descriptor(self.pool, x)))))
        return x * per_channel(s, x)
