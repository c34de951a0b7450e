"""A small ResNet whose downsampling is SoftPool (Stergiou et al., ICCV 2021) instead of
strided convolutions, with CBAM at the end of every residual block.

A downsampling block SoftPool2d(2)-pools its input once; the pooled map feeds both the
residual branch (conv-BN-ReLU-conv-BN-CBAM) and the shortcut (1x1 conv + BN when the
width changes). Default: ``width=0.25`` (16, 32, 64, 128 channels), one block per stage,
CIFAR-style 3x3 stem. ``width=1.0, depths=(2, 2, 2, 2)`` is the ResNet-18 layout
(64..512 channels) with SoftPool in place of stride 2.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from poolexport.nn import CBAM, SoftPool2d

from .conv_attention import scaled


class SoftPoolBasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, downsample: bool, reduction: float = 16):
        super().__init__()
        self.pool = SoftPool2d(2) if downsample else nn.Identity()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
            CBAM(c_out, reduction),
        )
        self.shortcut = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
                         if c_in != c_out else nn.Identity())
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        return self.act(self.body(x) + self.shortcut(x))


class ResNetSoftPool(nn.Module):
    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: float = 0.25,
                 depths: Sequence[int] = (1, 1, 1, 1), reduction: float = 16):
        super().__init__()
        widths = scaled((64, 128, 256, 512), width)
        self.stem = nn.Sequential(nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        blocks, c = [], widths[0]
        for stage, (w, d) in enumerate(zip(widths, depths)):
            for i in range(d):
                blocks.append(SoftPoolBasicBlock(c, w, downsample=(stage > 0 and i == 0), reduction=reduction))
                c = w
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def resnet_softpool(**kwargs) -> ResNetSoftPool:
    return ResNetSoftPool(**kwargs)
