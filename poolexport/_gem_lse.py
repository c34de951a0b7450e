"""GeM (generalized-mean) and LSE (log-sum-exp) pooling, over whole axes or sliding windows.

    GeM:  y = (mean clamp(x, eps)^p)^(1/p)        Radenovic, Tolias, Chum, TPAMI 2019
    LSE:  y = (1/r) log(mean exp(r x))            Pinheiro, Collobert, CVPR 2015

Both are built from standard ONNX ops (ReduceMax/Min/Mean/Sum, Pow, Exp, Log, Where, Slice),
so their exports need no custom op. The reference implementations, computed literally,
overflow: cirtorch's ``gem`` (filipradenovic/cnnimageretrieval-pytorch,
cirtorch/layers/functional.py) raises clamp(x, eps) to the power p, and 1e4^3 > 65504 is
inf in fp16, 1e4^10 > 3.4e38 is inf in fp32; exp(r x) overflows at r x > 88 in fp32.
Here each window is shifted by its own extreme value first (both formulas do not depend on
the shift, so it carries no gradient)::

    GeM:  y = a * (mean (c / a)^p)^(1/p)          a = max c (p > 0), min c (p < 0)
    LSE:  y = a + (1/r) log(mean exp(r (x - a)))  a = max x (r > 0), min x (r < 0)

so every power or exponential lies in [0, 1], and the one at the extreme is exactly 1: the
mean is at least 1/n and its root or log is finite. p = 0 is the geometric mean
exp(mean log c), r = 0 the arithmetic mean (the limits). fp16 and bf16 inputs are computed
in float32 and rounded once at the end.

Non-finite values (the same rule in every runtime, since it is written with Where): a NaN
in a window gives NaN. GeM clamps -inf to eps; a +inf gives +inf for p > 0 (for p < 0 it
adds 0 to the mean, as inf^p = 0). LSE with r > 0: +inf gives +inf, -inf adds 0 to the
mean, an all -inf window gives -inf (r < 0: the mirror image). A window with no valid
position (all padding) outputs 0, as every windowed pool here (ONNX windowing).

Windows: the shift is per window, and windows overlap, so the windowed forms take each
kernel offset as a strided slice of the padded input (K = prod(kernel_size) slices, stacked
on a last axis) and reduce over that axis; memory is K times the output.
"""
from __future__ import annotations

import itertools
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as TF

from ._args import check_real, normalize_dims
from ._window import TORCH_OPS, WindowSpec, axis_output, window_spec_for_input

