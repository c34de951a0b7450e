"""Turn an input into a (..., P, K) tensor of windows and scatter gradients back.

Both the windowed form (kernel over spatial axes) and the reduction form (over chosen
axes) become the same thing: rows of K values, some of them padding. The per-window math
in ``soft_pool.py`` and ``stochastic_pool.py`` then never looks at shapes.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch

from .._window import WindowSpec, make_window_spec, reduce_layout, window_index


def spec_from_attrs(op, x_dim, kernel_shape, strides, pads, dilations, ceil_mode, auto_pad) -> WindowSpec:
    # cached: the native kernels' per-call cost is mostly this kind of Python work
    return _spec_from_attrs(op, x_dim, tuple(kernel_shape), tuple(strides), tuple(pads), tuple(dilations),
                            bool(ceil_mode), auto_pad)


@lru_cache(maxsize=256)
def _spec_from_attrs(op, x_dim, kernel_shape, strides, pads, dilations, ceil_mode, auto_pad) -> WindowSpec:
    k = x_dim - 2
    if k not in (1, 2, 3):
        raise ValueError(f"{op}: input must be N x C x D1..Dk with k in 1..3 (rank 3-5), got rank {x_dim}")
    if len(kernel_shape) != k:
        raise ValueError(f"{op}: kernel_shape has {len(kernel_shape)} values for a {k}-D input")
    for name, v, n in (("strides", strides, k), ("dilations", dilations, k), ("pads", pads, 2 * k)):
        if len(v) not in (0, n):
            raise ValueError(f"{op}: {name} must have {n} values, got {list(v)}")
    # empty lists take the ONNX defaults (strides 1, no padding, dilation 1), as in the
    # ONNX node; the PyTorch-style default stride = kernel lives in poolexport.functional
    return make_window_spec(
        op, k, list(kernel_shape), list(strides) or 1, list(pads) or 0, list(dilations) or 1, ceil_mode, auto_pad
    )


def gather_windows(x: torch.Tensor, spec: WindowSpec, fill: float = 0.0):
    """Returns ``(windows (N, C, P, K), valid (P, K), out_spatial)``; padding holds ``fill``."""
    n, c, *spatial = x.shape
    out, _ = spec.resolve(spatial)
    index, valid = window_index(spec, spatial, x.device)
    total = 1
    for s in spatial:
        total *= s
    flat = x.reshape(n, c, total)
    flat = torch.cat([flat, flat.new_full((n, c, 1), fill)], dim=-1)
    windows = flat[:, :, index]
    return windows, valid, tuple(out)


def scatter_windows(grad_windows: torch.Tensor, x: torch.Tensor, spec: WindowSpec) -> torch.Tensor:
    """Adjoint of gather_windows: sum each window position's gradient into its input."""
    n, c, *spatial = x.shape
    index, _ = window_index(spec, spatial, x.device)
    total = 1
    for s in spatial:
        total *= s
    grad = grad_windows.new_zeros((n, c, total + 1))
    grad.index_add_(-1, index.reshape(-1), grad_windows.reshape(n, c, -1))
    return grad[..., :total].reshape(x.shape)


def reduce_windows(x: torch.Tensor, axes: Sequence[int] | None, keepdims: bool, op: str):
    """Returns ``(windows (M, K), out_shape)`` for a reduction over ``axes``."""
    _, perm, kept_shape, out_shape = reduce_layout(tuple(x.shape), axes, keepdims, op)
    m, k = 1, 1
    for s in kept_shape:
        m *= s
    for i in perm[len(kept_shape):]:
        k *= x.shape[i]
    windows = x.permute(perm).reshape(m, k)
    return windows, out_shape


def unreduce_windows(grad_windows: torch.Tensor, x: torch.Tensor, axes, keepdims: bool, op: str) -> torch.Tensor:
    """Adjoint of reduce_windows."""
    _, perm, _, _ = reduce_layout(tuple(x.shape), axes, keepdims, op)
    permuted_shape = [x.shape[p] for p in perm]
    inverse = [0] * len(perm)
    for i, p in enumerate(perm):
        inverse[p] = i
    return grad_windows.reshape(permuted_shape).permute(inverse).contiguous()


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    # float16/bfloat16 accumulate in float32, as the kernels do
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def pool_forward(op: str, X: torch.Tensor, window_attrs, window_fn) -> torch.Tensor:
    """Windowed op forward: ``window_fn(windows (N, C, P, K), valid (P, K)) -> (N, C, P)``."""
    spec = spec_from_attrs(op, X.dim(), *window_attrs)
    windows, valid, out = gather_windows(X.to(compute_dtype(X)), spec)
    return window_fn(windows, valid).reshape(X.shape[0], X.shape[1], *out).to(X.dtype)


def pool_backward(op: str, grad: torch.Tensor, X: torch.Tensor, window_attrs, window_grad_fn) -> torch.Tensor:
    """Windowed op backward: ``window_grad_fn(grad (N, C, P), windows, valid) -> (N, C, P, K)``."""
    spec = spec_from_attrs(op, X.dim(), *window_attrs)
    dt = compute_dtype(X)
    xc = X.to(dt)
    windows, valid, _ = gather_windows(xc, spec)
    gw = window_grad_fn(grad.to(dt).reshape(windows.shape[:-1]), windows, valid) * valid
    return scatter_windows(gw, xc, spec).to(X.dtype)


def reduce_forward(op: str, X: torch.Tensor, axes, keepdims: bool, window_fn) -> torch.Tensor:
    windows, out_shape = reduce_windows(X.to(compute_dtype(X)), axes, keepdims, op)
    return window_fn(windows).reshape(out_shape).to(X.dtype)


def reduce_backward(op: str, grad: torch.Tensor, X: torch.Tensor, axes, keepdims: bool, window_grad_fn):
    windows, _ = reduce_windows(X.to(compute_dtype(X)), axes, keepdims, op)
    gw = window_grad_fn(grad.to(windows.dtype).reshape(-1), windows)
    return unreduce_windows(gw, X, axes, keepdims, op).to(X.dtype)
