"""adaUnpool as a torch.library custom op (Stergiou and Poppe, "AdaPool: Exponential
Adaptive Pooling for Information-Retaining Downsampling", IEEE TIP 2022; repository
alexandrosstergiou/adaPool, ``adaunpool``).

``ada_unpool(X, MaskEdscw, MaskEm, Beta)`` upsamples a pooled tensor X (N, C, *I) to the
masks' spatial size O (every O_d >= I_d) with the masks adaPool's two halves returned:

    Y = A(X * Beta) * clip(MaskEdscw, 0, 1) + A(X * (1 - Beta)) * clip(MaskEm, 0, 1)

A is area interpolation (``F.interpolate(mode="area")``, i.e. adaptive average pooling:
output o along an axis averages the input cells floor(o I / O) .. ceil((o + 1) I / O) - 1,
one or two cells when upsampling). Beta broadcasts to X numpy-style (the repository passes
the pooled output's spatial shape); each mask is (N or 1, C or 1, *O) (the repository's
masks are (N, *O): unsqueeze axis 1).

Computed per output o as sum_c w_c X_c t_c with t_c = Beta_c m_e(o) + (1 - Beta_c) m_m(o),
the same number, finite for every finite input with Beta in [0, 1]: there t_c is kept
between the two clipped masks, so |Y| <= max |X| of the cells. Gradients are exact for
X, Beta and both masks (clip's derivative: 1 on [0, 1], 0 outside).

Pure torch (any device, float dtype); the C++ twin is custom_ops/ort/ada_unpool_kernels.h.
"""
from __future__ import annotations

import itertools

import torch

from ._windows import compute_dtype

OP = "AdaUnpool"


# ---------------------------------------------------------------- shapes
def _beta_broadcasts(beta_shape, x_shape) -> bool:
    return len(beta_shape) <= len(x_shape) and all(
        b in (1, x) for b, x in zip(reversed(beta_shape), reversed(x_shape)))


def output_shape(x_shape, me_shape, mm_shape, beta_shape) -> tuple:
    """Y's shape (N, C, *O), or ValueError saying which input does not fit."""
    x_shape, me_shape, mm_shape = tuple(x_shape), tuple(me_shape), tuple(mm_shape)
    if len(x_shape) not in (3, 4, 5):
        raise ValueError(f"{OP}: X must be N x C x D1..Dk with k = 1, 2 or 3, got shape {list(x_shape)}")
    n, c = x_shape[:2]
    if any(d < 1 for d in x_shape[2:]):
        raise ValueError(f"{OP}: X's spatial axes must not be empty, got shape {list(x_shape)}")
    for name, m in (("MaskEdscw", me_shape), ("MaskEm", mm_shape)):
        if len(m) != len(x_shape):
            raise ValueError(f"{OP}: {name} must have X's rank {len(x_shape)} (N or 1, C or 1, then the output's "
                             f"spatial shape), got shape {list(m)}")
        if m[0] not in (1, n) or m[1] not in (1, c):
            raise ValueError(f"{OP}: {name} of shape {list(m)} must have N = {n} or 1 and C = {c} or 1")
    if me_shape[2:] != mm_shape[2:]:
        raise ValueError(f"{OP}: MaskEdscw and MaskEm must have the same spatial shape, got {list(me_shape[2:])} "
                         f"and {list(mm_shape[2:])}")
    out = me_shape[2:]
    if any(o < i for o, i in zip(out, x_shape[2:])):
        raise ValueError(f"{OP}: the masks' spatial shape {list(out)} must be at least X's {list(x_shape[2:])} on "
                         "every axis (unpooling upsamples)")
    if not _beta_broadcasts(tuple(beta_shape), x_shape):
        raise ValueError(f"{OP}: Beta of shape {list(beta_shape)} does not broadcast to X {list(x_shape)}")
    return (n, c, *out)


def area_taps(i_size: int, o_size: int, device=None):
    """(lo, hi, two) along one axis: output o averages input cells lo[o]..hi[o] (one cell,
    or two where ``two``), adaptive average pooling's start/end rule with O >= I."""
    o = torch.arange(o_size, device=device)
    lo = torch.div(o * i_size, o_size, rounding_mode="floor")
    hi = torch.div((o + 1) * i_size + o_size - 1, o_size, rounding_mode="floor") - 1
    return lo, hi, hi > lo


def _along(v: torch.Tensor, axis: int, rank: int) -> torch.Tensor:
    """A 1-D tensor shaped to broadcast along ``axis`` of a rank-``rank`` tensor."""
    shape = [1] * rank
    shape[axis] = -1
    return v.reshape(shape)


def _corners(x_shape, out, device, dt):
    """Per corner (one of 2^k choices of lo/hi per axis): the per-axis indices, the mask of
    outputs where the corner is a real cell, and its area weight (1 or 1/2 per axis)."""
    rank = len(x_shape)
    taps = [area_taps(i, o, device) for i, o in zip(x_shape[2:], out)]
    for bits in itertools.product((0, 1), repeat=len(out)):
        idx, valid, w = [], None, None
        for d, (bit, (lo, hi, two)) in enumerate(zip(bits, taps)):
            idx.append(hi if bit else lo)
            vd = _along(two if bit else torch.ones_like(two), 2 + d, rank)
            wd = _along(torch.where(two, 0.5, 1.0).to(dt), 2 + d, rank)
            valid = vd if valid is None else valid & vd
            w = wd if w is None else w * wd
        yield idx, valid, w


def _gather(t: torch.Tensor, idx) -> torch.Tensor:
    for d, i in enumerate(idx):
        t = t.index_select(2 + d, i)
    return t


