"""Functions behind the ``poolexport.nn`` modules.

Windowed pools take PyTorch-style arguments (``kernel_size, stride=None, padding=0,
dilation=1, ceil_mode=False``); ``padding`` may also be ``"same"`` (ONNX SAME_UPPER) or
``"valid"``. Padded positions are never part of a window.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from ._window import window_spec_for_input
from .ops import reduce_soft_pool, reduce_stochastic_pool, soft_pool, stochastic_pool
from .ops.stochastic_pool import MODES

_Size = Union[int, Sequence[int]]


def _window_args(name: str, x: torch.Tensor, k: int, kernel_size, stride, padding, dilation, ceil_mode):
    spec = window_spec_for_input(name, x, k, kernel_size, stride, padding, dilation, ceil_mode)
    return list(spec.kernel_shape), list(spec.strides), list(spec.pads), list(spec.dilations), spec.ceil_mode, spec.auto_pad


def _soft(k: int):
    def fn(x: torch.Tensor, kernel_size: _Size, stride: Optional[_Size] = None, padding: Union[_Size, str] = 0,
           dilation: _Size = 1, ceil_mode: bool = False, beta: float = 1.0) -> torch.Tensor:
        args = _window_args(f"soft_pool{k}d", x, k, kernel_size, stride, padding, dilation, ceil_mode)
        return soft_pool(x, *args, float(beta))

    fn.__name__ = f"soft_pool{k}d"
    fn.__doc__ = f"SoftPool over {k} spatial axes: sum(softmax(beta * w) * w) per window."
    return fn


def _stochastic(k: int):
    def fn(x: torch.Tensor, kernel_size: _Size, stride: Optional[_Size] = None, padding: Union[_Size, str] = 0,
           dilation: _Size = 1, ceil_mode: bool = False, mode: str = "expectation", seed: int = 0) -> torch.Tensor:
        name = f"stochastic_pool{k}d"
        if mode not in MODES:
            raise ValueError(f"{name}: mode must be one of {MODES}, got {mode!r}")
        args = _window_args(name, x, k, kernel_size, stride, padding, dilation, ceil_mode)
        return stochastic_pool(x, *args, mode, int(seed))

    fn.__name__ = f"stochastic_pool{k}d"
    fn.__doc__ = (f"Stochastic pooling over {k} spatial axes: mode='sample' picks a_i with p_i = relu(a_i)/sum, "
                  "mode='expectation' returns sum(relu(a)^2)/sum(relu(a)).")
    return fn


soft_pool1d, soft_pool2d, soft_pool3d = _soft(1), _soft(2), _soft(3)
stochastic_pool1d, stochastic_pool2d, stochastic_pool3d = _stochastic(1), _stochastic(2), _stochastic(3)


def _dims(name: str, x: torch.Tensor, dim) -> Optional[list[int]]:
    if dim is None:
        return None
    dims = [dim] if isinstance(dim, int) else list(dim)
    for d in dims:
        if not -x.dim() <= d < x.dim():
            raise ValueError(f"{name}: dim {d} is out of range for a {x.dim()}-D input")
    return dims


def soft_pool_reduce(x: torch.Tensor, dim=None, keepdim: bool = False, beta: float = 1.0) -> torch.Tensor:
    """SoftPool over whole axes ``dim`` (all axes if None); ONNX ReduceSoftPool."""
    return reduce_soft_pool(x, _dims("soft_pool_reduce", x, dim), bool(keepdim), float(beta))


def stochastic_pool_reduce(x: torch.Tensor, dim=None, keepdim: bool = False, mode: str = "expectation",
                           seed: int = 0) -> torch.Tensor:
    """Stochastic pooling over whole axes ``dim``; ONNX ReduceStochasticPool."""
    if mode not in MODES:
        raise ValueError(f"stochastic_pool_reduce: mode must be one of {MODES}, got {mode!r}")
    return reduce_stochastic_pool(x, _dims("stochastic_pool_reduce", x, dim), bool(keepdim), mode, int(seed))


# ---------------------------------------------------------------- standard-op pools (poolexport.nn.functional)
# Lp/L2, ONNX-windowed avg/max, mixed, reductions, LRN and bilinear pooling need no custom
# op; they live beside their modules and are re-exported here. Imported last: by now every
# name above exists for poolexport.nn's modules, which import this module.
from .nn.functional import (  # noqa: E402,F401
    avg_pool1d, avg_pool2d, avg_pool3d, avg_pool_reduce, bilinear_pool, local_response_norm, lp_pool1d, lp_pool2d,
    lp_pool3d, lp_pool_reduce, max_pool1d, max_pool2d, max_pool3d, max_pool_reduce, mixed_pool1d, mixed_pool2d,
    mixed_pool3d, mixed_pool_reduce,
)
