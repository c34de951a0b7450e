"""SoftPool as torch.library custom ops (Stergiou et al., ICCV 2021).

y = sum_i w_i a_i with w = softmax(beta * a) over the window's valid positions. Computed
stably: the window maximum of beta * a is subtracted before exp, so any finite input
gives a finite output. beta = 0 is average pooling (padding excluded); beta -> inf
approaches max pooling. An all-padding window outputs 0.

Gradient (exact, including the weights' derivative):
    dy/da_j = w_j * (1 + beta * (a_j - y)).

Schemas use the ONNX attribute names of the ``poolexport`` domain (see poolexport.onnx),
so an exported node carries exactly the op's arguments.

The functions below are the pure-torch reference (any device, any float dtype); on CPU
float32/float16 the ops run the library's native kernels instead (``_native.py``).
"""
from __future__ import annotations

from typing import Optional

import torch

from .._window import output_spatial
from . import _native
from ._registry import REDUCE_ARGS, WINDOW_ARGS, define_pair
from ._windows import pool_backward, pool_forward, reduce_backward, reduce_forward, reduce_layout, spec_from_attrs

OP = "SoftPool"
REDUCE_OP = "ReduceSoftPool"


def _check_input(op: str, x: torch.Tensor) -> None:
    if not x.is_floating_point():
        raise ValueError(f"{op}: input must be a floating-point tensor, got {x.dtype}")


SCALE_ABOVE = 2.0**64  # limits.h kSoftScaleAbove: windows with a larger max |a| sum scaled values


def _stats(windows: torch.Tensor, valid: Optional[torch.Tensor], beta: float):
    """(w, c, d, k): normalised softmax weights over the last axis (float32 or wider), the
    value c whose beta * c is the window maximum, d = k * (y - c) = sum w * (a - c) * k and
    the per-window power of two k (1, or 2^-64 where max |a| > SCALE_ABOVE) that keeps
    the sums finite (soft_pool.h's math)."""
    z = windows * beta
    if valid is not None:
        z = z.masked_fill(~valid, float("-inf"))
    m = z.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # all-padding rows
    e = torch.exp(z - m)
    s = e.sum(dim=-1, keepdim=True)
    w = e / torch.where(s > 0, s, torch.ones_like(s))
    a = windows if valid is None else windows.masked_fill(~valid, 0.0)
    c = a.gather(-1, z.argmax(dim=-1, keepdim=True))
    amax = a.abs().amax(dim=-1, keepdim=True)
    k = torch.where(amax > SCALE_ABOVE, torch.full_like(amax, 2.0**-64), torch.ones_like(amax))
    diff = a * k - c * k
    d = torch.where(w > 0, w * diff, torch.zeros_like(diff)).sum(dim=-1, keepdim=True)
    return w, c, d, k, amax, diff


def soft_pool_windows(windows, valid, beta):
    w, c, d, k, amax, _ = _stats(windows, valid, beta)
    yk = torch.minimum(torch.maximum(c * k + d, -amax * k), amax * k)  # a convex combination
    y = torch.where(k < 1, yk / k, c + d)
    return y.squeeze(-1)


def soft_pool_windows_backward(grad, windows, valid, beta):
    w, c, d, k, amax, diff = _stats(windows, valid, beta)
    t = beta * (diff - d) / k  # beta * (a - y), no overflow where the weight is not 0
    return grad.unsqueeze(-1) * torch.where(w > 0, w * (1 + t), torch.zeros_like(w))


def soft_pool_reference(
    X: torch.Tensor,
    kernel_shape: list[int],
    strides: list[int],
    pads: list[int],
    dilations: list[int],
    ceil_mode: bool,
    auto_pad: str,
    beta: float,
) -> torch.Tensor:
    _check_input(OP, X)
    attrs = (kernel_shape, strides, pads, dilations, ceil_mode, auto_pad)
    return pool_forward(OP, X, attrs, lambda windows, valid: soft_pool_windows(windows, valid, beta))


