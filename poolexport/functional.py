"""The functions behind the ``poolexport.nn`` modules (``poolexport.nn.functional`` is
the same module, under the name torch users look for).

Windowed pools take PyTorch-style arguments (``kernel_size, stride=None, padding=0,
dilation=1, ceil_mode=False``); ``padding`` may also be ``"same"`` (ONNX SAME_UPPER, as
Keras pads) or ``"valid"``, in any case. Each argument's type and range is checked, and
an error names it. Padded positions are never part of a window unless an average pool
asks for ``count_include_pad=True``.

SoftPool and stochastic pooling run as ``poolexport`` custom ops. Everything else is
built from ops that ``torch.onnx`` exports to standard ONNX (Pad, Conv, MaxPool,
AveragePool, ReduceSum/Mean/Max, ReduceL2, Pow, Sqrt, Where, Resize), so those layers
need no custom op. Windowed pools follow ``poolexport._window`` exactly (ONNX windowing):
the input is padded explicitly, with the extra end padding that ``ceil_mode`` needs, and
windows are summed by a convolution with a ones kernel (which carries strides and
dilations). A window with no valid position outputs 0.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as TF

from ._args import check_bool, check_real, normalize_dims
from ._window import TORCH_OPS, WindowSpec, axis_output, window_spec_for_input
from . import ops as _ops
from .ops import _packed
from .ops._registry import direct
from .ops.stochastic_pool import MODES, reduce_stochastic_pool_tensor_seed, stochastic_pool_tensor_seed

# the ops as the layers call them: below the autograd layer when nothing is recorded
soft_pool, reduce_soft_pool = direct(_ops.soft_pool), direct(_ops.reduce_soft_pool)
_stochastic_int_seed, _stochastic_tensor_seed = direct(_ops.stochastic_pool), direct(stochastic_pool_tensor_seed)
_reduce_stochastic_int_seed = direct(_ops.reduce_stochastic_pool)
_reduce_stochastic_tensor_seed = direct(reduce_stochastic_pool_tensor_seed)


def stochastic_pool(X, kernel_shape, strides, pads, dilations, ceil_mode, auto_pad, mode, seed):
    """The StochasticPool op; ``seed`` an int, or a one-element int64 tensor (drawn inside
    a compiled graph: its ``tensor_seed`` overload)."""
    if isinstance(seed, torch.Tensor):
        return _stochastic_tensor_seed(X, kernel_shape, strides, pads, dilations, ceil_mode, auto_pad, mode, seed)
    return _stochastic_int_seed(X, kernel_shape, strides, pads, dilations, ceil_mode, auto_pad, mode, seed)


def reduce_stochastic_pool(X, axes, keepdims, mode, seed):
    """The ReduceStochasticPool op; ``seed`` an int or a one-element int64 tensor."""
    if isinstance(seed, torch.Tensor):
        return _reduce_stochastic_tensor_seed(X, axes, keepdims, mode, seed)
    return _reduce_stochastic_int_seed(X, axes, keepdims, mode, seed)


_Size = Union[int, Sequence[int]]
_CONV = {1: TF.conv1d, 2: TF.conv2d, 3: TF.conv3d}
_MAXPOOL = {1: TF.max_pool1d, 2: TF.max_pool2d, 3: TF.max_pool3d}
_TORCH_AVG = {1: TF.avg_pool1d, 2: TF.avg_pool2d, 3: TF.avg_pool3d}


def _window_args(name: str, x: torch.Tensor, k: int, kernel_size, stride, padding, dilation, ceil_mode):
    """(the public op's window arguments, checked against x; the packed tensor of the
    eager path or None). A small layer's call costs less than these checks, so a plain
    tensor's arguments are remembered per (arguments with their types, spatial size): a
    repeated call skips them; anything else is checked afresh and gets no packed tensor."""
    if type(x) is torch.Tensor and not torch.compiler.is_compiling() and not torch.jit.is_tracing():
        try:
            if (type(kernel_size) is int and (stride is None or type(stride) is int) and type(padding) is int
                    and type(dilation) is int and type(ceil_mode) is bool):  # the common call: plain ints
                key = (name, kernel_size, stride, padding, dilation, ceil_mode, x.dim(), x.is_floating_point(),
                       tuple(x.shape[2:]))
            else:  # exact types are not known here: keep them in the key, so 2.0 or True never hit 2's entry
                key = (name, k, _typed(kernel_size), _typed(stride), _typed(padding), _typed(dilation),
                       _typed(ceil_mode), x.dim(), x.is_floating_point(), tuple(x.shape[2:]))
            hit = _WINDOW_ARGS.get(key)
        except TypeError:  # an unhashable argument: no memo
            key = hit = None
        if hit is not None:
            return hit
    else:
        key = None
    spec = window_spec_for_input(name, x, k, kernel_size, stride, padding, dilation, ceil_mode)
    args = list(spec.kernel_shape), list(spec.strides), list(spec.pads), list(spec.dilations), spec.ceil_mode, spec.auto_pad
    if key is None:
        return args, None
    if len(_WINDOW_ARGS) >= 1024:
        _WINDOW_ARGS.clear()
    _WINDOW_ARGS[key] = entry = args, _packed.pack_window(*args)
    return entry


_WINDOW_ARGS: dict = {}
_window_pool_packed, _eager = _packed.window_pool_packed, _packed.eager


def _typed(v):
    """v with the type of each value in it, so that 2 and 2.0, or True and 1, differ."""
    if isinstance(v, (tuple, list)):
        return (type(v),) + tuple((type(e), e) for e in v)
    return type(v), v


def _soft(k: int):
    name = f"soft_pool{k}d"

    def fn(x: torch.Tensor, kernel_size: _Size, stride: Optional[_Size] = None, padding: Union[_Size, str] = 0,
           dilation: _Size = 1, ceil_mode: bool = False, beta: float = 1.0) -> torch.Tensor:
        args, packed = _window_args(name, x, k, kernel_size, stride, padding, dilation, ceil_mode)
        if packed is not None and _eager(x):
            return _window_pool_packed(x, packed, float(beta), 0, 0)
        return soft_pool(x, *args, float(beta))

    fn.__name__ = f"soft_pool{k}d"
    fn.__doc__ = f"SoftPool over {k} spatial axes: sum(softmax(beta * w) * w) per window."
    return fn


def _stochastic(k: int):
    def fn(x: torch.Tensor, kernel_size: _Size, stride: Optional[_Size] = None, padding: Union[_Size, str] = 0,
           dilation: _Size = 1, ceil_mode: bool = False, mode: str = "expectation", seed=0) -> torch.Tensor:
        name = f"stochastic_pool{k}d"
        if mode not in MODES:
            raise ValueError(f"{name}: mode must be one of {MODES}, got {mode!r}")
        args, packed = _window_args(name, x, k, kernel_size, stride, padding, dilation, ceil_mode)
        if isinstance(seed, torch.Tensor):
            return _stochastic_tensor_seed(x, *args, mode, seed)
        if packed is not None and _eager(x):
            return _window_pool_packed(x, packed, 0.0, _packed.MODE_CODES[mode], int(seed))
        return _stochastic_int_seed(x, *args, mode, int(seed))

    fn.__name__ = f"stochastic_pool{k}d"
    fn.__doc__ = (f"Stochastic pooling over {k} spatial axes: mode='sample' picks a_i with p_i = relu(a_i)/sum, "
                  "mode='expectation' returns sum(relu(a)^2)/sum(relu(a)). seed: an int, or a one-element int64 "
                  "tensor (the same picks).")
    return fn


soft_pool1d, soft_pool2d, soft_pool3d = _soft(1), _soft(2), _soft(3)
stochastic_pool1d, stochastic_pool2d, stochastic_pool3d = _stochastic(1), _stochastic(2), _stochastic(3)


def _reduce_dims(name: str, x: torch.Tensor, dim) -> list[int]:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: input must be a torch.Tensor, got {type(x).__name__}")
    return normalize_dims(name, x.dim(), dim)


def soft_pool_reduce(x: torch.Tensor, dim=None, keepdim: bool = False, beta: float = 1.0) -> torch.Tensor:
    """SoftPool over whole axes ``dim`` (all axes if None); ONNX ReduceSoftPool."""
    return reduce_soft_pool(x, _reduce_dims("soft_pool_reduce", x, dim), bool(keepdim), float(beta))


def stochastic_pool_reduce(x: torch.Tensor, dim=None, keepdim: bool = False, mode: str = "expectation",
                           seed=0) -> torch.Tensor:
    """Stochastic pooling over whole axes ``dim``; ONNX ReduceStochasticPool. seed: an int,
    or a one-element int64 tensor (the same picks)."""
    if mode not in MODES:
        raise ValueError(f"stochastic_pool_reduce: mode must be one of {MODES}, got {mode!r}")
    return reduce_stochastic_pool(x, _reduce_dims("stochastic_pool_reduce", x, dim), bool(keepdim), mode,
                                  seed if isinstance(seed, torch.Tensor) else int(seed))


# ---------------------------------------------------------------- windows
def _explicit_pads(spec: WindowSpec, spatial) -> tuple[list, list]:
    """Output shape and the F.pad list (last axis first) that makes every window fit.

    The end pad is exactly what the last window needs, so ``ceil_mode`` and SAME padding
    become plain zero/-inf padding followed by an unpadded, floor-mode window. Written
    with ``axis_output`` and ``TORCH_OPS`` so that symbolic sizes (torch.export with
    dynamic spatial dims, torch.jit.trace) stay symbolic instead of being baked into the graph.
    """
    k = spec.rank
    out, pad = [], []
    for i in range(k):
        o, b = axis_output(spatial[i], spec.kernel_shape[i], spec.strides[i], spec.pads[i], spec.pads[k + i],
                           spec.dilations[i], spec.ceil_mode, spec.auto_pad)
        span = (spec.kernel_shape[i] - 1) * spec.dilations[i] + 1
        out.append(o)
        pad = [b, TORCH_OPS.max((o - 1) * spec.strides[i] + span - spatial[i] - b, 0)] + pad
    return out, pad


def _window_sum(v: torch.Tensor, spec: WindowSpec, pad: list[int], out) -> torch.Tensor:
    """Sum of each window of v (N, C, *S) over valid positions (padding is 0)."""
    n, c, *spatial = v.shape
    k = spec.rank
    flat = TF.pad(v.reshape(n * c, 1, *spatial), pad)
    # new_ones follows v's dtype when run: a traced module converted to float16 stays consistent
    ones = v.new_ones((1, 1, *spec.kernel_shape))
    s = _CONV[k](flat, ones, stride=spec.strides, dilation=spec.dilations)
    return s.reshape(n, c, *out)


def _window_count(x: torch.Tensor, spec: WindowSpec, pad: list, out, include_pad: bool = False) -> torch.Tensor:
    """Number of valid positions per window, shape (1, 1, *out). With ``include_pad`` the
    declared padding counts too (``count_include_pad``: pads or the SAME padding), but not
    the extra end padding that only ``ceil_mode`` adds (PyTorch's and ONNX Runtime's rule)."""
    ones = x.new_ones((1, 1, *x.shape[2:]))
    if include_pad:
        k = spec.rank
        declared, rest = [], []
        for j in range(k):  # F.pad order: last axis first
            b, e = pad[2 * j], pad[2 * j + 1]
            end = e if spec.auto_pad != "NOTSET" else TORCH_OPS.min(e, spec.pads[2 * k - 1 - j])
            declared += [b, end]
            rest += [0, e - end]
        ones = TF.pad(TF.pad(ones, declared, value=1.0), rest)
        return _window_sum(ones, spec, [0] * (2 * k), out)
    return _window_sum(ones, spec, pad, out)


def _safe_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    pos = b > 0
    return torch.where(pos, a / torch.where(pos, b, torch.ones_like(b)), torch.zeros_like(a))


def _safe_root(s: torch.Tensor, p: float) -> torch.Tensor:
    """s ** (1/p) with value 0 and gradient 0 at s == 0 (an all-zero window after ReLU
    is common; a plain pow would give an infinite gradient there)."""
    pos = s > 0
    r = torch.where(pos, s, torch.ones_like(s))
    r = torch.sqrt(r) if p == 2 else r.pow(1.0 / p)
    return torch.where(pos, r, torch.zeros_like(r))


def _check_p(name: str, p) -> float:
    """A finite p >= 1 (max pooling is the p = inf case)."""
    return check_real(name, "norm_type", p, 1.0)


def _abs_pow(x: torch.Tensor, p: float) -> torch.Tensor:
    return x * x if p == 2 else x.abs().pow(p)


def _lp(k: int):
    name = f"lp_pool{k}d"

    def fn(x: torch.Tensor, norm_type: float, kernel_size: _Size, stride: Optional[_Size] = None,
           ceil_mode: bool = False, *, padding: Union[_Size, str] = 0, dilation: _Size = 1,
           mean: bool = False) -> torch.Tensor:
        p = _check_p(name, norm_type)
        spec = window_spec_for_input(name, x, k, kernel_size, stride, padding, dilation, ceil_mode)
        out, pad = _explicit_pads(spec, list(x.shape[2:]))
        s = _window_sum(_abs_pow(x, p), spec, pad, out)
        if mean:
            s = _safe_div(s, _window_count(x, spec, pad, out))
        return _safe_root(s, p)

    fn.__name__ = name
    fn.__doc__ = (f"Lp pooling over {k} spatial axes: (sum |a|^p)^(1/p) per window, or with mean=True "
                  "(mean |a|^p)^(1/p) over the window's valid positions (p=2: RMS). Argument order follows "
                  f"torch.nn.functional.lp_pool{k}d; padding, dilation and 'same'/'valid' are extensions.")
    return fn


lp_pool1d, lp_pool2d, lp_pool3d = _lp(1), _lp(2), _lp(3)


def _torch_window(spec: WindowSpec) -> bool:
    """Whether torch's own pooling takes this window: explicit symmetric pads of at most
    half the kernel, no dilation (torch's average pools have none)."""
    k = spec.rank
    return (spec.auto_pad == "NOTSET" and all(d == 1 for d in spec.dilations)
            and spec.pads[:k] == spec.pads[k:] and all(2 * p <= kk for p, kk in zip(spec.pads, spec.kernel_shape)))


def _avg(k: int):
    name = f"avg_pool{k}d"

    def fn(x: torch.Tensor, kernel_size: _Size, stride: Optional[_Size] = None, padding: Union[_Size, str] = 0,
           dilation: _Size = 1, ceil_mode: bool = False, count_include_pad: bool = False) -> torch.Tensor:
        spec = window_spec_for_input(name, x, k, kernel_size, stride, padding, dilation, ceil_mode)
        check_bool(name, "count_include_pad", count_include_pad)
        if count_include_pad and _torch_window(spec):
            # exports as ONNX AveragePool with count_include_pad=1. torch has no CPU float16
            # kernel for avg_pool3d (NotImplementedError): float32 there, cast back
            xc = x.float() if k == 3 and x.dtype == torch.float16 and x.device.type == "cpu" else x
            y = _TORCH_AVG[k](xc, spec.kernel_shape, spec.strides, spec.pads[:k], spec.ceil_mode, True)
            return y.to(x.dtype)
        out, pad = _explicit_pads(spec, list(x.shape[2:]))
        return _safe_div(_window_sum(x, spec, pad, out), _window_count(x, spec, pad, out, count_include_pad))

    fn.__name__ = name
    fn.__doc__ = (f"Average pooling over {k} spatial axes with dilation (ONNX AveragePool-19). Padding is "
                  "excluded from the count unless ``count_include_pad=True`` (torch's and Keras's other "
                  "convention): then the declared padding counts, the extra end of ``ceil_mode`` does not.")
    return fn


def _max(k: int):
    name = f"max_pool{k}d"

    def fn(x: torch.Tensor, kernel_size: _Size, stride: Optional[_Size] = None, padding: Union[_Size, str] = 0,
           dilation: _Size = 1, ceil_mode: bool = False, return_indices: bool = False):
        spec = window_spec_for_input(name, x, k, kernel_size, stride, padding, dilation, ceil_mode)
        check_bool(name, "return_indices", return_indices)
        out, pad = _explicit_pads(spec, list(x.shape[2:]))
        padded = TF.pad(x, pad, value=float("-inf"))
        y, idx = _MAXPOOL[k](padded, spec.kernel_shape, spec.strides, 0, spec.dilations, return_indices=True)
        # only a window lying wholly in the padding can be -inf: ONNX windowing says 0
        y = torch.where(_window_count(x, spec, pad, out) > 0, y, torch.zeros_like(y))
        if not return_indices:
            return y
        return y, _unpadded_index(idx, x.shape[2:], padded.shape[2:], pad)

    fn.__name__ = name
    fn.__doc__ = (f"Max pooling over {k} spatial axes with ONNX windowing (any padding, 'same'/'valid'). "
                  "``return_indices=True`` also returns torch's indices (flattened within each (n, c) plane "
                  "of the input), for MaxUnpool; the export carries ONNX MaxPool's Indices output.")
    return fn


def _unpadded_index(idx: torch.Tensor, spatial, padded, pad: list) -> torch.Tensor:
    """Indices into the explicitly padded input -> torch's, into the input itself. A max is
    never at a -inf padding position of a window that has a valid one."""
    k = len(spatial)
    flat = torch.zeros_like(idx)
    rest = idx
    scale = 1
    for i in reversed(range(k)):
        # rest - q * size, not rest % size: with a dynamic (symbolic) size, % is
        # aten.remainder.Scalar, which torch.onnx cannot translate; the
        # indices are >= 0, so both are the same
        quotient = rest // padded[i]
        coord = rest - quotient * padded[i] - pad[2 * (k - 1 - i)]
        rest = quotient
        flat = flat + coord * scale
        scale = scale * spatial[i]
    return flat


avg_pool1d, avg_pool2d, avg_pool3d = _avg(1), _avg(2), _avg(3)
max_pool1d, max_pool2d, max_pool3d = _max(1), _max(2), _max(3)
_AVG = {1: avg_pool1d, 2: avg_pool2d, 3: avg_pool3d}
_MAX = {1: max_pool1d, 2: max_pool2d, 3: max_pool3d}


def _alpha(alpha) -> torch.Tensor | float:
    return alpha if isinstance(alpha, torch.Tensor) else float(alpha)


def _mixed(k: int):
    name = f"mixed_pool{k}d"

    def fn(x: torch.Tensor, kernel_size: _Size, stride: Optional[_Size] = None, padding: Union[_Size, str] = 0,
           dilation: _Size = 1, ceil_mode: bool = False, alpha: Union[float, torch.Tensor] = 0.5) -> torch.Tensor:
        window_spec_for_input(name, x, k, kernel_size, stride, padding, dilation, ceil_mode)
        a = _alpha(alpha)
        args = (kernel_size, stride, padding, dilation, ceil_mode)
        return a * _MAX[k](x, *args) + (1 - a) * _AVG[k](x, *args)

    fn.__name__ = name
    fn.__doc__ = f"Mixed pooling over {k} spatial axes: alpha * max + (1 - alpha) * avg (padding excluded)."
    return fn


mixed_pool1d, mixed_pool2d, mixed_pool3d = _mixed(1), _mixed(2), _mixed(3)


def _avg_max(k: int, cat: bool):
    name = f"{'cat_' if cat else ''}avg_max_pool{k}d"

    def fn(x: torch.Tensor, kernel_size: _Size, stride: Optional[_Size] = None, padding: Union[_Size, str] = 0,
           dilation: _Size = 1, ceil_mode: bool = False) -> torch.Tensor:
        window_spec_for_input(name, x, k, kernel_size, stride, padding, dilation, ceil_mode)
        args = (kernel_size, stride, padding, dilation, ceil_mode)
        avg, mx = _AVG[k](x, *args), _MAX[k](x, *args)
        return torch.cat([avg, mx], 1) if cat else 0.5 * (avg + mx)

    fn.__name__ = name
    what = "catavgmax: concat(avg, max) on the channel axis (2C channels)" if cat else "avgmax: 0.5 * (avg + max)"
    fn.__doc__ = f"timm's {what} over {k} spatial axes, padding excluded."
    return fn


avg_max_pool1d, avg_max_pool2d, avg_max_pool3d = _avg_max(1, False), _avg_max(2, False), _avg_max(3, False)
cat_avg_max_pool1d, cat_avg_max_pool2d, cat_avg_max_pool3d = _avg_max(1, True), _avg_max(2, True), _avg_max(3, True)


# ---------------------------------------------------------------- reductions over axes
def avg_pool_reduce(x: torch.Tensor, dim=None, keepdim: bool = False) -> torch.Tensor:
    """Mean over axes ``dim`` (all if None); ONNX ReduceMean / GlobalAveragePool."""
    return x.mean(_reduce_dims("avg_pool_reduce", x, dim), keepdim=keepdim)


def max_pool_reduce(x: torch.Tensor, dim=None, keepdim: bool = False) -> torch.Tensor:
    """Maximum over axes ``dim``; ONNX ReduceMax / GlobalMaxPool."""
    return x.amax(_reduce_dims("max_pool_reduce", x, dim), keepdim=keepdim)


def lp_pool_reduce(x: torch.Tensor, norm_type: float = 2.0, dim=None, keepdim: bool = False,
                   mean: bool = False) -> torch.Tensor:
    """(sum |a|^p)^(1/p) over axes ``dim``; ``mean=True`` gives (mean |a|^p)^(1/p) (RMS for p=2).

    torch.linalg.vector_norm exports as ONNX ReduceL2 (p=2) / ReduceL1 (p=1), and its
    backward is 0, not NaN, where the norm is 0; the mean form is ReduceMean of |a|^p.
    """
    p = _check_p("lp_pool_reduce", norm_type)
    dims = _reduce_dims("lp_pool_reduce", x, dim)
    if mean:
        # a mean, not the norm over a count taken from x.shape: an exported graph with
        # dynamic sizes must not carry the example's count as a constant
        return _safe_root(_abs_pow(x, p).mean(dims, keepdim=keepdim), p)
    return torch.linalg.vector_norm(x, ord=p, dim=dims, keepdim=keepdim)


def mixed_pool_reduce(x: torch.Tensor, dim=None, keepdim: bool = False,
                      alpha: Union[float, torch.Tensor] = 0.5) -> torch.Tensor:
    """alpha * max + (1 - alpha) * mean over axes ``dim``."""
    dims = _reduce_dims("mixed_pool_reduce", x, dim)
    a = _alpha(alpha)
    return a * x.amax(dims, keepdim=keepdim) + (1 - a) * x.mean(dims, keepdim=keepdim)


def avg_max_pool_reduce(x: torch.Tensor, dim=None, keepdim: bool = False) -> torch.Tensor:
    """0.5 * (mean + max) over axes ``dim`` (timm's avgmax; seed 002's AvgMaxPool is twice it)."""
    dims = _reduce_dims("avg_max_pool_reduce", x, dim)
    return 0.5 * (x.mean(dims, keepdim=keepdim) + x.amax(dims, keepdim=keepdim))


def cat_avg_max_pool_reduce(x: torch.Tensor, dim=None, keepdim: bool = False) -> torch.Tensor:
    """concat(mean, max) over axes ``dim`` on the channel axis (timm's catavgmax): global
    pooling gives N x 2C, pooling across channels (``dim=1, keepdim=True``) N x 2 x D1.."""
    dims = _reduce_dims("cat_avg_max_pool_reduce", x, dim)
    if not keepdim and min(dims) <= 1:
        raise ValueError("cat_avg_max_pool_reduce: without keepdim the reduced axes must leave N and C in place "
                         f"(concatenation is on axis 1), got dim={dim!r}")
    return torch.cat([x.mean(dims, keepdim=keepdim), x.amax(dims, keepdim=keepdim)], 1)


# ---------------------------------------------------------------- upsampling
UPSAMPLE_MODES = ("nearest", "bilinear")


def upsample(x: torch.Tensor, scale_factor: Union[float, Sequence[float]] = 2, mode: str = "nearest") -> torch.Tensor:
    """Upsampling by ``scale_factor`` per spatial axis (output size floor(n * s)); ONNX Resize.

    "nearest" repeats each value (Keras ``UpSampling2D``, seed 004; output row i reads
    input row floor(i / s), seed 002's ``nearest_upsample``). "bilinear" (4-D input) uses
    half-pixel centres, the convention of torch (``align_corners=False``) and of Keras's
    ``UpSampling2D(interpolation="bilinear")``.
    """
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"upsample: mode must be one of {UPSAMPLE_MODES}, got {mode!r}")
    if mode == "bilinear" and x.dim() != 4:
        raise ValueError(f"upsample: mode='bilinear' needs a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
    return TF.interpolate(x, scale_factor=scale_factor, mode=mode, align_corners=False if mode == "bilinear" else None)


# ---------------------------------------------------------------- normalisation, bilinear
def local_response_norm(x: torch.Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75,
                        bias: float = 1.0) -> torch.Tensor:
    """Local response normalisation with ONNX LRN semantics.

    y = x / (bias + alpha / size * square_sum) ** beta, where square_sum at channel c sums
    x^2 over channels [c - floor((size-1)/2), c + ceil((size-1)/2)]. For an even ``size``
    this window is one channel later than torch.nn.functional.local_response_norm's.
    """
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"local_response_norm: size must be a positive int, got {size!r}")
    if x.dim() < 3:
        raise ValueError(f"local_response_norm: input must be N x C x D1.., got shape {tuple(x.shape)}")
    n, c = x.shape[:2]
    sq = (x * x).reshape(n, 1, c, -1)
    begin = (size - 1) // 2
    sq = TF.pad(sq, (0, 0, begin, size - 1 - begin))
    # avg_pool includes the zero padding: mean over `size` channels = square_sum / size
    mean_sq = TF.avg_pool2d(sq, (size, 1), stride=1).reshape(x.shape)
    return x / (bias + alpha * mean_sq).pow(beta)


