"""Helpers shared by the attention blocks: activation lookup, hidden width, gating."""
from __future__ import annotations

from typing import Union

import torch
from torch import nn

_ACTS = {"relu": nn.ReLU, "swish": nn.SiLU, "silu": nn.SiLU, "gelu": nn.GELU, "hardswish": nn.Hardswish,
         "sigmoid": nn.Sigmoid, "hardsigmoid": nn.Hardsigmoid}


def create_act(act: Union[str, nn.Module, type], owner: str, argname: str = "act") -> nn.Module:
    if isinstance(act, nn.Module):
        return act
    if isinstance(act, type) and issubclass(act, nn.Module):
        return act()
    if isinstance(act, str) and act.lower() in _ACTS:
        return _ACTS[act.lower()]()
    raise ValueError(f"{owner}: {argname} must be one of {tuple(_ACTS)} or an nn.Module, got {act!r}")


def check_channels(channels, owner: str) -> int:
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise ValueError(f"{owner}: channels must be a positive int, got {channels!r}")
    return channels


def hidden_width(channels: int, reduction: float, min_channels: int, owner: str) -> int:
    """channels // reduction, never below ``min_channels`` (>= 1): small C never gives a
    zero-width bottleneck."""
    if not reduction > 0:
        raise ValueError(f"{owner}: reduction must be positive, got {reduction!r}")
    if not isinstance(min_channels, int) or min_channels < 1:
        raise ValueError(f"{owner}: min_channels must be an int >= 1, got {min_channels!r}")
    return max(min_channels, int(channels // reduction))


def one_map_per_channel(pool, owner: str, argname: str):
    """Reject a pool whose global form doubles the channels (catavgmax): the block's layers
    are sized for one C-wide descriptor per pool."""
    from ..factory import CONCAT_POOLS

    if isinstance(pool, str) and pool.lower() in CONCAT_POOLS:
        raise ValueError(f"{owner}: {argname} {pool!r} gives 2C channels, which this block's layers do not take; "
                         "use 'avg' and 'max' as two descriptors, or 'avgmax'")
    return pool


def descriptor(pool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run a global pool and flatten its output to N x C."""
    return pool(x).reshape(x.shape[0], -1)


def per_channel(gate: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """N x C gate -> broadcastable N x C x 1.. for an input of any rank."""
    return gate.reshape(*gate.shape, *([1] * (x.dim() - 2)))
