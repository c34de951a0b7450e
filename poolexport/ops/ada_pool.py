"""The adaPool family as torch.library custom ops (Stergiou and Poppe, "AdaPool:
Exponential Adaptive Pooling for Information-Retaining Downsampling", IEEE TIP 2022;
repository alexandrosstergiou/adaPool).

Over one window a_1..a_n of valid positions with mean m:

* ``edscw_pool``: w_i = softmax_i(DSC(a_i, m)), DSC(a, m) = 2|a m| / (a^2 + m^2) the
  Dice-Sorensen coefficient (1 at a = m = 0), y = sum w_i a_i;
* ``idw_pool``: w_i proportional to 1 / |a_i - m|, y = sum w_i a_i; where some a_i
  equals m (a constant window, a kernel of one) the limit y = m;
* ``ada_pool``: y = beta * edscw + (1 - beta) * eM, eM = SoftPool (inverse temperature 1)
  and beta a learned mask broadcast over the output (N, C, *out) - the repository's
  ``AdaPool*d`` passes one of the output's spatial shape. beta is not clamped (the
  repository's default, non-native path does not either).

Stable for every finite input: DSC is evaluated on a / q, m / q (q = max(|a|, |m|)), so
DSC in [0, 1] and exp(DSC) in [1, e] (no shift needed); the mean and the IDW distances are
taken on values scaled by 2^-64 where max |a| exceeds 2^64 (ada_pool.h, the same rule as
SoftPool). Gradients are exact, including the weights' derivatives (the repository's
backward holds the weights constant), and ``ada_pool`` has a gradient for beta.

The functions here are the pure-torch reference (any device, any float dtype); the C++
twin is custom_ops/include/poolexport/ada_pool.h. On CPU float32/float16 the ops run the
library's native kernels instead (registered by ``_registry.define_pair``): the forward is
the ONNX Runtime kernel's own code (the same bits), the backward
custom_ops/torch/ada_cpu_backward.h. On CUDA the Python kernel hands the call to
``_native_ada_cuda`` where that module exists and takes the tensors (else the reference).
"""
from __future__ import annotations

import torch

from .._window import output_spatial
from . import _native
from ._registry import WINDOW_ARGS, define_pair
from ._windows import compute_dtype, gather_windows, scatter_windows, spec_from_attrs
from .soft_pool import soft_pool_windows, soft_pool_windows_backward

SCALE_ABOVE = 2.0**64  # limits.h kSoftScaleAbove: larger windows are summed scaled by 2^-64
SCALE = 2.0**-64

OPS = {"edscw_pool": "EdscwPool", "idw_pool": "IdwPool", "ada_pool": "AdaPool"}


def _check_input(op: str, x: torch.Tensor) -> None:
    if not x.is_floating_point():
        raise ValueError(f"{op}: input must be a floating-point tensor, got {x.dtype}")


# ---------------------------------------------------------------- per-window math
def _prepare(windows, valid):
    """(a k, valid, n, m k, k, amax): masked values scaled by k (1, or 2^-64 when the
    window's max |a| exceeds 2^64), the valid count, the scaled mean."""
    a = windows.masked_fill(~valid, 0.0)
    amax = a.abs().amax(dim=-1, keepdim=True)
    k = torch.where(amax > SCALE_ABOVE, torch.full_like(amax, SCALE), torch.ones_like(amax))
    ak = a * k
    n = valid.sum(dim=-1, keepdim=True).to(a.dtype)
    mk = ak.sum(dim=-1, keepdim=True) / n.clamp(min=1)
    return ak, n, mk, k, amax


def _finish(yk, k, amax, n):
    """y from the scaled sum: kept inside [-max|a|, max|a|] (a convex combination) and 0
    for an all-padding window."""
    ak = amax * k
    yk = torch.minimum(torch.maximum(yk, -ak), ak)
    return torch.where(n > 0, yk / k, torch.zeros_like(yk)).squeeze(-1)


