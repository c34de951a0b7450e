"""The users' plain conv classifiers with attention after every conv.

Five 3x3 same-padding convolutions (64, 128, 256, 512, 1024 channels at ``width=1.0``; no
downsampling, as in the original), each conv -> BatchNorm -> ReLU -> attention block,
then global average pooling and a linear head. The default ``width=1/16`` (4..64
channels) keeps a 1x3x32x32 forward in milliseconds; ``width=1.0`` is the paper-size
network (about 6.3 M conv parameters; at 224x224 its activations are large because
nothing downsamples).

* ``NewCBAMNet`` ("newcbam"): the NewCBAM block. Channel attention from L2, average and
  max descriptors through one shared MLP; spatial attention from stochastic and L2
  pooling across channels, a conv and a sigmoid; both applied to x in parallel and fused
  as out = (1 - gamma) * x + gamma * (channel_out + spatial_out) with a learned gamma
  initialised to 0 (the block starts as the identity).
* "cbam_stochastic_l2": plain CBAM whose channel pools are stochastic and L2 pooling,
  ending in a 10-way softmax (``softmax=True`` returns probabilities, as the users' model
  does; set it False to get logits for nn.CrossEntropyLoss).

``l2="l2"`` (default) is the norm sqrt(sum(x^2)); ``l2="rms"`` is sqrt(mean(x^2)), what
every seed calls L2 pooling (the two differ by sqrt(window size): 32 on a 32x32 map).
These are the CBAM-layout variants (a shared MLP per descriptor, a 7x7 conv over maps
pooled across channels); "newcbam_seed" and "cbam_seed" (``seed_cbam.py``) are the seed's
blocks as written.

Stochastic pooling assumes non-negative activations, which the ReLU before each block
guarantees; in eval it is the deterministic probabilistic weighting.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from poolexport.nn import CBAM, ChannelAttention, SpatialAttention

PAPER_CHANNELS = (64, 128, 256, 512, 1024)


def scaled(channels: Sequence[int], width: float) -> list[int]:
    if not width > 0:
        raise ValueError(f"width must be positive, got {width!r}")
    return [max(1, int(round(c * width))) for c in channels]


L2_FORMS = ("l2", "rms")


def _l2_form(l2: str, owner: str) -> str:
    if l2 not in L2_FORMS:
        raise ValueError(f"{owner}: l2 must be one of {L2_FORMS} (the norm sqrt(sum(x^2)) or the seeds' RMS "
                         f"sqrt(mean(x^2))), got {l2!r}")
    return l2


class NewCBAM(nn.Module):
    def __init__(self, channels: int, reduction: float = 16, kernel_size: int = 7, l2: str = "l2"):
        super().__init__()
        l2 = _l2_form(l2, "NewCBAM")
        self.channel = ChannelAttention(channels, reduction, pools=(l2, "avg", "max"), owner="NewCBAM")
        self.spatial = SpatialAttention(pools=("stochastic", l2), kernel_size=kernel_size, owner="NewCBAM")
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (1 - self.gamma) * x + self.gamma * (self.channel(x) + self.spatial(x))


class ConvAttentionNet(nn.Module):
    def __init__(self, block: Callable[[int], nn.Module], num_classes: int = 10, in_chans: int = 3,
                 width: float = 1 / 16, channels: Sequence[int] = PAPER_CHANNELS, softmax: bool = False):
        super().__init__()
        layers, c_in = [], in_chans
        for c in scaled(channels, width):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True), block(c)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)
        self.softmax = bool(softmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.head(self.features(x).mean((2, 3)))
        return torch.softmax(z, dim=1) if self.softmax else z


def newcbam(num_classes: int = 10, in_chans: int = 3, width: float = 1 / 16, reduction: float = 16,
            kernel_size: int = 7, l2: str = "l2") -> ConvAttentionNet:
    l2 = _l2_form(l2, "newcbam")
    return ConvAttentionNet(lambda c: NewCBAM(c, reduction, kernel_size, l2), num_classes, in_chans, width)


def cbam_stochastic_l2(num_classes: int = 10, in_chans: int = 3, width: float = 1 / 16, reduction: float = 16,
                       kernel_size: int = 7, softmax: bool = True, l2: str = "l2") -> ConvAttentionNet:
    l2 = _l2_form(l2, "cbam_stochastic_l2")

    def block(c: int) -> nn.Module:
        return CBAM(c, reduction, channel_pools=("stochastic", l2), kernel_size=kernel_size)

    return ConvAttentionNet(block, num_classes, in_chans, width, softmax=softmax)
