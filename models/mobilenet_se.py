"""A MobileNetV3-Small-style network (Howard et al., ICCV 2019, "Searching for
MobileNetV3"): the SE-heavy network of a typical "swap the pools" experiment, built from
poolexport's SE layer (torchvision is not needed).

Layout as torchvision's ``mobilenet_v3_small``: a 3x3 stride-2 stem (16 channels,
hardswish), eleven inverted residual blocks (1x1 expansion, depthwise k x k, optional SE,
1x1 projection; residual when stride 1 and the widths match), a 1x1 conv to 576 channels,
a global average pool and a two-layer classifier (1024 hidden, hardswish, dropout). Nine
blocks hold an SE layer (squeeze width ``expanded // 4`` rounded to a multiple of 8,
ReLU, hard-sigmoid gate), so the network holds ten global pools with the classifier's.

``pool="avg"`` (default) is the stock network: every global pool is torch's own
``nn.AdaptiveAvgPool2d(1)``, as in torchvision, so ``poolexport.nn.replace_pools(model,
"soft")`` swaps all ten exactly as it would in torchvision's network. Any other
``create_pool`` name ("soft", "stochastic", "l2", ...) builds those pools directly
(``mobilenet_se(pool="soft")`` equals the stock network after ``replace_pools(m, "soft")``).
Its ImageNet size is 224 x 224 (the last blocks see 7 x 7 maps); ``default_input_shape``
is 64 x 64, which keeps the test sweeps short. ``width`` scales every width as
torchvision's ``width_mult`` does.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from poolexport.nn import SE, create_pool
from poolexport.nn.attention._util import one_map_per_channel

# (kernel, expanded width, output width, SE, activation, stride): torchvision's
# mobilenet_v3_small table at width 1
BLOCKS = (
    (3, 16, 16, True, "relu", 2),
    (3, 72, 24, False, "relu", 2),
    (3, 88, 24, False, "relu", 1),
    (5, 96, 40, True, "hardswish", 2),
    (5, 240, 40, True, "hardswish", 1),
    (5, 240, 40, True, "hardswish", 1),
    (5, 120, 48, True, "hardswish", 1),
    (5, 144, 48, True, "hardswish", 1),
    (5, 288, 96, True, "hardswish", 2),
    (5, 576, 96, True, "hardswish", 1),
    (5, 576, 96, True, "hardswish", 1),
)
STEM, LAST_CONV, HIDDEN = 16, 576, 1024
_ACTS = {"relu": nn.ReLU, "hardswish": nn.Hardswish}


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of ``divisor``, never more than 10% below ``value``
    (the MobileNet rule, so scaled widths stay SIMD-friendly)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def global_pool(pool: str) -> nn.Module:
    """N x C x H x W -> N x C x 1 x 1: torch's stock average pool for "avg", a poolexport
    pool for any other name."""
    if not isinstance(pool, str):
        raise ValueError(f"mobilenet_se: pool must be a pool name such as 'avg' or 'soft', got {pool!r}")
    if pool.lower() == "avg":
        return nn.AdaptiveAvgPool2d(1)
    return create_pool(one_map_per_channel(pool, "mobilenet_se", "pool"), "global", argname="mobilenet_se: pool")


def conv_bn(c_in: int, c_out: int, kernel_size: int, stride: int = 1, groups: int = 1,
            act: Optional[str] = None) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
              nn.BatchNorm2d(c_out)]
    if act is not None:
        layers.append(_ACTS[act](inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, kernel_size: int, expanded: int, c_out: int, use_se: bool, act: str, stride: int,
                 pool: str = "avg"):
        super().__init__()
        layers = []
        if expanded != c_in:
            layers.append(conv_bn(c_in, expanded, 1, act=act))
        layers.append(conv_bn(expanded, expanded, kernel_size, stride, groups=expanded, act=act))
        if use_se:
            layers.append(SE(expanded, pool=global_pool(pool), hidden_channels=make_divisible(expanded // 4),
                             act="relu", gate="hardsigmoid"))
        layers.append(conv_bn(expanded, c_out, 1))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetSE(nn.Module):
    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: float = 1.0,
                 pool: str = "avg", dropout: float = 0.2):
        super().__init__()
        if not width > 0:
            raise ValueError(f"MobileNetSE: width must be positive, got {width!r}")
        c = make_divisible(STEM * width)
        layers = [conv_bn(in_chans, c, 3, 2, act="hardswish")]
        for kernel_size, expanded, c_out, use_se, act, stride in BLOCKS:
            c_out = make_divisible(c_out * width)
            layers.append(InvertedResidual(c, kernel_size, make_divisible(expanded * width), c_out, use_se, act,
                                           stride, pool))
            c = c_out
        last = make_divisible(LAST_CONV * width)
        layers.append(conv_bn(c, last, 1, act="hardswish"))
        self.features = nn.Sequential(*layers)
        self.avgpool = global_pool(pool)
        hidden = make_divisible(HIDDEN * width)
        self.classifier = nn.Sequential(nn.Linear(last, hidden), nn.Hardswish(inplace=True),
                                        nn.Dropout(dropout, inplace=True), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def mobilenet_se(**kwargs) -> MobileNetSE:
    return MobileNetSE(**kwargs)
