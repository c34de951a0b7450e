"""Seed 000's two networks, built block for block as the seed writes them (TensorFlow 2.5
Keras, channels-last; here N x C x H x W with every concatenation in the seed's order).

* ``NewCBAMSeed`` / "newcbam_seed": channel branch = one MLP over concat[global average,
  global max, global RMS] (3C) -> Dense(C // r, relu) -> Dense(C, sigmoid), times x;
  spatial branch = per-channel 3x3 stride-1 'same' pools [stochastic, RMS] concatenated
  (2C) -> 1x1 conv with bias -> sigmoid, times x; fusion
  out = (1 - gamma) * x + gamma * (channel_out + spatial_out), gamma a learned scalar,
  initialised to 0. The network: five 3x3 'same' convolutions with bias and no
  activation (64, 128, 256, 512, 1024 channels at ``width=1.0``), each followed by the
  block, then global average pooling; the seed's model ends there (``num_classes=None``),
  ``num_classes=k`` adds a linear head.
* ``ChannelCBAMSeed`` / "cbam_seed": channel-only: concat[global stochastic, global RMS]
  (2C) -> Dense(C // 0.5 = 2C, relu, he_normal, zero bias) -> Dense(C, he_normal, zero
  bias) -> sigmoid, times x; no spatial branch. The network: 3x3 'same' convolutions
  with ReLU (64, 64, 128, 128), each followed by the block, global average pooling,
  Dense(10) and softmax.

Where the seed is wrong this does what it means (see ``shared/seeds/README.md``):

1. Its ``rand_pool`` is a coin flip between average and max pooling (its expectation is
   mixed pooling, and its ``tf.where`` mask does not broadcast): here StochasticPool2d
   (Zeiler and Fergus 2013), 3x3 stride 1 'same' per channel; a sample in training, the
   probabilistic weighting in eval.
2. The second block's ``random_pool`` averages ``tf.random.shuffle(x)``, which permutes
   the batch axis: it is the global average of another sample, not pooling. Here global
   stochastic pooling.
3. "L2 pooling" is the RMS, sqrt(mean(x^2)), everywhere in the seed; the NewCBAM channel
   branch's ``l2_pool(x, (1, 1))`` is |x| and no descriptor at all, so the global RMS (as
   the second block writes it) is used. The spatial RMS pool averages over the valid
   positions of each window, as ``tf.nn.avg_pool(..., 'SAME')`` does.
4. Dense widths read ``x`` before it exists in ``__init__``: here they come from the
   channel count given to the constructor, and ``C // r`` is never below ``min_channels``
   (1), so small widths do not give a zero-unit layer.
5. Initialisers are torch's defaults except where the seed names one (he_normal and zero
   biases in the second block's Dense layers, as Keras draws it: truncated at two
   standard deviations).

``width`` scales the channel counts (default 1/16 for "newcbam_seed", whose paper size
is heavy without downsampling; 1.0 for "cbam_seed", which is the seed's own size).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from poolexport.nn import (GlobalAvgPool, GlobalL2Pool, GlobalMaxPool, GlobalStochasticPool, L2Pool2d,
                           StochasticPool2d)
from poolexport.nn.attention._util import check_channels, hidden_width

from .conv_attention import PAPER_CHANNELS, scaled

SEED_CBAM_CHANNELS = (64, 64, 128, 128)


def _he_normal_(linear: nn.Linear) -> None:
    # Keras he_normal: a normal truncated at 2 std, rescaled to keep variance 2 / fan_in
    std = math.sqrt(2.0 / linear.in_features) / 0.87962566103423978
    nn.init.trunc_normal_(linear.weight, std=std, a=-2 * std, b=2 * std)
    nn.init.zeros_(linear.bias)


class NewCBAMSeed(nn.Module):
    def __init__(self, channels: int, reduction: float = 16, min_channels: int = 1):
        super().__init__()
        check_channels(channels, "NewCBAMSeed")
        hidden = hidden_width(channels, reduction, min_channels, "NewCBAMSeed")
        self.gamma = nn.Parameter(torch.zeros(()))
        # channel attention: [avg, max, RMS] -> one MLP over the 3C concatenation
        self.channel_pools = nn.ModuleList([GlobalAvgPool(flatten=True), GlobalMaxPool(flatten=True),
                                            GlobalL2Pool(mean=True, flatten=True)])
        self.dense1 = nn.Linear(3 * channels, hidden)
        self.dense2 = nn.Linear(hidden, channels)
        # spatial attention: per-channel 3x3 'same' [stochastic, RMS] -> 1x1 conv over 2C
        self.spatial_pools = nn.ModuleList([StochasticPool2d(3, 1, "same"),
                                            L2Pool2d(3, 1, padding="same", mean=True)])
        self.conv = nn.Conv2d(2 * channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.cat([pool(x) for pool in self.channel_pools], 1)
        channel_out = x * torch.sigmoid(self.dense2(torch.relu(self.dense1(z))))[:, :, None, None]
        maps = torch.cat([pool(x) for pool in self.spatial_pools], 1)
        spatial_out = x * torch.sigmoid(self.conv(maps))
        return (1 - self.gamma) * x + self.gamma * (channel_out + spatial_out)


class ChannelCBAMSeed(nn.Module):
    def __init__(self, channels: int, reduction: float = 0.5, min_channels: int = 1):
        super().__init__()
        check_channels(channels, "ChannelCBAMSeed")
        hidden = hidden_width(channels, reduction, min_channels, "ChannelCBAMSeed")
        self.pools = nn.ModuleList([GlobalStochasticPool(flatten=True), GlobalL2Pool(mean=True, flatten=True)])
        self.fc1 = nn.Linear(2 * channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)
        _he_normal_(self.fc1)
        _he_normal_(self.fc2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.cat([pool(x) for pool in self.pools], 1)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(z))))[:, :, None, None]


class SeedConvNet(nn.Module):
    """3x3 'same' convs (with bias), each followed by an optional ReLU and a block; global
    average pooling; an optional linear head and softmax."""

    def __init__(self, block, channels: Sequence[int], in_chans: int, relu: bool, num_classes: Optional[int],
                 softmax: bool):
        super().__init__()
        layers, c_in = [], in_chans
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1)] + ([nn.ReLU()] if relu else []) + [block(c)]
            c_in = c
        self.features = nn.Sequential(*layers)
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 1):
            raise ValueError(f"num_classes must be None or a positive int, got {num_classes!r}")
        self.head = nn.Linear(c_in, num_classes) if num_classes else nn.Identity()
        self.softmax = bool(softmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.head(self.features(x).mean((2, 3)))
        return torch.softmax(z, dim=1) if self.softmax else z


def newcbam_seed(num_classes: Optional[int] = None, in_chans: int = 3, width: float = 1 / 16,
                 reduction: float = 16) -> SeedConvNet:
    return SeedConvNet(lambda c: NewCBAMSeed(c, reduction), scaled(PAPER_CHANNELS, width), in_chans, relu=False,
                       num_classes=num_classes, softmax=False)


def cbam_seed(num_classes: int = 10, in_chans: int = 3, width: float = 1.0, reduction: float = 0.5,
              softmax: bool = True) -> SeedConvNet:
    return SeedConvNet(lambda c: ChannelCBAMSeed(c, reduction), scaled(SEED_CBAM_CHANNELS, width), in_chans,
                       relu=True, num_classes=num_classes, softmax=softmax)