def bilinear_pool(x: torch.Tensor, y: Optional[torch.Tensor] = None, signed_sqrt: bool = True,
                  normalize: bool = True, eps: float = 1e-12) -> torch.Tensor:
    """Bilinear pooling (Lin, RoyChowdhury, Maji, ICCV 2015).

    B = mean over locations l of x_l y_l^T (x: N,C1,*S; y: N,C2,*S; y defaults to x),
    flattened to (N, C1*C2), then sign(B) * sqrt(|B|) and L2 normalisation. ``eps`` keeps
    the square root's gradient finite near 0 and guards the norm's division.
    """
    if y is None:
        y = x
    if x.dim() < 3 or x.shape[0] != y.shape[0] or x.shape[2:] != y.shape[2:]:
        raise ValueError(f"bilinear_pool: inputs must be N x C x D1.. with equal N and spatial shape, "
                         f"got {tuple(x.shape)} and {tuple(y.shape)}")
    n = x.shape[0]
    a = x.reshape(n, x.shape[1], -1)
    b = y.reshape(n, y.shape[1], -1)
    z = torch.bmm(a, b.transpose(1, 2)) / a.shape[-1]
    z = z.reshape(n, -1)
    if signed_sqrt:
        z = torch.sign(z) * torch.sqrt(z.abs() + eps)
    if normalize:
        z = z / z.norm(dim=1, keepdim=True).clamp_min(eps)
    return z