def soft_pool_backward_reference(
    grad: torch.Tensor,
    X: torch.Tensor,
    kernel_shape: list[int],
    strides: list[int],
    pads: list[int],
    dilations: list[int],
    ceil_mode: bool,
    auto_pad: str,
    beta: float,
) -> torch.Tensor:
    attrs = (kernel_shape, strides, pads, dilations, ceil_mode, auto_pad)
    return pool_backward(OP, grad, X, attrs, lambda g, windows, valid: soft_pool_windows_backward(g, windows, valid, beta))


def _kernel(X, kernel_shape, strides, pads, dilations, ceil_mode, auto_pad, beta):
    """The CUDA kernel (and the CPU one without the compiled registration)."""
    if not _native.use_native(X):
        return soft_pool_reference(X, kernel_shape, strides, pads, dilations, ceil_mode, auto_pad, beta)
    _check_input(OP, X)
    spec = spec_from_attrs(OP, X.dim(), kernel_shape, strides, pads, dilations, ceil_mode, auto_pad)
    return _native.window(OP, _native.SOFT, X, spec, beta)


def _backward_kernel(grad, X, kernel_shape, strides, pads, dilations, ceil_mode, auto_pad, beta):
    if not _native.use_native(X):
        return soft_pool_backward_reference(grad, X, kernel_shape, strides, pads, dilations, ceil_mode, auto_pad, beta)
    spec = spec_from_attrs(OP, X.dim(), kernel_shape, strides, pads, dilations, ceil_mode, auto_pad)
    return _native.window(OP, _native.SOFT, X, spec, beta, grad=grad)


def _windowed_fake(X, kernel_shape, strides, pads, dilations, ceil_mode, auto_pad, *_):
    spec = spec_from_attrs(OP, X.dim(), kernel_shape, strides, pads, dilations, ceil_mode, auto_pad)
    return X.new_empty((X.shape[0], X.shape[1], *output_spatial(spec, X.shape[2:])))


def _input_like_fake(grad, X, *_):
    return torch.empty_like(X)


soft_pool, soft_pool_backward = define_pair(
    "soft_pool", f"{WINDOW_ARGS}, float beta",
    (soft_pool_reference, _kernel, _windowed_fake),
    (soft_pool_backward_reference, _backward_kernel, _input_like_fake),
)


# ---------------------------------------------------------------- reduction form
def reduce_soft_pool_reference(X, axes, keepdims, beta):
    _check_input(REDUCE_OP, X)
    return reduce_forward(REDUCE_OP, X, axes, keepdims, lambda windows: soft_pool_windows(windows, None, beta))


def reduce_soft_pool_backward_reference(grad, X, axes, keepdims, beta):
    return reduce_backward(REDUCE_OP, grad, X, axes, keepdims,
                           lambda g, windows: soft_pool_windows_backward(g, windows, None, beta))


def _reduce_kernel(X, axes, keepdims, beta):
    _check_input(REDUCE_OP, X)
    if _native.use_native(X):
        reduced, _, _, out_shape = reduce_layout(tuple(X.shape), axes, keepdims, REDUCE_OP)
        y = _native.reduce(REDUCE_OP, _native.SOFT, X, reduced, out_shape, beta)
        if y is not None:
            return y
    return reduce_soft_pool_reference(X, axes, keepdims, beta)


def _reduce_backward_kernel(grad, X, axes, keepdims, beta):
    if _native.use_native(X):
        reduced, _, _, out_shape = reduce_layout(tuple(X.shape), axes, keepdims, REDUCE_OP)
        dx = _native.reduce(REDUCE_OP, _native.SOFT, X, reduced, out_shape, beta, grad=grad)
        if dx is not None:
            return dx
    return reduce_soft_pool_backward_reference(grad, X, axes, keepdims, beta)


def _reduced_fake(X, axes, keepdims, *_):
    _, _, _, out_shape = reduce_layout(tuple(X.shape), axes, keepdims, REDUCE_OP)
    return X.new_empty(out_shape)


reduce_soft_pool, reduce_soft_pool_backward = define_pair(
    "reduce_soft_pool", f"{REDUCE_ARGS}, float beta",
    (reduce_soft_pool_reference, _reduce_kernel, _reduced_fake),
    (reduce_soft_pool_backward_reference, _reduce_backward_kernel, _input_like_fake),
)
