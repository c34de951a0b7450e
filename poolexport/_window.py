"""ONNX pooling windows: one definition of shapes, padding and window contents.

Every backend (the PyTorch ops, the ONNX decomposition, the C++/CUDA kernels) follows
exactly these rules, which are those of ONNX ``AveragePool``/``MaxPool`` as ONNX Runtime
implements them:

* ``pads`` is ``[begin_1..begin_k, end_1..end_k]``; padded positions are never part of a
  window (``count_include_pad=0``); a window with no valid position outputs 0.
* ``auto_pad`` NOTSET uses ``pads``; VALID uses no padding; SAME_UPPER/SAME_LOWER give
  ``out = ceil(in / stride)`` and split the total padding with the extra element at the
  end (UPPER) or at the beginning (LOWER). ``ceil_mode`` only matters for NOTSET.
* NOTSET: ``out = floor_or_ceil((in + pad_b + pad_e - ((k - 1) * d + 1)) / s) + 1``;
  with ``ceil_mode`` a last window that would start past the input and the begin padding
  is dropped (PyTorch's and ONNX Runtime's rule).
* Window positions are enumerated row-major over the kernel (last axis fastest). The
  stochastic pick relies on this order.
"""
from __future__ import annotations

import builtins
import numbers
from dataclasses import dataclass
from functools import lru_cache
from types import SimpleNamespace
from typing import Sequence

import torch

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


