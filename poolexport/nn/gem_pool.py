"""GeM (generalized-mean) pooling: y = (mean clamp(x, eps)^p)^(1/p) per window or plane.

Radenovic, Tolias, Chum, "Fine-tuning CNN Image Retrieval with No Human Annotation", TPAMI
2019: the standard global head of image-retrieval and re-identification networks. p = 1 is
average pooling, p -> inf max pooling; p is learned by default (one value, or one per
channel with ``channels=C``), as in cirtorch's ``GeM`` (filipradenovic/cnnimageretrieval-pytorch,
cirtorch/layers/pooling.py). The math is scaled by each window's max so that neither fp16
nor fp32 overflows (see ``poolexport._gem_lse``); the export is standard ONNX.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from .. import functional as F
from .._args import check_bool, check_dim, check_real
from .._gem_lse import check_eps
from ._window_pool import WindowPoolNd

_Size = Union[int, Sequence[int]]


def init_exponent(module: nn.Module, name: str, value: float, learn: bool, channels: Optional[int]) -> None:
    """``module.<name>``: a float (fixed and shared), else a tensor of shape () or (C,), an
    nn.Parameter when learned and a buffer when fixed."""
    owner = type(module).__name__
    value = check_real(owner, name, value)
    learn = check_bool(owner, f"learn_{name}", learn)
    if channels is not None and (isinstance(channels, bool) or not isinstance(channels, int) or channels < 1):
        raise ValueError(f"{owner}: channels must be None or a positive int, got {channels!r}")
    module.channels = channels
    if not learn and channels is None:
        setattr(module, name, value)
        return
    tensor = torch.full((channels,) if channels is not None else (), value)
    if learn:
        setattr(module, name, nn.Parameter(tensor))
    else:
        module.register_buffer(name, tensor)


def exponent_repr(value) -> str:
    if isinstance(value, torch.Tensor):
        kind = "learned" if isinstance(value, nn.Parameter) else "fixed"
        return f"{value.item():.4g} ({kind})" if value.dim() == 0 else f"({kind}, {value.shape[0]} channels)"
    return f"{value}"


class _GeMPoolNd(WindowPoolNd):
    def __init__(self, kernel_size: _Size, stride: Optional[_Size] = None, padding: Union[_Size, str] = 0,
                 dilation: _Size = 1, ceil_mode: bool = False, p: float = 3.0, eps: float = 1e-6,
                 learn_p: bool = True, channels: Optional[int] = None):
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode)
        init_exponent(self, "p", p, learn_p, channels)
        self.eps = check_eps(type(self).__name__, eps)

    def _extra_kwargs(self) -> dict:
        return {"p": self.p, "eps": self.eps}

    def extra_repr(self) -> str:
        return super().extra_repr() + f", p={exponent_repr(self.p)}, eps={self.eps}"


class GeMPool1d(_GeMPoolNd):
    dims, _fn = 1, staticmethod(F.gem_pool1d)


class GeMPool2d(_GeMPoolNd):
    dims, _fn = 2, staticmethod(F.gem_pool2d)


class GeMPool3d(_GeMPoolNd):
    dims, _fn = 3, staticmethod(F.gem_pool3d)


class GeMPoolReduce(nn.Module):
    """GeM over whole axes ``dim`` (e.g. ``dim=1, keepdim=True``: across channels); p shared."""

    def __init__(self, dim=None, keepdim: bool = False, p: float = 3.0, eps: float = 1e-6, learn_p: bool = True):
        super().__init__()
        owner = type(self).__name__
        self.dim, self.keepdim = check_dim(owner, "dim", dim), check_bool(owner, "keepdim", keepdim)
        init_exponent(self, "p", p, learn_p, None)
        self.eps = check_eps(owner, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gem_pool_reduce(x, self.p, self.dim, self.keepdim, self.eps)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, keepdim={self.keepdim}, p={exponent_repr(self.p)}, eps={self.eps}"


class GlobalGeMPool(nn.Module):
    """GeM over every spatial axis of N x C x D1..: N x C x 1.. (``flatten=True``: N x C).
    The retrieval head; ``channels=C`` learns one p per channel."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learn_p: bool = True, channels: Optional[int] = None,
                 flatten: bool = False):
        super().__init__()
        owner = type(self).__name__
        init_exponent(self, "p", p, learn_p, channels)
        self.eps = check_eps(owner, eps)
        self.flatten = check_bool(owner, "flatten", flatten)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3:
            raise ValueError(f"{type(self).__name__}: input must be N x C x D1.. (rank >= 3), got shape "
                             f"{tuple(x.shape)}")
        return F.gem_pool_reduce(x, self.p, list(range(2, x.dim())), not self.flatten, self.eps)

    def extra_repr(self) -> str:
        return f"p={exponent_repr(self.p)}, eps={self.eps}, flatten={self.flatten}"