_Size = Union[int, Sequence[int]]
_Param = Union[float, torch.Tensor]
# no inf literal anywhere: a torch.export program stores float constants as JSON numbers,
# and poolexport's untrusted-file loader refuses "Infinity"


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # fp16/bf16: float32 inside (a Cast pair in the export), one rounding at the end
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _cast(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # no op when the dtype is already right: torch.export records even a no-op .to() as a
    # dtype assertion, which a program converted with .half() (--fp16) then fails
    return v if v.dtype == dtype else v.to(dtype)


def check_param(owner: str, name: str, value, positive: bool) -> _Param:
    """A fixed p / r (a finite real, > 0 when ``positive``) or a tensor of shape () or (C,)."""
    if isinstance(value, torch.Tensor):
        if value.dim() > 1 or not value.is_floating_point():
            raise ValueError(f"{owner}: {name} must be a float, a 0-d tensor or a 1-d per-channel tensor, "
                             f"got a {value.dim()}-d {value.dtype} tensor")
        return value
    v = check_real(owner, name, value)
    if positive and not v > 0:
        raise ValueError(f"{owner}: {name} must be > 0, got {v}")
    return v


def _view(param: _Param, ndim: int, channels: int, dtype, owner: str, name: str) -> _Param:
    """``param`` shaped to broadcast over an N x C x ... tensor of rank ``ndim`` (1-d: per channel)."""
    if not isinstance(param, torch.Tensor):
        return param
    param = _cast(param, dtype)
    if param.dim() == 1:
        if param.shape[0] != channels:
            raise ValueError(f"{owner}: per-channel {name} has {param.shape[0]} values, the input {channels} channels")
        return param.reshape((1, -1) + (1,) * (ndim - 2))
    return param


def _pads(spec: WindowSpec, spatial) -> tuple[list, list]:
    """Output sizes and the F.pad list (last axis first) that makes every window fit
    (the same rule as ``poolexport.functional``; symbolic sizes stay symbolic)."""
    k = spec.rank
    out, pad = [], []
    for i in range(k):
        o, b = axis_output(spatial[i], spec.kernel_shape[i], spec.strides[i], spec.pads[i], spec.pads[k + i],
                           spec.dilations[i], spec.ceil_mode, spec.auto_pad)
        span = (spec.kernel_shape[i] - 1) * spec.dilations[i] + 1
        out.append(o)
        pad = [b, TORCH_OPS.max((o - 1) * spec.strides[i] + span - spatial[i] - b, 0)] + pad
    return out, pad


def _stack_windows(v: torch.Tensor, spec: WindowSpec, pad: list, out) -> torch.Tensor:
    """(N, C, *S) -> (N, C, *out, K): the K kernel offsets of every window on a last axis
    (row-major over the kernel); padded positions hold 0."""
    vp = TF.pad(v, pad)
    parts = []
    for offset in itertools.product(*(range(kk) for kk in spec.kernel_shape)):
        index = (slice(None), slice(None)) + tuple(
            slice(o * d, o * d + (n - 1) * s + 1, s)
            for o, d, n, s in zip(offset, spec.dilations, out, spec.strides))
        parts.append(vp[index])
    return torch.stack(parts, -1)


def _windows(name: str, x: torch.Tensor, k: int, kernel_size, stride, padding, dilation, ceil_mode):
    """(x stacked as (N, C, *out, K), valid mask (1, 1, *out, K), valid count (1, 1, *out, 1))."""
    spec = window_spec_for_input(name, x, k, kernel_size, stride, padding, dilation, ceil_mode)
    out, pad = _pads(spec, list(x.shape[2:]))
    dtype = _compute_dtype(x)
    xc = _cast(x, dtype)
    stacked = _stack_windows(xc, spec, pad, out)
    # new_ones follows xc's dtype when run: a traced program converted to float16 stays consistent
    valid = _stack_windows(xc.new_ones((1, 1, *x.shape[2:])), spec, pad, out)
    count = valid.sum(-1, keepdim=True)
    return stacked, valid > 0, count


def _masked(v: torch.Tensor, valid: Optional[torch.Tensor], sign: int) -> torch.Tensor:
    """Padded positions at the dtype's extreme, below (-1) or above (+1) every finite value;
    a window that is all padding or all -inf (+inf) then has a finite extreme, which the
    callers' rules turn into the right answer."""
    if valid is None:
        return v
    return torch.where(valid, v, torch.full_like(v, sign * torch.finfo(v.dtype).max))


def _anchor(v: torch.Tensor, axes: list[int], valid, param: _Param) -> torch.Tensor:
    """The shift of each window: its max for a positive parameter, its min for a negative
    one; an infinite or empty window's shift is ``neutral`` (see the callers)."""
    hi = _masked(v, valid, -1).amax(axes, keepdim=True)
    if not isinstance(param, torch.Tensor):
        return hi if param > 0 else _masked(v, valid, 1).amin(axes, keepdim=True)
    lo = _masked(v, valid, 1).amin(axes, keepdim=True)
    return torch.where(param > 0, hi, lo)


def _mean(v: torch.Tensor, axes: list[int], valid, count) -> torch.Tensor:
    if valid is None:
        # a mean, not a sum over a count taken from x.shape: a dynamic-shape export must
        # not carry the example's count as a constant
        return v.mean(axes, keepdim=True)
    return torch.where(valid, v, torch.zeros_like(v)).sum(axes, keepdim=True) / count.clamp_min(1)


def _gem(c: torch.Tensor, p: _Param, axes: list[int], valid, count) -> torch.Tensor:
    """GeM of c (already clamped to >= eps, compute dtype) over ``axes``, keepdim."""
    a = _anchor(c, axes, valid, p).detach()
    # a is in [eps, inf) for a window with a valid position; +inf (a +inf in the window,
    # p > 0), NaN or an empty window: scale by 1, the non-finite values then make the result
    a = torch.where(torch.logical_and(a > 0, torch.isfinite(a)), a, torch.ones_like(a))
    if valid is not None:
        c = torch.where(valid, c, a)  # padding: a finite power (masked in the mean), so a finite gradient
    if isinstance(p, torch.Tensor):
        zero = p == 0
        p_safe = torch.where(zero, torch.ones_like(p), p)
    else:
        zero, p_safe = None, p
    m = _mean((c / a).pow(p_safe), axes, valid, count)
    if count is not None:
        m = torch.where(count > 0, m, torch.ones_like(m))  # an empty window: no 0^(1/p) (infinite gradient)
    y = a * m.pow(1.0 / p_safe)
    if zero is not None:
        # p = 0: the geometric mean (p's limit); computed only as a fallback value
        geo = a * torch.exp(_mean(torch.log(c / a), axes, valid, count))
        y = torch.where(zero, geo, y)
    return y


def _lse(v: torch.Tensor, r: _Param, axes: list[int], valid, count) -> torch.Tensor:
    """LSE of v (compute dtype) over ``axes``, keepdim."""
    a = _anchor(v, axes, valid, r).detach()
    # +-inf (an infinite value at the extreme, or an empty window) or NaN: shift by 0, the
    # exponentials then give +inf, 0 or NaN as the limits say
    a = torch.where(torch.isfinite(a), a, torch.zeros_like(a))
    if valid is not None:
        v = torch.where(valid, v, a)  # padding: exp(0) (masked in the mean), never an overflow
    if isinstance(r, torch.Tensor):
        zero = r == 0
        r_safe = torch.where(zero, torch.ones_like(r), r)
    else:
        zero, r_safe = None, r
    m = _mean(torch.exp((v - a) * r_safe), axes, valid, count)
    if count is not None:
        m = torch.where(count > 0, m, torch.ones_like(m))
    y = a + torch.log(m) / r_safe
    if zero is not None:
        y = torch.where(zero, _mean(v, axes, valid, count), y)  # r = 0: the mean (r's limit)
    return y


def _finish(y: torch.Tensor, x_dtype, axes: list[int], keepdim: bool) -> torch.Tensor:
    if not keepdim:
        y = y.squeeze(axes) if axes else y
    return _cast(y, x_dtype)


def _reduce_axes(name: str, x: torch.Tensor, dim) -> list[int]:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"{name}: input must be a floating-point torch.Tensor, got "
                         f"{getattr(x, 'dtype', type(x).__name__)}")
    return sorted(normalize_dims(name, x.dim(), dim))


