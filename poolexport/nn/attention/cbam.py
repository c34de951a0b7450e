"""Convolutional Block Attention Module (Woo, Park, Lee, Kweon, ECCV 2018, "CBAM").

Channel attention: one shared MLP (C -> hidden -> C) applied to each global descriptor
(``channel_pools``, default avg and max), outputs summed, sigmoid, scale. Spatial
attention: pool across the channel axis with each of ``spatial_pools`` (default max and
mean, the original order), concatenate the maps, a k x k convolution to one map, sigmoid,
scale (the paper's form: the conv has a bias and no BatchNorm, which the authors' code
adds). CBAM applies them in sequence (channel, then spatial). Every pool is a name of
``poolexport.nn.POOL_NAMES`` or a module, built by ``create_pool``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from ..factory import CONCAT_POOLS, create_pool
from ._util import check_channels, create_act, descriptor, hidden_width, one_map_per_channel, per_channel

_PoolArg = Union[str, nn.Module]
_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def _pools(pools, form: str, owner: str, argname: str, pool_kwargs: Optional[dict]) -> nn.ModuleList:
    if isinstance(pools, (str, nn.Module)):
        pools = (pools,)
    if len(pools) == 0:
        raise ValueError(f"{owner}: {argname} must name at least one pool")
    opts = dict(pool_kwargs or {})
    if form == "global":
        opts["flatten"] = True
        for i, p in enumerate(pools):
            one_map_per_channel(p, owner, f"{argname}[{i}]")
    return nn.ModuleList(create_pool(p, form, argname=f"{owner}: {argname}[{i}]", **opts) for i, p in enumerate(pools))


class ChannelAttention(nn.Module):
    """x * sigmoid(sum over descriptors d of MLP(d)), with one MLP shared by all descriptors."""

    def __init__(self, channels: int, reduction: float = 16, pools: Sequence[_PoolArg] = ("avg", "max"),
                 act: Union[str, nn.Module] = "relu", min_channels: int = 1, pool_kwargs: Optional[dict] = None,
                 owner: str = "ChannelAttention", argname: str = "pools"):
        super().__init__()
        check_channels(channels, owner)
        hidden = hidden_width(channels, reduction, min_channels, owner)
        self.pools = _pools(pools, "global", owner, argname, pool_kwargs)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), create_act(act, owner), nn.Linear(hidden, channels))

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        logits = None
        for pool in self.pools:
            z = self.mlp(descriptor(pool, x))
            logits = z if logits is None else logits + z
        return torch.sigmoid(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * per_channel(self.gate(x), x)


class SpatialAttention(nn.Module):
    """x * sigmoid(conv(concat of the maps pooled across channels))."""

    def __init__(self, pools: Sequence[_PoolArg] = ("max", "avg"), kernel_size: int = 7, dims: int = 2,
                 pool_kwargs: Optional[dict] = None, owner: str = "SpatialAttention", argname: str = "pools"):
        super().__init__()
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"{owner}: kernel_size must be a positive odd int, got {kernel_size!r}")
        if dims not in _CONVS:
            raise ValueError(f"{owner}: dims must be 1, 2 or 3, got {dims!r}")
        self.pools = _pools(pools, "channel", owner, argname, pool_kwargs)
        pools = (pools,) if isinstance(pools, (str, nn.Module)) else pools
        maps = sum(2 if isinstance(p, str) and p.lower() in CONCAT_POOLS else 1 for p in pools)
        self.conv = _CONVS[dims](maps, 1, kernel_size, padding=kernel_size // 2)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        maps = torch.cat([pool(x) for pool in self.pools], dim=1)
        return torch.sigmoid(self.conv(maps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class CBAM(nn.Module):
    def __init__(self, channels: int, reduction: float = 16, channel_pools: Sequence[_PoolArg] = ("avg", "max"),
                 spatial_pools: Sequence[_PoolArg] = ("max", "avg"), kernel_size: int = 7,
                 act: Union[str, nn.Module] = "relu", min_channels: int = 1, dims: int = 2,
                 pool_kwargs: Optional[dict] = None):
        super().__init__()
        self.channel = ChannelAttention(channels, reduction, channel_pools, act, min_channels, pool_kwargs,
                                        owner="CBAM", argname="channel_pools")
        self.spatial = SpatialAttention(spatial_pools, kernel_size, dims, pool_kwargs,
                                        owner="CBAM", argname="spatial_pools")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))
