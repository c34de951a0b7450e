"""EfficientNet-style inverted-residual (MBConv) networks with SE or ECA attention.

MBConv (Sandler et al. 2018; Tan and Le, ICML 2019): 1x1 expansion, depthwise 3x3,
attention, 1x1 projection, residual when shapes match. "se_effnet" uses SE as EfficientNet
does: on the expanded width, bottleneck = block input width / 4 (reduction 4), Swish.
"eca" uses ECA (Wang et al., CVPR 2020) on the expanded width. Default ``width=0.5`` on
32x32 inputs: feature maps 32 -> 16 -> 8 -> 4. ``width=1.0`` gives the EfficientNet-B0
stem and the first stages' widths (32; 16, 24, 40, 80); the full B0 has more stages,
5x5 kernels and a 1280-wide head, which this example leaves out.
"""
from __future__ import annotations

import torch
from torch import nn

from poolexport.nn import ECA, SE

from .conv_attention import scaled

# (expansion, output channels at width 1, stride, repeats)
STAGES = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 40, 2, 1), (4, 80, 2, 1))


class MBConv(nn.Module):
    def __init__(self, c_in: int, c_out: int, expansion: int, stride: int, attn: str):
        super().__init__()
        mid = c_in * expansion
        layers = []
        if expansion != 1:
            layers += [nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.SiLU(inplace=True)]
        layers += [nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.SiLU(inplace=True)]
        if attn == "se":
            layers.append(SE(mid, hidden_channels=max(1, c_in // 4), act="swish"))
        else:
            layers.append(ECA(mid))
        layers += [nn.Conv2d(mid, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class EffNetAttention(nn.Module):
    def __init__(self, attn: str = "se", num_classes: int = 10, in_chans: int = 3, width: float = 0.5):
        super().__init__()
        if attn not in ("se", "eca"):
            raise ValueError(f"EffNetAttention: attn must be 'se' or 'eca', got {attn!r}")
        stem = scaled((32,), width)[0]
        self.stem = nn.Sequential(nn.Conv2d(in_chans, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem),
                                  nn.SiLU(inplace=True))
        blocks, c = [], stem
        for expansion, out, stride, repeats in STAGES:
            out = scaled((out,), width)[0]
            for i in range(repeats):
                blocks.append(MBConv(c, out, expansion, stride if i == 0 else 1, attn))
                c = out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def se_effnet(**kwargs) -> EffNetAttention:
    return EffNetAttention("se", **kwargs)


def eca(**kwargs) -> EffNetAttention:
    return EffNetAttention("eca", **kwargs)