def _scatter(v: torch.Tensor, idx, x_shape) -> torch.Tensor:
    """The transpose of _gather: v (N, C, *O) summed into (N, C, *I)."""
    for d, i in enumerate(idx):
        shape = list(v.shape)
        shape[2 + d] = x_shape[2 + d]
        v = v.new_zeros(shape).index_add_(2 + d, i, v)
    return v


def clip01(m: torch.Tensor) -> torch.Tensor:
    return torch.clamp(m, 0.0, 1.0)  # NaN stays NaN (the repository's torch.clamp)


def blend_masks(b, me, mm):
    """t = b me + (1 - b) mm, kept between me and mm where b is in [0, 1] (rounding could
    take it just past 1, and X * t past float32's maximum)."""
    t = b * me + (1.0 - b) * mm
    inside = (b >= 0) & (b <= 1)
    kept = torch.minimum(torch.maximum(t, torch.minimum(me, mm)), torch.maximum(me, mm))
    return torch.where(inside & ~torch.isnan(t), kept, t)


def _prepared(X, MaskEdscw, MaskEm, Beta):
    for name, t in (("X", X), ("MaskEdscw", MaskEdscw), ("MaskEm", MaskEm), ("Beta", Beta)):
        if not t.is_floating_point():
            raise ValueError(f"{OP}: {name} must be a floating-point tensor, got {t.dtype}")
    out_shape = output_shape(X.shape, MaskEdscw.shape, MaskEm.shape, Beta.shape)
    dt = compute_dtype(X)
    x = X.to(dt)
    b = torch.broadcast_to(Beta.to(dt), X.shape)
    me = clip01(MaskEdscw.to(dt)).expand(out_shape)
    mm = clip01(MaskEm.to(dt)).expand(out_shape)
    return out_shape, dt, x, b, me, mm


def ada_unpool_forward(X, MaskEdscw, MaskEm, Beta):
    out_shape, dt, x, b, me, mm = _prepared(X, MaskEdscw, MaskEm, Beta)
    y = torch.zeros(out_shape, dtype=dt, device=X.device)
    for idx, valid, w in _corners(X.shape, out_shape[2:], X.device, dt):
        term = _gather(x, idx) * blend_masks(_gather(b, idx), me, mm) * w
        y = y + torch.where(valid, term, torch.zeros((), dtype=dt, device=X.device))
    return y.to(X.dtype)


def ada_unpool_backward_impl(grad, X, MaskEdscw, MaskEm, Beta):
    """(dX, dMaskEdscw, dMaskEm, dBeta): with At the transpose of A,
    dX = Beta At(g m_e) + (1 - Beta) At(g m_m), dBeta = X (At(g m_e) - At(g m_m)),
    dMaskEdscw = g A(X Beta) [0 <= MaskEdscw <= 1], dMaskEm = g A(X (1 - Beta)) [0 <= MaskEm <= 1]."""
    out_shape, dt, x, b, me, mm = _prepared(X, MaskEdscw, MaskEm, Beta)
    g = grad.to(dt)
    zero = torch.zeros((), dtype=dt, device=X.device)
    at_e = torch.zeros(X.shape, dtype=dt, device=X.device)
    at_m = torch.zeros_like(at_e)
    a_e = torch.zeros(out_shape, dtype=dt, device=X.device)
    a_m = torch.zeros_like(a_e)
    xb, xnb = x * b, x * (1.0 - b)
    for idx, valid, w in _corners(X.shape, out_shape[2:], X.device, dt):
        at_e = at_e + _scatter(torch.where(valid, g * me * w, zero), idx, X.shape)
        at_m = at_m + _scatter(torch.where(valid, g * mm * w, zero), idx, X.shape)
        a_e = a_e + torch.where(valid, _gather(xb, idx) * w, zero)
        a_m = a_m + torch.where(valid, _gather(xnb, idx) * w, zero)
    dx = b * at_e + (1.0 - b) * at_m
    dbeta = (x * (at_e - at_m)).sum_to_size(Beta.shape)

    def dmask(mask, a):
        m = mask.to(dt)
        inside = (m >= 0) & (m <= 1)
        return torch.where(inside, g * a, zero).sum_to_size(mask.shape).to(mask.dtype)

    return dx.to(X.dtype), dmask(MaskEdscw, a_e), dmask(MaskEm, a_m), dbeta.to(Beta.dtype)


# ---------------------------------------------------------------- registration
@torch.library.custom_op("poolexport::ada_unpool", mutates_args=())
def ada_unpool(X: torch.Tensor, MaskEdscw: torch.Tensor, MaskEm: torch.Tensor, Beta: torch.Tensor) -> torch.Tensor:
    return ada_unpool_forward(X, MaskEdscw, MaskEm, Beta)


@torch.library.custom_op("poolexport::ada_unpool_backward", mutates_args=())
def ada_unpool_backward(grad: torch.Tensor, X: torch.Tensor, MaskEdscw: torch.Tensor, MaskEm: torch.Tensor,
                        Beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return ada_unpool_backward_impl(grad, X, MaskEdscw, MaskEm, Beta)


@ada_unpool.register_fake
def _(X, MaskEdscw, MaskEm, Beta):
    return X.new_empty(output_shape(X.shape, MaskEdscw.shape, MaskEm.shape, Beta.shape))


@ada_unpool_backward.register_fake
def _(grad, X, MaskEdscw, MaskEm, Beta):
    return torch.empty_like(X), torch.empty_like(MaskEdscw), torch.empty_like(MaskEm), torch.empty_like(Beta)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _grad(ctx, grad):
    return ada_unpool_backward(grad, *ctx.saved_tensors)


ada_unpool.register_autograd(_grad, setup_context=_setup)

__all__ = ["ada_unpool"]
