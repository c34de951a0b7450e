"""Output shapes, attribute validation and kernel arguments of the TensorRT plugins.

Plain functions, written once for two kinds of numbers:

* Python ints (tests, the GPU launch test, the runner's checks), with validation;
* TensorRT's symbolic ``tensorrt.plugin.ShapeExpr`` (engine build time, dynamic shapes).
  ShapeExpr supports only ``+ - * //`` and ``<`` with the expression on the LEFT, plus
  ``tensorrt.plugin.cdiv/max/min``; there are no Python branches on its value. So every
  formula below keeps the size operand on the left and expresses the ceil_mode rule with
  ``<`` (TensorRT's ``DimensionOperation.LESS`` yields 0 or 1).

The output-size rule is ONNX ``AveragePool``'s, coded once in ``poolexport/_window.py``
(``axis_output``, written in the operator subset above) and used here with ``trt_ops``.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Mapping, Sequence

from .._window import INT_OPS, axis_output
from . import abi

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")
STOCHASTIC_MODES = ("expectation", "sample")
WINDOWED_OPS = ("SoftPool", "StochasticPool")
REDUCE_OPS = ("ReduceSoftPool", "ReduceStochasticPool")
ADA_WINDOW_OPS = ("EdscwPool", "IdwPool", "AdaPool")  # windowed, no attribute of their own
UNPOOL_OPS = ("AdaUnpool",)


def trt_ops(trtp) -> SimpleNamespace:
    """The same operations over ``tensorrt.plugin`` ShapeExprs (pass the imported module)."""
    return SimpleNamespace(cdiv=trtp.cdiv, max=trtp.max, min=trtp.min, lt=lambda a, b: a < b, symbolic=True)


# ------------------------------------------------------------------ attributes
@dataclass(frozen=True)
class WindowAttrs:
    kernel_shape: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]  # begins..., ends...
    dilations: tuple[int, ...]
    ceil_mode: bool
    auto_pad: str

    @property
    def k(self) -> int:
        return len(self.kernel_shape)


def _ints(op: str, name: str, value) -> tuple[int, ...]:
    if value is None:
        return ()
    try:
        return tuple(int(v) for v in value)
    except TypeError:
        raise ValueError(f"{op}: {name} must be a list of integers, got {value!r}") from None


def window_attrs(op: str, rank: int, kernel_shape, strides=(), pads=(), dilations=(), ceil_mode=0,
                 auto_pad="NOTSET") -> WindowAttrs:
    """Validate ONNX-form window attributes for an input of ``rank`` (N, C, spatial...)."""
    k = int(rank) - 2
    if k not in (1, 2, 3):
        raise ValueError(f"{op}: X must be N x C x D1..Dk with k in 1..3 (rank 3-5), got rank {rank}")
    kernel = _ints(op, "kernel_shape", kernel_shape)
    if len(kernel) != k:
        raise ValueError(f"{op}: kernel_shape has {len(kernel)} values for a {k}-D input")
    stride = _ints(op, "strides", strides) or (1,) * k
    pad = _ints(op, "pads", pads) or (0,) * (2 * k)
    dil = _ints(op, "dilations", dilations) or (1,) * k
    for name, v, n in (("strides", stride, k), ("pads", pad, 2 * k), ("dilations", dil, k)):
        if len(v) != n:
            raise ValueError(f"{op}: {name} must have {n} values, got {list(v)}")
    if any(v <= 0 for v in kernel):
        raise ValueError(f"{op}: kernel_shape must be positive, got {list(kernel)}")
    if any(v <= 0 for v in stride):
        raise ValueError(f"{op}: strides must be positive, got {list(stride)}")
    if any(v <= 0 for v in dil):
        raise ValueError(f"{op}: dilations must be positive, got {list(dil)}")
    if any(v < 0 for v in pad):
        raise ValueError(f"{op}: pads must be non-negative, got {list(pad)}")
    if int(ceil_mode) not in (0, 1):
        raise ValueError(f"{op}: ceil_mode must be 0 or 1, got {ceil_mode!r}")
    if auto_pad not in AUTO_PADS:
        raise ValueError(f"{op}: auto_pad must be one of {AUTO_PADS}, got {auto_pad!r}")
    return WindowAttrs(kernel, stride, pad, dil, bool(int(ceil_mode)), str(auto_pad))


def reduce_axes(op: str, rank: int, axes) -> tuple[int, ...]:
    """Sorted non-negative axes (ReduceMean's meaning: absent or empty = all axes)."""
    axes = _ints(op, "axes", axes)
    if not axes:
        return tuple(range(rank))
    norm = []
    for a in axes:
        if not -rank <= a < rank:
            raise ValueError(f"{op}: axes value {a} is out of range for a {rank}-D input")
        norm.append(a % rank)
    if len(set(norm)) != len(norm):
        raise ValueError(f"{op}: axes contain duplicates: {list(axes)}")
    return tuple(sorted(norm))


def soft_args(op: str, beta) -> list[int]:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise ValueError(f"{op}: beta must be a float, got {beta!r}")
    return [abi.float_bits(beta)]


def stochastic_args(op: str, mode, seed) -> list[int]:
    if mode not in STOCHASTIC_MODES:
        raise ValueError(f"{op}: mode must be one of {STOCHASTIC_MODES}, got {mode!r}")
    if isinstance(seed, bool) or not -(1 << 63) <= int(seed) < (1 << 64):
        raise ValueError(f"{op}: seed must be a 64-bit integer, got {seed!r}")
    lo, hi = abi.seed_words(int(seed))
    return [1 if mode == "sample" else 0, lo, hi]


# ------------------------------------------------------------------ windowed form
def window_output(attrs: WindowAttrs, spatial: Sequence, ops=INT_OPS, op: str = "SoftPool"):
    """Output spatial sizes and effective begin pads; validates window spans for ints."""
    k = attrs.k
    if len(spatial) != k:
        raise ValueError(f"{op}: X has {len(spatial)} spatial axes, kernel_shape has {k}")
    out, begin = [], []
    for i in range(k):
        n = spatial[i]
        if not ops.symbolic:
            n = int(n)
            span = (attrs.kernel_shape[i] - 1) * attrs.dilations[i] + 1
            padded = n + attrs.pads[i] + attrs.pads[k + i] if attrs.auto_pad == "NOTSET" else n
            if attrs.auto_pad in ("NOTSET", "VALID") and span > padded:
                raise ValueError(
                    f"{op}: kernel_shape: window span {span} exceeds the padded input size {padded} on spatial axis {i}"
                )
        o, b = axis_output(n, attrs.kernel_shape[i], attrs.strides[i], attrs.pads[i], attrs.pads[k + i],
                           attrs.dilations[i], attrs.ceil_mode, attrs.auto_pad, ops)
        out.append(o)
        begin.append(b)
    return out, begin


def window_kernel_args(attrs: WindowAttrs, shape: Sequence, ops=INT_OPS, op: str = "SoftPool"):
    """(the 20 windowing int32 arguments of the ABI, output shape) for input ``shape``."""
    n, c, *spatial = shape
    out, begin = window_output(attrs, spatial, ops, op)
    lead = 3 - attrs.k  # 1-D and 2-D as 3-D with leading size-1 axes
    args = [n, c]
    args += [1] * lead + list(spatial)
    args += [1] * lead + list(out)
    args += [1] * lead + list(attrs.kernel_shape)
    args += [1] * lead + list(attrs.strides)
    args += [1] * lead + list(attrs.dilations)
    args += [0] * lead + list(begin)
    return args, [n, c, *out]


# ------------------------------------------------------------------ reduction form
def reduce_output_shape(shape: Sequence, axes: Sequence[int], keepdims: bool) -> list:
    if keepdims:
        return [1 if i in axes else s for i, s in enumerate(shape)]
    return [s for i, s in enumerate(shape) if i not in axes]


def reduce_kernel_args(shape: Sequence, axes: Sequence[int], op: str = "ReduceSoftPool"):
    """[rank, d0..d5, reduce_mask]: shape padded on the left to 6 axes.

    Ranks above 6 (TensorRT allows 8) are first collapsed by merging neighbouring axes of
    the same reduced/kept status, which changes neither output order nor window order.
    """
    rank = len(shape)
    is_reduced = [i in axes for i in range(rank)]
    dims, reduced = list(shape), list(is_reduced)
    if rank > abi.MAX_REDUCE_RANK:
        dims, reduced = [shape[0]], [is_reduced[0]]
        for i in range(1, rank):
            if is_reduced[i] == reduced[-1]:
                dims[-1] = dims[-1] * shape[i]
            else:
                dims.append(shape[i])
                reduced.append(is_reduced[i])
        if len(dims) > abi.MAX_REDUCE_RANK:
            raise ValueError(
                f"{op}: axes {list(axes)} alternate too often for a {rank}-D input "
                f"(at most {abi.MAX_REDUCE_RANK} groups of neighbouring axes are supported)"
            )
    lead = abi.MAX_REDUCE_RANK - len(dims)
    mask = 0
    for i, r in enumerate(reduced):
        if r:
            mask |= 1 << (lead + i)
    return [rank] + [1] * lead + dims + [mask]


# ------------------------------------------------------------------ adaPool family
def _is_int(v) -> bool:
    return isinstance(v, int)


def broadcast_dims5(op: str, name: str, operand: Sequence, target: Sequence, target_name: str = "the output"):
    """``operand``'s shape in the 5-D view (N, C, d, h, w) of a rank 3-5 ``target``
    (kernel_abi.h): numpy's right alignment, the missing leading spatial axes as 1. Where
    both sizes are ints, checks that each is 1 or the target's (numpy broadcasting)."""
    operand, target = list(operand), list(target)
    if len(operand) > len(target):
        raise ValueError(f"{op}: {name} of rank {len(operand)} does not broadcast to {target_name} of rank {len(target)}")
    full = [1] * (len(target) - len(operand)) + operand
    for b, t in zip(full, target):
        if _is_int(b) and _is_int(t) and b != 1 and b != t:
            raise ValueError(f"{op}: {name} of shape {operand} does not broadcast to {target_name} {target}")
    return full[:2] + [1] * (5 - len(target)) + full[2:]


def unpool_kernel_args(op: str, x: Sequence, me: Sequence, mm: Sequence, beta: Sequence):
    """AdaUnpool's (int32 arguments, output shape): X (N, C, *I), the masks (N|1, C|1, *O)
    with O >= I, Beta broadcast to X; checked where the sizes are ints."""
    x, me, mm = list(x), list(me), list(mm)
    k = len(x) - 2
    if k not in (1, 2, 3):
        raise ValueError(f"{op}: X must be N x C x D1..Dk with k = 1, 2 or 3, got rank {len(x)}")
    for name, m in (("MaskEdscw", me), ("MaskEm", mm)):
        if len(m) != len(x):
            raise ValueError(f"{op}: {name} must have X's rank {len(x)}, got rank {len(m)}")
        for i in (0, 1):
            if _is_int(m[i]) and _is_int(x[i]) and m[i] not in (1, x[i]):
                raise ValueError(f"{op}: {name} of shape {m} must have N = {x[0]} or 1 and C = {x[1]} or 1")
    for d in range(2, len(x)):
        if _is_int(me[d]) and _is_int(mm[d]) and me[d] != mm[d]:
            raise ValueError(f"{op}: MaskEdscw and MaskEm must have the same spatial shape, got {me} and {mm}")
        if _is_int(me[d]) and _is_int(x[d]) and me[d] < x[d]:
            raise ValueError(f"{op}: the masks' spatial shape must be at least X's on every axis, got {me} for X {x}")
    lead = 3 - k
    args = [x[0], x[1], *([1] * lead + x[2:]), *([1] * lead + me[2:]), me[0], me[1], mm[0], mm[1]]
    args += broadcast_dims5(op, "Beta", beta, x, "X")
    return args, [x[0], x[1], *me[2:]]


# ------------------------------------------------------------------ one entry point
def kernel_args(op: str, shape: Sequence, attrs: Mapping, ops=INT_OPS, others: Sequence = ()):
    """(int32 scalar arguments in ABI order, output shape) of ``op`` on input ``shape``.

    ``attrs`` holds the ONNX node attributes by name (missing ones take the schema
    defaults); ``others`` the shapes of the inputs after X (AdaPool: Beta; AdaUnpool:
    MaskEdscw, MaskEm, Beta). Values in the result are ints or, with ``trt_ops``, ShapeExprs.
    """
    rank = len(shape)
    n_others = len(abi.kernel_inputs(op)) - 1 if op in abi.KERNELS else 0
    if len(others) != n_others:
        raise ValueError(f"{op}: {n_others + 1} input shape(s) needed, got {len(others) + 1}")
    if op in UNPOOL_OPS:
        return unpool_kernel_args(op, shape, *others)
    if op in ADA_WINDOW_OPS:
        wa = window_attrs(op, rank, attrs.get("kernel_shape"), attrs.get("strides", ()), attrs.get("pads", ()),
                          attrs.get("dilations", ()), attrs.get("ceil_mode", 0), attrs.get("auto_pad", "NOTSET"))
        args, out_shape = window_kernel_args(wa, shape, ops, op)
        if op == "AdaPool":
            args += broadcast_dims5(op, "Beta", others[0], out_shape)
        return args, out_shape
    if op in WINDOWED_OPS:
        wa = window_attrs(op, rank, attrs.get("kernel_shape"), attrs.get("strides", ()), attrs.get("pads", ()),
                          attrs.get("dilations", ()), attrs.get("ceil_mode", 0), attrs.get("auto_pad", "NOTSET"))
        args, out_shape = window_kernel_args(wa, shape, ops, op)
    elif op in REDUCE_OPS:
        axes = reduce_axes(op, rank, attrs.get("axes", ()))
        keepdims = int(attrs.get("keepdims", 1))
        if keepdims not in (0, 1):
            raise ValueError(f"{op}: keepdims must be 0 or 1, got {keepdims!r}")
        args, out_shape = reduce_kernel_args(shape, axes, op), reduce_output_shape(shape, axes, bool(keepdims))
    else:
        raise ValueError(f"{op}: not a poolexport op; expected one of "
                         f"{WINDOWED_OPS + REDUCE_OPS + ADA_WINDOW_OPS + UNPOOL_OPS}")
    if op in ("SoftPool", "ReduceSoftPool"):
        args += soft_args(op, attrs.get("beta", 1.0))
    else:
        args += stochastic_args(op, attrs.get("mode", "expectation"), attrs.get("seed", 0))
    return args, out_shape


def launch_total(op: str, shape: Sequence, attrs: Mapping, ops=INT_OPS, others: Sequence = ()):
    """Threads the launch rule asks for (kernel_abi.h): the output elements, times the
    lanes per output of a soft or expectation reduction over the innermost axis."""
    _, out_shape = kernel_args(op, shape, attrs, ops, others)
    outputs = numel(out_shape)
    if op not in REDUCE_OPS:
        return outputs
    axes = reduce_axes(op, len(shape), attrs.get("axes", ()))
    sample = op == "ReduceStochasticPool" and attrs.get("mode", "expectation") == "sample"
    window = numel([shape[a] for a in axes])
    if ops.symbolic:
        lanes = abi.reduce_lanes(window, len(shape) - 1 in axes, sample, minimum=ops.min)
        return lanes * outputs if isinstance(outputs, int) else outputs * lanes  # ShapeExpr on the left
    return outputs * abi.reduce_lanes(window, len(shape) - 1 in axes, sample)


def numel(shape: Sequence):
    """Element count of ints and/or ShapeExprs (symbolic factors first: ShapeExpr has no
    reflected operators, so ``2 * expr`` would fail where ``expr * 2`` works)."""
    consts = 1
    expr = None
    for s in shape:
        if isinstance(s, int):
            consts *= s
        else:
            expr = s if expr is None else expr * s
    if expr is None:
        return consts
    return expr * consts if consts != 1 else expr
