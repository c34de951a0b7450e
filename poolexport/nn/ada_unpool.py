"""adaUnpool modules (Stergiou and Poppe, IEEE TIP 2022; the adaPool repository's
``adaunpool`` / ``AdaUnpool{1,2,3}d``): upsample a pooled tensor with the masks adaPool used.

``mask`` is what the repository's ``adapool*d(..., return_mask=True)`` returns:

* a tuple ``(mask_edscw, mask_em, beta)`` (its default, non-native path):
  Y = A(x beta) clip(mask_edscw, 0, 1) + A(x (1 - beta)) clip(mask_em, 0, 1);
* one mask m (its native path): Y = A(x) clip(m) + A(x) (1 - clip(m)), which is A(x) (NaN
  where m is NaN).

A is area interpolation to the masks' spatial size (at least x's on every axis). Masks may
be the repository's (N, *O) or (N|1, C|1, *O). Only the repository's ``interpolate=True``
is offered (with ``interpolate=False`` it ignores beta).

The repository's modules take the mask in ``__init__``; here it may be given there (kept as
buffers) or to ``forward``.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import nn

from ..ops.ada_unpool import ada_unpool

_Mask = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _with_channel_axis(name: str, m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if m.dim() == x.dim() - 1:
        return m.unsqueeze(1)  # the repository's (N, *O): one mask for every channel
    if m.dim() == x.dim():
        return m
    raise ValueError(f"ada_unpool: {name} must be (N, *O) or (N|1, C|1, *O) for an input of rank {x.dim()}, got "
                     f"shape {list(m.shape)}")


def _cast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == x.dtype else t.to(x.dtype)  # no unconditional cast (torch.export bakes it in)


def _unpool(k: int):
    name = f"ada_unpool{k}d"

    def fn(x: torch.Tensor, mask: _Mask) -> torch.Tensor:
        if x.dim() != k + 2:
            raise ValueError(f"{name}: x must be N x C x {k} spatial axes, got shape {list(x.shape)}")
        if isinstance(mask, (tuple, list)):
            if len(mask) != 3:
                raise ValueError(f"{name}: mask must be (mask_edscw, mask_em, beta) or one tensor, got {len(mask)} "
                                 "items")
            me, mm, beta = mask
            return ada_unpool(x, _cast(_with_channel_axis("mask_edscw", me, x), x),
                              _cast(_with_channel_axis("mask_em", mm, x), x), _cast(beta, x))
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"{name}: mask must be a tensor or a (mask_edscw, mask_em, beta) tuple")
        m = _cast(_with_channel_axis("mask", mask, x), x)
        # A(x) m + A(x) (1 - m) = A(x): both masks 1 (NaN where m is NaN) and beta 1
        ones = torch.where(torch.isnan(m), m, torch.ones_like(m))
        return ada_unpool(x, ones, ones, torch.ones((), dtype=x.dtype, device=x.device))

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = (f"adaUnpool over {k} spatial axes: A(x beta) clip(mask_edscw) + A(x (1 - beta)) clip(mask_em), "
                  "A area interpolation to the masks' spatial size.")
    return fn


ada_unpool1d, ada_unpool2d, ada_unpool3d = (_unpool(k) for k in (1, 2, 3))


class _AdaUnpoolNd(nn.Module):
    dims = 0
    _fn = None

    def __init__(self, mask: Optional[_Mask] = None):
        super().__init__()
        self.form = None if mask is None else ("tuple" if isinstance(mask, (tuple, list)) else "single")
        if isinstance(mask, (tuple, list)):
            if len(mask) != 3:
                raise ValueError(f"{type(self).__name__}: mask must be (mask_edscw, mask_em, beta) or one tensor")
            for n, t in zip(("mask_edscw", "mask_em", "beta"), mask):
                self.register_buffer(n, torch.as_tensor(t).detach().clone())
        elif mask is not None:
            self.register_buffer("mask", torch.as_tensor(mask).detach().clone())

    def forward(self, x: torch.Tensor, mask: Optional[_Mask] = None) -> torch.Tensor:
        if mask is None:
            if self.form is None:
                raise ValueError(f"{type(self).__name__}: no mask given (neither to __init__ nor to forward)")
            mask = (self.mask_edscw, self.mask_em, self.beta) if self.form == "tuple" else self.mask
        return type(self)._fn(x, mask)


class AdaUnpool1d(_AdaUnpoolNd):
    dims, _fn = 1, staticmethod(ada_unpool1d)


class AdaUnpool2d(_AdaUnpoolNd):
    dims, _fn = 2, staticmethod(ada_unpool2d)


class AdaUnpool3d(_AdaUnpoolNd):
    dims, _fn = 3, staticmethod(ada_unpool3d)


__all__ = ["AdaUnpool1d", "AdaUnpool2d", "AdaUnpool3d", "ada_unpool1d", "ada_unpool2d", "ada_unpool3d"]
