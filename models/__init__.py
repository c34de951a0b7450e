"""Example networks built from poolexport layers (installed as poolexport.models).

``list_models()`` names them, ``create_model(arch, **kwargs)`` builds one (kwargs such as
``num_classes``, ``in_chans``, ``width``), ``default_input_shape(arch)`` gives the input
the CLI and tests feed it. Every model is deterministic in eval mode.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from .conv_attention import ConvAttentionNet, NewCBAM, cbam_stochastic_l2, newcbam
from .effnet_attention import EffNetAttention, MBConv, eca, se_effnet
from .mobilenet_se import InvertedResidual, MobileNetSE, mobilenet_se
from .resnet_softpool import ResNetSoftPool, SoftPoolBasicBlock, resnet_softpool
from .seed_cbam import ChannelCBAMSeed, NewCBAMSeed, SeedConvNet, cbam_seed, newcbam_seed

_REGISTRY: dict[str, tuple[Callable[..., nn.Module], tuple[int, ...]]] = {
    "newcbam": (newcbam, (1, 3, 32, 32)),
    "cbam_stochastic_l2": (cbam_stochastic_l2, (1, 3, 32, 32)),
    "newcbam_seed": (newcbam_seed, (1, 3, 32, 32)),
    "cbam_seed": (cbam_seed, (1, 3, 32, 32)),
    "resnet_softpool": (resnet_softpool, (1, 3, 32, 32)),
    "se_effnet": (se_effnet, (1, 3, 32, 32)),
    "eca": (eca, (1, 3, 32, 32)),
    "mobilenet_se": (mobilenet_se, (1, 3, 64, 64)),  # ImageNet size 224: slow in the test sweeps
}


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def _entry(arch: str, fn: str):
    if not isinstance(arch, str) or arch not in _REGISTRY:
        raise ValueError(f"{fn}: arch must be one of {list_models()}, got {arch!r}")
    return _REGISTRY[arch]


def create_model(arch: str, **kwargs) -> nn.Module:
    return _entry(arch, "create_model")[0](**kwargs)


def default_input_shape(arch: str) -> tuple[int, ...]:
    return _entry(arch, "default_input_shape")[1]


__all__ = ["list_models", "create_model", "default_input_shape", "ConvAttentionNet", "NewCBAM",
           "ResNetSoftPool", "SoftPoolBasicBlock", "EffNetAttention", "MBConv", "NewCBAMSeed", "ChannelCBAMSeed",
           "SeedConvNet", "MobileNetSE", "InvertedResidual"]