def _reduce_param(name: str, arg: str, param: _Param, x: torch.Tensor, axes: list[int], dtype) -> _Param:
    if isinstance(param, torch.Tensor) and param.dim() == 1:
        if x.dim() < 2 or 1 in axes:
            raise ValueError(f"{name}: a per-channel {arg} needs axis 1 (C) kept, got dim={axes}")
    return _view(param, x.dim(), x.shape[1] if x.dim() > 1 else 0, dtype, name, arg)


def check_eps(name: str, eps) -> float:
    eps = check_real(name, "eps", eps)
    if not eps > 0:
        raise ValueError(f"{name}: eps must be > 0 (it keeps c^p and its gradient finite), got {eps}")
    return eps


def _clamp(x: torch.Tensor, eps: float) -> torch.Tensor:
    # where(x < eps, eps, x), not clamp: NaN fails the comparison and stays NaN in every
    # runtime (ONNX Clip/Max leave NaN handling to the implementation)
    return torch.where(x < eps, torch.full_like(x, eps), x)


def gem_pool_reduce(x: torch.Tensor, p: _Param = 3.0, dim=None, keepdim: bool = False,
                    eps: float = 1e-6) -> torch.Tensor:
    """GeM over axes ``dim`` (all if None): (mean clamp(x, eps)^p)^(1/p), computed scaled by
    the max so that no power overflows. ``p``: a float, or a tensor of shape () or (C,)
    (per channel; then axis 1 must not be reduced), learnable."""
    name = "gem_pool_reduce"
    axes = _reduce_axes(name, x, dim)
    p = check_param(name, "p", p, positive=False)
    eps = check_eps(name, eps)
    dtype = _compute_dtype(x)
    pv = _reduce_param(name, "p", p, x, axes, dtype)
    return _finish(_gem(_clamp(_cast(x, dtype), eps), pv, axes, None, None), x.dtype, axes, keepdim)