@dataclass(frozen=True)
class WindowSpec:
    """Validated pooling attributes for ``k`` spatial axes (all tuples have length k)."""

    kernel_shape: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]  # 2k: begins then ends
    dilations: tuple[int, ...]
    ceil_mode: bool = False
    auto_pad: str = "NOTSET"

    @property
    def rank(self) -> int:
        return len(self.kernel_shape)

    def resolve(self, spatial: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Output spatial shape and effective begin pads for an input's spatial shape."""
        return _resolve(self, tuple(int(s) for s in spatial))


def _tuple(value, k: int, name: str, op: str) -> tuple[int, ...]:
    if isinstance(value, numbers.Integral):
        return (int(value),) * k
    value = tuple(int(v) for v in value)
    if len(value) == 1:
        return value * k
    if len(value) != k:
        raise ValueError(f"{op}: {name} must have 1 or {k} values, got {list(value)}")
    return value


def make_window_spec(
    op: str,
    k: int,
    kernel_shape,
    strides=None,
    pads=0,
    dilations=1,
    ceil_mode: bool = False,
    auto_pad: str = "NOTSET",
) -> WindowSpec:
    """Build a WindowSpec from PyTorch-style or ONNX-style arguments, validating them.

    ``pads`` may be an int, k symmetric values (PyTorch ``padding``) or 2k ONNX values.
    """
    if k not in (1, 2, 3):
        raise ValueError(f"{op}: only 1-D, 2-D and 3-D pooling is supported, got {k}-D")
    kernel = _tuple(kernel_shape, k, "kernel_size", op)
    no_stride = strides is None or (not isinstance(strides, numbers.Integral) and len(strides) == 0)
    stride = kernel if no_stride else _tuple(strides, k, "stride", op)
    if isinstance(pads, numbers.Integral):
        pad = (int(pads),) * (2 * k)
    else:
        pads = tuple(int(p) for p in pads)
        if len(pads) == 2 * k:
            pad = pads
        else:
            sym = _tuple(pads, k, "padding", op)
            pad = sym + sym
    dil = _tuple(dilations, k, "dilation", op)
    if auto_pad not in AUTO_PADS:
        raise ValueError(f"{op}: auto_pad must be one of {AUTO_PADS}, got {auto_pad!r}")
    if any(v <= 0 for v in kernel):
        raise ValueError(f"{op}: kernel_size must be positive, got {list(kernel)}")
    if any(v <= 0 for v in stride):
        raise ValueError(f"{op}: stride must be positive, got {list(stride)}")
    if any(v <= 0 for v in dil):
        raise ValueError(f"{op}: dilation must be positive, got {list(dil)}")
    if any(v < 0 for v in pad):
        raise ValueError(f"{op}: padding must be non-negative, got {list(pad)}")
    return WindowSpec(kernel, stride, pad, dil, bool(ceil_mode), auto_pad)


# Integer arithmetic behind ``axis_output``: plain ints (``INT_OPS``), torch SymInts from
# torch.export and traced sizes from torch.jit.trace (``TORCH_OPS``), and TensorRT's
# ``tensorrt.plugin.ShapeExpr`` (``poolexport.tensorrt.shapes.trt_ops``). ShapeExpr allows only ``+ - * //`` and ``<``
# with the expression on the LEFT and has no conditional (no sym_ite), so the rule below
# keeps every size operand on the left and turns the ceil_mode comparison into a 0/1
# value through ``ops.lt``.
INT_OPS = SimpleNamespace(
    cdiv=lambda a, b: -(-a // b),
    max=builtins.max,
    min=builtins.min,
    lt=lambda a, b: int(a < b),
    symbolic=False,
)


def _traced(a, b) -> bool:
    # under torch.jit.trace, input sizes are 0-d tensors: keep them traced, not constants
    return isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor)


def _torch_max(a, b):
    if _traced(a, b):
        return torch.maximum(torch.as_tensor(a), torch.as_tensor(b))
    return torch.sym_max(a, b)


def _torch_min(a, b):
    if _traced(a, b):
        return torch.minimum(torch.as_tensor(a), torch.as_tensor(b))
    return torch.sym_min(a, b)


def _torch_lt(a, b):
    if _traced(a, b):
        return (torch.as_tensor(a) < torch.as_tensor(b)).long()
    return torch.sym_ite(a < b, 1, 0)


TORCH_OPS = SimpleNamespace(
    cdiv=lambda a, b: -(-a // b),
    max=_torch_max,
    min=_torch_min,
    lt=_torch_lt,
    symbolic=True,
)


def axis_output(n, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int, ceil_mode: bool,
                auto_pad: str, ops=TORCH_OPS):
    """Output size and effective begin pad of one spatial axis: the one coding of the ONNX
    output-size rule, shared by the torch ops and the TensorRT shape expressions.

    Written without Python branches on ``n`` so that it also works on symbolic sizes
    (torch.export with dynamic spatial dims, TensorRT ShapeExprs); validation happens in
    ``_resolve``.
    """
    span = (kernel - 1) * dilation + 1
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = (n + (stride - 1)) // stride
        total = ops.max((out - 1) * stride + span - n, 0)
        half = total // 2
        return out, (half if auto_pad == "SAME_UPPER" else total - half)
    if auto_pad == "VALID":
        return (n - span) // stride + 1, 0
    room = n + (pad_begin + pad_end - span)
    if not ceil_mode:
        return room // stride + 1, pad_begin
    out = (room + (stride - 1)) // stride + 1
    # a last window starting in the end padding, (out-1)*s >= n + pad_begin, is dropped
    # (PyTorch / ONNX Runtime rule)
    return out - ops.lt(n + (pad_begin - 1), (out - 1) * stride), pad_begin


PADDING_MODES = {"same": "SAME_UPPER", "valid": "VALID"}


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_ints(op: str, name: str, value, allow_empty: bool = False) -> None:
    if _is_int(value):
        return
    if isinstance(value, (tuple, list, torch.Size)) and (allow_empty or len(value) > 0) \
            and all(_is_int(v) for v in value):
        return
    raise TypeError(f"{op}: {name} must be an int or a sequence of ints, got {value!r}")


def parse_padding(op: str, padding):
    """``(auto_pad, pads)`` of a PyTorch-style ``padding``: ints pass through; the ONNX /
    Keras spellings 'same' (SAME_UPPER, as Keras and TensorFlow pad) and 'valid' are
    accepted in any case."""
    if not isinstance(padding, str):
        _check_ints(op, "padding", padding)
        return "NOTSET", padding
    mode = PADDING_MODES.get(padding.lower())
    if mode is None:
        raise ValueError(f"{op}: padding must be an int, a tuple, 'same' or 'valid' (any case), got {padding!r}")
    return mode, 0


def check_window_args(op: str, k: int, kernel_size, stride=None, padding=0, dilation=1,
                      ceil_mode: bool = False) -> WindowSpec:
    """Check the type and range of each PyTorch-style window argument (errors name it) and
    return the WindowSpec. Run by the modules at construction and by the functions."""
    _check_ints(op, "kernel_size", kernel_size)
    if stride is not None:
        _check_ints(op, "stride", stride, allow_empty=True)
    _check_ints(op, "dilation", dilation)
    if not isinstance(ceil_mode, bool):
        raise TypeError(f"{op}: ceil_mode must be a bool, got {ceil_mode!r}")
    auto_pad, pads = parse_padding(op, padding)
    return make_window_spec(op, k, kernel_size, stride, pads, dilation, ceil_mode, auto_pad)


def window_spec_for_input(name: str, x, k: int, kernel_size, stride, padding, dilation, ceil_mode) -> WindowSpec:
    """The WindowSpec of a PyTorch-style call (``padding`` may be an int, a tuple, 2k ONNX
    pads, ``"same"`` = SAME_UPPER or ``"valid"``), validated against the input ``x``.

    Concrete sizes are checked against the window here; symbolic ones (torch.export with
    dynamic spatial dims) are left alone so that they are not pinned.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != k + 2:
        raise ValueError(f"{name}: input must be {k + 2}-D (N, C, {k} spatial), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: input must be a floating-point tensor, got {x.dtype}")
    spec = check_window_args(name, k, kernel_size, stride, padding, dilation, ceil_mode)
    if not any(isinstance(s, torch.SymInt) for s in x.shape[2:]):
        spec.resolve(x.shape[2:])
    return spec


@lru_cache(maxsize=512)
def _resolve(spec: WindowSpec, spatial: tuple[int, ...]):
    k = spec.rank
    if len(spatial) != k:
        raise ValueError(f"input has {len(spatial)} spatial axes, the window has {k}")
    out, begin = zip(*(resolve_axis(spec, i, spatial[i]) for i in range(k)))
    return tuple(out), tuple(begin)


def resolve_axis(spec: WindowSpec, i: int, n: int) -> tuple[int, int]:
    """(output size, begin pad) of spatial axis ``i`` for a concrete size ``n``, after
    checking that the window fits (ValueError otherwise)."""
    k, kk, d = spec.rank, spec.kernel_shape[i], spec.dilations[i]
    span = (kk - 1) * d + 1
    padded = n if spec.auto_pad != "NOTSET" else n + spec.pads[i] + spec.pads[k + i]
    if spec.auto_pad in ("NOTSET", "VALID") and span > padded:
        raise ValueError(f"kernel_size: window span {span} exceeds the padded input size {padded} on spatial axis {i}")
    o, b = axis_output(n, kk, spec.strides[i], spec.pads[i], spec.pads[k + i], d, spec.ceil_mode, spec.auto_pad,
                       INT_OPS)
    return int(o), int(b)


def output_spatial(spec: WindowSpec, spatial) -> list:
    """Output spatial sizes; accepts symbolic sizes (no validation)."""
    k = spec.rank
    return [
        axis_output(spatial[i], spec.kernel_shape[i], spec.strides[i], spec.pads[i], spec.pads[k + i],
                    spec.dilations[i], spec.ceil_mode, spec.auto_pad)[0]
        for i in range(k)
    ]


def window_index(spec: WindowSpec, spatial: Sequence[int], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather indices of every window into the flattened input.

    Returns ``(index, valid)`` of shape ``(P, K)``: P output positions (row-major), K
    kernel positions (row-major). Invalid (padded) positions index ``L`` = the number of
    input positions, a sentinel column the caller appends.
    """
    spatial = tuple(int(s) for s in spatial)
    out, begin = spec.resolve(spatial)
    return _window_index_cached(spec, spatial, out, begin, str(device or "cpu"))


@lru_cache(maxsize=128)
def _window_index_cached(spec, spatial, out, begin, device):
    k = spec.rank
    # coordinate of (output o, kernel j) on axis i: o*s - b + j*d
    coords, valid = [], None
    for i in range(k):
        o = torch.arange(out[i], dtype=torch.int64) * spec.strides[i] - begin[i]
        j = torch.arange(spec.kernel_shape[i], dtype=torch.int64) * spec.dilations[i]
        c = o[:, None] + j[None, :]  # (out_i, kernel_i)
        coords.append(c)
    # broadcast to (out_1..out_k, kernel_1..kernel_k)
    flat = torch.zeros((), dtype=torch.int64)
    valid = torch.ones((), dtype=torch.bool)
    for i in range(k):
        shape = [1] * (2 * k)
        shape[i] = out[i]
        shape[k + i] = spec.kernel_shape[i]
        c = coords[i].reshape(shape)
        valid = valid & (c >= 0) & (c < spatial[i])
        flat = flat * spatial[i] + c.clamp(0, spatial[i] - 1)
    total = 1
    for n in spatial:
        total *= n
    P = 1
    for o in out:
        P *= o
    K = 1
    for kk in spec.kernel_shape:
        K *= kk
    flat = torch.where(valid, flat, torch.full_like(flat, total)).reshape(P, K)
    return flat.to(device), valid.reshape(P, K).to(device)


def reduce_layout(shape: Sequence[int], axes: Sequence[int] | None, keepdims: bool, op: str):
    """Normalise reduction axes (ReduceMean's meaning; None or empty = all axes).

    Returns ``(axes, permutation, kept_shape, out_shape)`` where the permutation moves the
    kept axes first and the reduced axes (ascending, so window order is row-major over
    them) last.
    """
    r = len(shape)
    if axes is None or len(axes) == 0:
        axes = tuple(range(r))
    norm = []
    for a in axes:
        a = int(a)
        if not -r <= a < r:
            raise ValueError(f"{op}: axis {a} is out of range for a {r}-D input")
        norm.append(a % r)
    if len(set(norm)) != len(norm):
        raise ValueError(f"{op}: axes contain duplicates: {list(axes)}")
    red = tuple(sorted(norm))
    kept = tuple(i for i in range(r) if i not in red)
    kept_shape = tuple(shape[i] for i in kept)
    out_shape = tuple(1 if i in red else shape[i] for i in range(r)) if keepdims else kept_shape
    return red, kept + red, kept_shape, out_shape
