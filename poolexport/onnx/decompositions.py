"""Standard-op decompositions of the ``poolexport`` ops, as ONNX model-local functions.

One FunctionProto per op, of the op's own name and domain, generic over the node's
attributes (the body reads them with attribute references), over k = 1, 2, 3 and over
dynamic shapes. ONNX Runtime inlines the function when no kernel for the op is registered,
and ``onnx.reference.ReferenceEvaluator`` runs it, so an ``ort`` file runs anywhere.

Windowed ops follow DOMAIN.md: a Conv with one-hot weights (one output channel per kernel
position, row-major) turns every window into channels; the same Conv over a tensor of ones
gives the validity mask, so padding never enters a window. ceil_mode adds ``stride - 1``
end padding and then drops a last window that would start in the end padding (the rule
of ``poolexport._window``).
Math runs in float32 (as the kernels do), stably: SoftPool subtracts each window's own
maximum before Exp.

``mode="sample"`` of the stochastic ops is not decomposed (its Philox picks are not
expressed in standard ops): :func:`check_decomposable` rejects such nodes with a clear
error, and only the custom-op library / TensorRT plugin run them.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from . import domain as D


class _Body:
    """Tiny builder for a function body: unique names, attribute references."""

    def __init__(self, prefix: str):
        self.nodes: list[onnx.NodeProto] = []
        self.prefix = prefix
        self.n = 0

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        self.n += 1
        out = f"{self.prefix}_{op_type}_{self.n}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def ref(self, kind: str, name: str) -> str:
        """A Constant whose value is the node attribute ``name`` (kind: value_ints/value_int/...)."""
        self.n += 1
        out = f"{self.prefix}_{name}_{self.n}"
        node = helper.make_node("Constant", [], [out])
        attr = onnx.AttributeProto()
        attr.name = kind
        attr.ref_attr_name = name
        attr.type = {"value_ints": onnx.AttributeProto.INTS, "value_int": onnx.AttributeProto.INT,
                     "value_float": onnx.AttributeProto.FLOAT, "value_string": onnx.AttributeProto.STRING}[kind]
        node.attribute.append(attr)
        self.nodes.append(node)
        return out

    def const(self, value, dtype=np.int64) -> str:
        arr = np.asarray(value, dtype=dtype)
        return self.op("Constant", value=onnx.numpy_helper.from_array(arr))

    def op_ref(self, op_type: str, inputs: list[str], refs: dict, **attrs) -> str:
        """A node whose attributes ``refs`` (attr name -> (type, node attr name)) are references."""
        out = self.op(op_type, *inputs, **attrs)
        node = self.nodes[-1]
        for name, (atype, ref) in refs.items():
            a = onnx.AttributeProto()
            a.name, a.ref_attr_name, a.type = name, ref, atype
            node.attribute.append(a)
        return out


_INTS, _INT, _STRING = onnx.AttributeProto.INTS, onnx.AttributeProto.INT, onnx.AttributeProto.STRING


def _windows(b: _Body, xf: str):
    """Windows of xf (N, C, D...) as (N*C, K, O'...), the validity mask, and the crop to O.

    Padding is always explicit (a Pad before a Conv that has only strides and dilations):
    ONNX Runtime's Conv refuses ``auto_pad`` together with ``pads`` and SAME_* with
    dilations. Opset 18 cannot compare strings, so the body reads auto_pad through a
    1-D probe Conv: over [1, 1] with kernel [1, 0], SAME_* keeps 2 outputs (VALID/NOTSET
    one), SAME_UPPER puts the odd pad at the end (outputs [1, 1]) and SAME_LOWER at the
    beginning (outputs [0, 1]). normalize_nodes writes zero pads and ceil_mode 0 unless
    auto_pad is NOTSET.
    """
    ks, st, pd = b.ref("value_ints", "kernel_shape"), b.ref("value_ints", "strides"), b.ref("value_ints", "pads")
    dl, cm = b.ref("value_ints", "dilations"), b.ref("value_int", "ceil_mode")
    zero1, one1, two1, big = b.const([0]), b.const([1]), b.const([2]), b.const([2**62])
    shape = b.op("Shape", xf)
    spatial = b.op("Slice", shape, two1, big)
    k = b.op("Shape", ks)
    # one-hot weights (K, 1, k1..kk): channel j picks kernel position j (row-major)
    kprod = b.op("ReduceProd", ks, keepdims=1)
    eye = b.op("EyeLike", b.op("ConstantOfShape", b.op("Concat", kprod, kprod, axis=0),
                                value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])))
    weight = b.op("Reshape", eye, b.op("Concat", kprod, one1, ks, axis=0))
    xr = b.op("Reshape", xf, b.op("Concat", b.const([-1, 1]), spatial, axis=0))
    ones = b.op("ConstantOfShape", b.op("Concat", one1, one1, spatial, axis=0),
                value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))
    # auto_pad probe
    probe = b.op_ref("Conv", [b.const([[[1.0, 1.0]]], np.float32), b.const([[[1.0, 0.0]]], np.float32)],
                     {"auto_pad": (_STRING, "auto_pad")})
    is_same = b.op("Equal", b.op("Size", probe), b.const(2))
    is_lower = b.op("And", is_same, b.op("Less", b.op("ReduceSum", probe, keepdims=0), b.const(1.5, np.float32)))
    # SAME_*: out = ceil(n / s), total = max(0, (out - 1) * s + span - n)
    span = b.op("Add", b.op("Mul", b.op("Sub", ks, one1), dl), one1)
    out_same = b.op("Div", b.op("Sub", b.op("Add", spatial, st), one1), st)
    total = b.op("Max", b.op("Sub", b.op("Add", b.op("Mul", b.op("Sub", out_same, one1), st), span), spatial), zero1)
    two = b.const([2])
    upper_begin = b.op("Div", total, two)
    same_begin = b.op("Where", is_lower, b.op("Sub", total, upper_begin), upper_begin)
    same_end = b.op("Sub", total, same_begin)
    # NOTSET/VALID: pads, plus stride - 1 at the end under ceil_mode (cropped below)
    use_ceil = b.op("Cast", cm, to=TensorProto.BOOL)
    extra = b.op("Mul", b.op("Cast", use_ceil, to=TensorProto.INT64), b.op("Sub", st, one1))
    pad_begin = b.op("Where", is_same, same_begin, b.op("Slice", pd, zero1, k))
    pad_end = b.op("Where", is_same, same_end, b.op("Add", b.op("Slice", pd, k, big), extra))
    pad_all = b.op("Concat", zero1, zero1, pad_begin, zero1, zero1, pad_end, axis=0)
    refs = {"strides": (_INTS, "strides"), "dilations": (_INTS, "dilations")}
    win = b.op_ref("Conv", [b.op("Pad", xr, pad_all), weight], refs)
    valid = b.op("Greater", b.op_ref("Conv", [b.op("Pad", ones, pad_all), weight], refs), b.const(0.5, np.float32))
    # a ceil_mode window starting in the end padding is dropped (poolexport._window's rule)
    out_ceil = b.op("Slice", b.op("Shape", win), two1, big)
    late = b.op("GreaterOrEqual", b.op("Mul", b.op("Sub", out_ceil, one1), st), b.op("Add", spatial, pad_begin))
    out = b.op("Sub", out_ceil, b.op("Cast", b.op("And", late, use_ceil), to=TensorProto.INT64))
    nc = b.op("Slice", shape, zero1, two1)
    return win, valid, out, nc, k


def _finish_windowed(b: _Body, y: str, out: str, nc: str, k: str, x: str) -> None:
    """y (N*C, O'...) -> crop to O -> (N, C, O...) in X's type, named Y."""
    kk = b.op("Squeeze", k)
    axes = b.op("Range", b.const(1), b.op("Add", kk, b.const(1)), b.const(1))
    starts = b.op("Mul", out, b.const([0]))
    y = b.op("Slice", y, starts, out, axes)
    y = b.op("Reshape", y, b.op("Concat", nc, out, axis=0))
    b.nodes.append(helper.make_node("CastLike", [y, x], ["Y"]))


def _soft_math(b: _Body, win: str, valid: str | None, axes: str, keepdims_ref: bool) -> str:
    """sum(softmax(beta * w) * w) over ``axes``, stable; padding (valid False) excluded."""
    beta = b.ref("value_float", "beta")
    z = b.op("Mul", win, beta)
    if valid is not None:
        z = b.op("Where", valid, z, b.const(-np.inf, np.float32))
    m = b.op("ReduceMax", z, axes, keepdims=1)
    m = b.op("Where", b.op("IsInf", m), b.const(0.0, np.float32), m)  # all-padding windows
    e = b.op("Exp", b.op("Sub", z, m))
    refs = {"keepdims": (_INT, "keepdims")} if keepdims_ref else {}
    kw = {} if keepdims_ref else {"keepdims": 0}
    s = b.op_ref("ReduceSum", [e, axes], refs, **kw)
    num = b.op_ref("ReduceSum", [b.op("Mul", e, win), axes], refs, **kw)
    return _safe_div(b, num, s)


def _stochastic_math(b: _Body, win: str, axes: str, keepdims_ref: bool) -> str:
    """sum(r^2) / sum(r) with r = max(w, 0); padding is 0 so it never counts."""
    r = b.op("Relu", win)
    refs = {"keepdims": (_INT, "keepdims")} if keepdims_ref else {}
    kw = {} if keepdims_ref else {"keepdims": 0}
    s1 = b.op_ref("ReduceSum", [r, axes], refs, **kw)
    s2 = b.op_ref("ReduceSum", [b.op("Mul", r, r), axes], refs, **kw)
    return _safe_div(b, s2, s1)


def _safe_div(b: _Body, num: str, den: str) -> str:
    pos = b.op("Greater", den, b.const(0.0, np.float32))
    q = b.op("Div", num, b.op("Where", pos, den, b.const(1.0, np.float32)))
    return b.op("Where", pos, q, b.const(0.0, np.float32))


def _function(name: str, body: _Body, attrs: list[str], opset: int) -> onnx.FunctionProto:
    return helper.make_function(D.DOMAIN, name, ["X"], ["Y"], body.nodes,
                                [helper.make_opsetid("", opset)], attributes=attrs)


_WINDOW_ATTRS = ["kernel_shape", "strides", "pads", "dilations", "ceil_mode", "auto_pad"]


def soft_pool_function(opset: int = D.OPSET) -> onnx.FunctionProto:
    b = _Body("sp")
    xf = b.op("Cast", "X", to=TensorProto.FLOAT)
    win, valid, out, nc, k = _windows(b, xf)
    y = _soft_math(b, win, valid, b.const([1]), keepdims_ref=False)
    _finish_windowed(b, y, out, nc, k, "X")
    return _function(D.SOFT_POOL, b, _WINDOW_ATTRS + ["beta"], opset)


def stochastic_pool_function(opset: int = D.OPSET) -> onnx.FunctionProto:
    b = _Body("stp")
    xf = b.op("Cast", "X", to=TensorProto.FLOAT)
    win, _, out, nc, k = _windows(b, xf)  # Conv zero-pads, and r = relu(0) = 0 never counts
    y = _stochastic_math(b, win, b.const([1]), keepdims_ref=False)
    _finish_windowed(b, y, out, nc, k, "X")
    return _function(D.STOCHASTIC_POOL, b, _WINDOW_ATTRS + ["mode", "seed"], opset)


def reduce_soft_pool_function(opset: int = D.OPSET) -> onnx.FunctionProto:
    b = _Body("rsp")
    xf = b.op("Cast", "X", to=TensorProto.FLOAT)
    y = _soft_math(b, xf, None, b.ref("value_ints", "axes"), keepdims_ref=True)
    b.nodes.append(helper.make_node("CastLike", [y, "X"], ["Y"]))
    return _function(D.REDUCE_SOFT_POOL, b, ["axes", "keepdims", "beta"], opset)


def reduce_stochastic_pool_function(opset: int = D.OPSET) -> onnx.FunctionProto:
    b = _Body("rstp")
    xf = b.op("Cast", "X", to=TensorProto.FLOAT)
    y = _stochastic_math(b, xf, b.ref("value_ints", "axes"), keepdims_ref=True)
    b.nodes.append(helper.make_node("CastLike", [y, "X"], ["Y"]))
    return _function(D.REDUCE_STOCHASTIC_POOL, b, ["axes", "keepdims", "mode", "seed"], opset)


BUILDERS = {
    D.SOFT_POOL: soft_pool_function,
    D.STOCHASTIC_POOL: stochastic_pool_function,
    D.REDUCE_SOFT_POOL: reduce_soft_pool_function,
    D.REDUCE_STOCHASTIC_POOL: reduce_stochastic_pool_function,
}


def functions(op_types, opset: int = D.OPSET) -> list[onnx.FunctionProto]:
    """The local functions for the given op types (each once, in a stable order)."""
    return [BUILDERS[name](opset) for name in D.OPS if name in set(op_types)]