def _dsc_parts(ak, mk):
    """DSC(a, m) and its partials dDSC/da, dDSC/dm (in the scaled units); partials are 0
    where a * m = 0 (the mean subgradient of |.|)."""
    q = torch.maximum(ak.abs(), mk.abs())
    safe = torch.where(q > 0, q, torch.ones_like(q))
    u, v = ak / safe, mk / safe
    r2 = u * u + v * v  # >= 1 where q > 0
    r2 = torch.where(q > 0, r2, torch.ones_like(r2))
    d = torch.where(q > 0, 2.0 * (u * v).abs() / r2, torch.ones_like(r2))
    s = torch.sign(u) * torch.sign(v)
    da = s * 2.0 * v * (v * v - u * u) / (r2 * r2) / safe
    dm = s * 2.0 * u * (u * u - v * v) / (r2 * r2) / safe
    return d, da, dm


def edscw_windows(windows, valid, with_parts=False):
    ak, n, mk, k, amax = _prepare(windows, valid)
    d, da, dm = _dsc_parts(ak, mk)
    e = torch.exp(d) * valid
    s = e.sum(dim=-1, keepdim=True)
    w = e / torch.where(s > 0, s, torch.ones_like(s))
    yk = (w * ak).sum(dim=-1, keepdim=True)
    y = _finish(yk, k, amax, n)
    if with_parts:
        return y, (ak, n, mk, w, yk, da, dm)
    return y


def edscw_windows_backward(grad, windows, valid):
    """g * [w_j (1 + (a_j - y) dDSC/da_j) + (1/n) sum_i w_i (a_i - y) dDSC/dm_i]."""
    _, (ak, n, mk, w, yk, da, dm) = edscw_windows(windows, valid, with_parts=True)
    t = (w * (ak - yk) * dm).sum(dim=-1, keepdim=True) / n.clamp(min=1)
    local = w * (1.0 + (ak - yk) * da) + t
    return grad.unsqueeze(-1) * local * valid


def idw_windows(windows, valid, with_parts=False):
    ak, n, mk, k, amax = _prepare(windows, valid)
    diff = ak - mk
    dist = torch.where(valid, diff.abs(), torch.full_like(diff, float("inf")))
    hit = (dist == 0).any(dim=-1, keepdim=True)
    dmin = dist.amin(dim=-1, keepdim=True)
    # weights dmin / dist_i in (0, 1]: the same ratios as 1 / dist_i, never overflowing
    inv = torch.where(valid & (dist > 0), dmin / torch.where(dist > 0, dist, torch.ones_like(dist)),
                      torch.zeros_like(dist))
    s = inv.sum(dim=-1, keepdim=True)
    w = inv / torch.where(s > 0, s, torch.ones_like(s))
    yk = torch.where(hit, mk, (w * ak).sum(dim=-1, keepdim=True))
    y = _finish(yk, k, amax, n)
    if with_parts:
        return y, (ak, n, mk, w, yk, hit, diff)
    return y


def idw_windows_backward(grad, windows, valid):
    """g * [w_j (1 - r_j) + (1/n) sum_i w_i r_i], r_i = (a_i - y) / (a_i - m); where some
    a_i equals m (y = m, not differentiable there) the mean's gradient 1/n."""
    _, (ak, n, mk, w, yk, hit, diff) = idw_windows(windows, valid, with_parts=True)
    nz = valid & (diff != 0)
    r = torch.where(nz, (ak - yk) / torch.where(nz, diff, torch.ones_like(diff)), torch.zeros_like(diff))
    t = (w * r).sum(dim=-1, keepdim=True) / n.clamp(min=1)
    local = torch.where(hit, 1.0 / n.clamp(min=1), w * (1.0 - r) + t)
    return grad.unsqueeze(-1) * local * valid


# ---------------------------------------------------------------- whole tensors
def _gather(op, X, attrs):
    _check_input(op, X)
    spec = spec_from_attrs(op, X.dim(), *attrs)
    dt = compute_dtype(X)
    windows, valid, out = gather_windows(X.to(dt), spec)
    return spec, windows, valid, out