def lse_pool_reduce(x: torch.Tensor, r: _Param = 10.0, dim=None, keepdim: bool = False) -> torch.Tensor:
    """LSE pooling over axes ``dim`` (all if None): (1/r) log(mean exp(r x)), shifted by the
    max (timm's LsePlus2d formula). ``r``: a float, or a tensor of shape () or (C,)."""
    name = "lse_pool_reduce"
    axes = _reduce_axes(name, x, dim)
    r = check_param(name, "r", r, positive=False)
    dtype = _compute_dtype(x)
    rv = _reduce_param(name, "r", r, x, axes, dtype)
    return _finish(_lse(_cast(x, dtype), rv, axes, None, None), x.dtype, axes, keepdim)


def _gem_window(k: int):
    name = f"gem_pool{k}d"

    def fn(x: torch.Tensor, kernel_size: _Size, stride: Optional[_Size] = None, padding: Union[_Size, str] = 0,
           dilation: _Size = 1, ceil_mode: bool = False, p: _Param = 3.0, eps: float = 1e-6) -> torch.Tensor:
        p = check_param(name, "p", p, positive=False)
        eps = check_eps(name, eps)
        stacked, valid, count = _windows(name, x, k, kernel_size, stride, padding, dilation, ceil_mode)
        pv = _view(p, k + 3, x.shape[1], stacked.dtype, name, "p")
        y = _gem(_clamp(stacked, eps), pv, [k + 2], valid, count)
        y = torch.where(count > 0, y, torch.zeros_like(y))
        return _cast(y.squeeze(-1), x.dtype)

    fn.__name__ = name
    fn.__doc__ = (f"GeM pooling over {k} spatial axes: (mean clamp(a, eps)^p)^(1/p) per window over its valid "
                  "positions (padding excluded); p is a float or a tensor of shape () or (C,).")
    return fn


def _lse_window(k: int):
    name = f"lse_pool{k}d"

    def fn(x: torch.Tensor, kernel_size: _Size, stride: Optional[_Size] = None, padding: Union[_Size, str] = 0,
           dilation: _Size = 1, ceil_mode: bool = False, r: _Param = 10.0) -> torch.Tensor:
        r = check_param(name, "r", r, positive=False)
        stacked, valid, count = _windows(name, x, k, kernel_size, stride, padding, dilation, ceil_mode)
        rv = _view(r, k + 3, x.shape[1], stacked.dtype, name, "r")
        y = _lse(stacked, rv, [k + 2], valid, count)
        y = torch.where(count > 0, y, torch.zeros_like(y))
        return _cast(y.squeeze(-1), x.dtype)

    fn.__name__ = name
    fn.__doc__ = (f"LSE pooling over {k} spatial axes: (1/r) log(mean exp(r a)) per window over its valid "
                  "positions (padding excluded); r is a float or a tensor of shape () or (C,).")
    return fn


gem_pool1d, gem_pool2d, gem_pool3d = _gem_window(1), _gem_window(2), _gem_window(3)
lse_pool1d, lse_pool2d, lse_pool3d = _lse_window(1), _lse_window(2), _lse_window(3)

__all__ = ["gem_pool1d", "gem_pool2d", "gem_pool3d", "gem_pool_reduce",
           "lse_pool1d", "lse_pool2d", "lse_pool3d", "lse_pool_reduce"]