__all__ = [
    "soft_pool1d", "soft_pool2d", "soft_pool3d", "stochastic_pool1d", "stochastic_pool2d", "stochastic_pool3d",
    "soft_pool_reduce", "stochastic_pool_reduce",
    "lp_pool1d", "lp_pool2d", "lp_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "max_pool1d", "max_pool2d", "max_pool3d", "mixed_pool1d", "mixed_pool2d", "mixed_pool3d",
    "avg_max_pool1d", "avg_max_pool2d", "avg_max_pool3d", "cat_avg_max_pool1d", "cat_avg_max_pool2d",
    "cat_avg_max_pool3d", "avg_pool_reduce", "max_pool_reduce", "lp_pool_reduce", "mixed_pool_reduce",
    "avg_max_pool_reduce", "cat_avg_max_pool_reduce", "upsample", "local_response_norm", "bilinear_pool",
]

# ---------------------------------------------------------------- GeM and LSE pooling (poolexport._gem_lse)
from ._gem_lse import (gem_pool1d, gem_pool2d, gem_pool3d, gem_pool_reduce, lse_pool1d, lse_pool2d,  # noqa: E402
                       lse_pool3d, lse_pool_reduce)

__all__ += ["gem_pool1d", "gem_pool2d", "gem_pool3d", "gem_pool_reduce",
            "lse_pool1d", "lse_pool2d", "lse_pool3d", "lse_pool_reduce"]

# ---------------------------------------------------------------- generalized max pooling (poolexport._gmp)
from ._gmp import generalized_max_pool, generalized_max_pool_reduce  # noqa: E402

__all__ += ["generalized_max_pool", "generalized_max_pool_reduce"]