def _shaped(X, out, flat):
    return flat.reshape(X.shape[0], X.shape[1], *out)


def _beta_for(op: str, beta: torch.Tensor, out_shape) -> torch.Tensor:
    if beta.dim() > len(out_shape) or any(b not in (1, o) for b, o in zip(reversed(beta.shape), reversed(out_shape))):
        raise ValueError(f"{op}: beta of shape {list(beta.shape)} does not broadcast to the output {list(out_shape)}")
    return beta


def _window_forward(op, fn, X, attrs):
    _, windows, valid, out = _gather(op, X, attrs)
    return _shaped(X, out, fn(windows, valid)).to(X.dtype)


def _window_backward(op, fn, grad, X, attrs):
    spec, windows, valid, _ = _gather(op, X, attrs)
    gw = fn(grad.to(windows.dtype).reshape(windows.shape[:-1]), windows, valid)
    return scatter_windows(gw, X.to(windows.dtype), spec).to(X.dtype)


def ada_parts(X, Beta, attrs):
    """(eDSCW, eM, beta) of ada_pool, in the compute dtype, shaped like the output."""
    _, windows, valid, out = _gather("AdaPool", X, attrs)
    e = _shaped(X, out, edscw_windows(windows, valid))
    s = _shaped(X, out, soft_pool_windows(windows, valid, 1.0))
    return e, s, _beta_for("AdaPool", Beta, e.shape).to(e.dtype)


def blend(b, e, s):
    """b * e + (1 - b) * s, kept between e and s where b is in [0, 1] (ada_pool.h)."""
    y = b * e + (1.0 - b) * s
    inside = (b >= 0) & (b <= 1)
    return torch.where(inside, torch.minimum(torch.maximum(y, torch.minimum(e, s)), torch.maximum(e, s)), y)


def ada_forward(X, Beta, attrs):
    e, s, b = ada_parts(X, Beta, attrs)
    return blend(b, e, s).to(X.dtype)


def ada_backward(grad, X, Beta, attrs):
    spec, windows, valid, out = _gather("AdaPool", X, attrs)
    e = _shaped(X, out, edscw_windows(windows, valid))
    s = _shaped(X, out, soft_pool_windows(windows, valid, 1.0))
    b = _beta_for("AdaPool", Beta, e.shape).to(e.dtype)
    g = grad.to(e.dtype)
    gb = torch.broadcast_to(b, g.shape)
    flat = windows.shape[:-1]
    gw = (edscw_windows_backward((g * gb).reshape(flat), windows, valid)
          + soft_pool_windows_backward((g * (1.0 - gb)).reshape(flat), windows, valid, 1.0) * valid)
    dx = scatter_windows(gw, X.to(e.dtype), spec).to(X.dtype)
    dbeta = ((e - s) * g).sum_to_size(Beta.shape).to(Beta.dtype)
    return dx, dbeta


# ---------------------------------------------------------------- registration
# the schemas' window arguments, in order
def _attrs(kernel_shape, strides, pads, dilations, ceil_mode, auto_pad):
    return (kernel_shape, strides, pads, dilations, ceil_mode, auto_pad)


CODES = {"EdscwPool": _native.EDSCW, "IdwPool": _native.IDW, "AdaPool": _native.ADA}


def _cuda_call(name, X, spec, beta, grad):
    """The CUDA kernels' result (poolexport/ops/_native_ada_cuda.py, where present and
    usable for these tensors), or None."""
    try:
        from . import _native_ada_cuda as cuda
    except ImportError:
        return None
    if not cuda.usable(X, beta):
        return None
    if grad is None:
        return cuda.forward(name, X, beta, spec)
    dx, dbeta = cuda.backward(name, grad, X, beta, spec)
    return dx if dbeta is None else (dx, dbeta)


def _native_call(name, X, attrs, beta=None, grad=None):
    """The native kernel's result (Y; dX, or (dX, dBeta) for AdaPool's backward), or None
    where the reference must run: float64/bfloat16, the reference selected, no kernel for
    the device; on CPU also a Beta of another dtype or device than X."""
    op = OPS[name]
    if not _native.use_native(X) or (grad is not None and grad.device != X.device):
        return None
    _check_input(op, X)
    spec = spec_from_attrs(op, X.dim(), *attrs)
    if beta is not None:
        _beta_for(op, beta, (X.shape[0], X.shape[1], *output_spatial(spec, X.shape[2:])))
    if X.device.type != "cpu":
        return _cuda_call(name, X, spec, beta, grad)
    if not _native.ada_available() or (beta is not None and (beta.dtype != X.dtype or beta.device != X.device)):
        return None
    return _native.ada(op, CODES[op], X, spec, beta, grad)


def _pair(name, fn, fn_backward):
    op = OPS[name]

    def reference(X, *attrs):
        return _window_forward(op, fn, X, attrs)

    def backward_reference(grad, X, *attrs):
        return _window_backward(op, fn_backward, grad, X, attrs)

    def kernel(X, *attrs):
        y = _native_call(name, X, attrs)
        return reference(X, *attrs) if y is None else y

    def backward_kernel(grad, X, *attrs):
        dx = _native_call(name, X, attrs, grad=grad)
        return backward_reference(grad, X, *attrs) if dx is None else dx

    def fake(X, *attrs):
        spec = spec_from_attrs(op, X.dim(), *attrs)
        return X.new_empty((X.shape[0], X.shape[1], *output_spatial(spec, X.shape[2:])))

    def backward_fake(grad, X, *attrs):
        return torch.empty_like(X)

    for f, suffix in ((reference, "reference"), (backward_reference, "backward_reference"), (kernel, "kernel"),
                      (backward_kernel, "backward_kernel")):
        f.__name__ = f.__qualname__ = f"{name}_{suffix}"
    return define_pair(name, WINDOW_ARGS, (reference, kernel, fake), (backward_reference, backward_kernel, backward_fake))


edscw_pool, edscw_pool_backward = _pair("edscw_pool", edscw_windows, edscw_windows_backward)
idw_pool, idw_pool_backward = _pair("idw_pool", idw_windows, idw_windows_backward)


def ada_pool_reference(X, Beta, kernel_shape, strides, pads, dilations, ceil_mode, auto_pad):
    return ada_forward(X, Beta, _attrs(kernel_shape, strides, pads, dilations, ceil_mode, auto_pad))


def ada_pool_backward_reference(grad, X, Beta, kernel_shape, strides, pads, dilations, ceil_mode, auto_pad):
    return ada_backward(grad, X, Beta, _attrs(kernel_shape, strides, pads, dilations, ceil_mode, auto_pad))


def _ada_kernel(X, Beta, *attrs):
    y = _native_call("ada_pool", X, attrs, beta=Beta)
    return ada_pool_reference(X, Beta, *attrs) if y is None else y


def _ada_backward_kernel(grad, X, Beta, *attrs):
    result = _native_call("ada_pool", X, attrs, beta=Beta, grad=grad)
    return ada_pool_backward_reference(grad, X, Beta, *attrs) if result is None else result


def _ada_fake(X, Beta, *attrs):
    spec = spec_from_attrs("AdaPool", X.dim(), *attrs)
    out = (X.shape[0], X.shape[1], *output_spatial(spec, X.shape[2:]))
    _beta_for("AdaPool", Beta, out)
    return X.new_empty(out)


def _ada_backward_fake(grad, X, Beta, *_):
    return torch.empty_like(X), torch.empty_like(Beta)


ada_pool, ada_pool_backward = define_pair(
    "ada_pool", f"Tensor Beta, {WINDOW_ARGS}",
    (ada_pool_reference, _ada_kernel, _ada_fake),
    (ada_pool_backward_reference, _ada_backward_kernel, _ada_backward_fake),
    grads=2,
)

__all__ = ["edscw_pool", "idw_pool", "ada_pool"]
