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

``mode="sample"`` of both stochastic ops is decomposed too: Philox4x32-10 in int64 ONNX
ops (16-bit halves so that no product overflows), sequential float32 CumSum, the
documented pick; bit-exact with the torch op and the kernels. The Reduce form moves the
reduced axes last with a rank-generic scatter (a Transpose's perm would depend on
``axes``). Only models that use sample mode get these larger bodies (If + ONNX-ML
LabelEncoder to read the mode string).
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


# Finite limits (limits.h): a window whose max |x| (SoftPool) or max r (expectation) is
# above these sums x * its scale (a power of two), then divides the result by it, so that no
# sum overflows.
SOFT_SCALE_ABOVE, SOFT_SCALE = 2.0**64, 2.0**-64
MOMENT_SCALE_ABOVE, MOMENT_SCALE = 2.0**48, 2.0**-80


def _scale(b: _Body, amax: str, above: float, scale: float) -> str:
    return b.op("Where", b.op("Greater", amax, b.const(above, np.float32)), b.const(scale, np.float32),
                b.const(1.0, np.float32))


def _soft_math(b: _Body, win: str, valid: str | None, axes: str, keepdims_ref: bool) -> str:
    """sum(softmax(beta * w) * w) over ``axes``, stable; padding (valid False) excluded.
    Windows with max |w| > SOFT_SCALE_ABOVE sum w * SOFT_SCALE (finite for any finite w);
    the result is clipped to [-max |w|, max |w|] (it is a convex combination) and scaled back."""
    beta = b.ref("value_float", "beta")
    z = b.op("Mul", win, beta)
    if valid is not None:
        z = b.op("Where", valid, z, b.const(-np.inf, np.float32))
    m = b.op("ReduceMax", z, axes, keepdims=1)
    m = b.op("Where", b.op("IsInf", m), b.const(0.0, np.float32), m)  # all-padding windows
    e = b.op("Exp", b.op("Sub", z, m))
    amax = b.op("ReduceMax", b.op("Abs", win), axes, keepdims=1)  # padding is 0 in win
    k = _scale(b, amax, SOFT_SCALE_ABOVE, SOFT_SCALE)
    refs = {"keepdims": (_INT, "keepdims")} if keepdims_ref else {}
    kw = {} if keepdims_ref else {"keepdims": 0}
    s = b.op_ref("ReduceSum", [e, axes], refs, **kw)
    num = b.op_ref("ReduceSum", [b.op("Mul", e, b.op("Mul", win, k)), axes], refs, **kw)
    k = b.op_ref("ReduceMax", [k, axes], refs, **kw)  # to the output's shape
    ak = b.op("Mul", b.op_ref("ReduceMax", [amax, axes], refs, **kw), k)
    yk = b.op("Min", b.op("Max", _safe_div(b, num, s), b.op("Neg", ak)), ak)
    return b.op("Div", yk, k)


def _stochastic_math(b: _Body, win: str, axes: str, keepdims_ref: bool, keepdims: int = 0) -> str:
    """sum(r^2) / sum(r) with r = max(w, 0); padding is 0 so it never counts. Windows with
    max r > MOMENT_SCALE_ABOVE sum r * MOMENT_SCALE, so sum(r^2) stays finite."""
    r = b.op("Relu", win)
    rmax = b.op("ReduceMax", r, axes, keepdims=1)
    k = _scale(b, rmax, MOMENT_SCALE_ABOVE, MOMENT_SCALE)
    r = b.op("Mul", r, k)
    refs = {"keepdims": (_INT, "keepdims")} if keepdims_ref else {}
    kw = {} if keepdims_ref else {"keepdims": keepdims}
    s1 = b.op_ref("ReduceSum", [r, axes], refs, **kw)
    s2 = b.op_ref("ReduceSum", [b.op("Mul", r, r), axes], refs, **kw)
    k = b.op_ref("ReduceMax", [k, axes], refs, **kw)
    rk = b.op("Mul", b.op_ref("ReduceMax", [rmax, axes], refs, **kw), k)
    return b.op("Div", b.op("Min", _safe_div(b, s2, s1), rk), k)


def _all_finite(b: _Body, t: str) -> str:
    """A bool scalar: no inf or NaN in t."""
    bad = b.op("Or", b.op("IsInf", t), b.op("IsNaN", t))
    return b.op("Equal", b.op("ReduceMax", b.op("Cast", bad, to=TensorProto.FLOAT), keepdims=0),
                b.const(0.0, np.float32))


def _safe_div(b: _Body, num: str, den: str) -> str:
    """num / den, 0 where den <= 0; a NaN den (a NaN in the window) gives NaN, not 0."""
    none = b.op("LessOrEqual", den, b.const(0.0, np.float32))
    q = b.op("Div", num, b.op("Where", none, b.const(1.0, np.float32), den))
    return b.op("Where", none, b.const(0.0, np.float32), q)


def _function(name: str, body: _Body, attrs: list[str], opset: int) -> onnx.FunctionProto:
    return helper.make_function(D.DOMAIN, name, ["X"], ["Y"], body.nodes,
                                [helper.make_opsetid("", opset)], attributes=attrs)


_WINDOW_ATTRS = ["kernel_shape", "strides", "pads", "dilations", "ceil_mode", "auto_pad"]


# ------------------------------------------------------------------ fast forms, chosen at run time
# The same forms as the portable target (portable.py, where the module doc explains them),
# for the ``ort`` target's generic functions: the attributes are only known at run time
# here, so an If takes them when dilation is 1, every pad is below the kernel and auto_pad
# is not SAME, and a second If (SoftPool) keeps the shared shift only when no window lost
# its weight.
MIN_MEAN_WEIGHT = float(np.exp(np.float32(-60)))  # ~8.8e-27, far above float32's smallest normal


def shared_shift_soft(b: _Body, xf: str, z: str, axes: str, pool) -> tuple[str, str, str]:
    """SoftPool's fast form, (numerator, denominator, kept), y = numerator / denominator:
    e = exp(z - max of z over ``axes``) (z = beta * x, one shift per plane), numerator =
    pool(x * e), denominator = pool(e); ``kept`` (a bool scalar) says that every window's
    mean weight stayed >= MIN_MEAN_WEIGHT, i.e. y is exact. ``pool(t)`` is the node's
    AveragePool with count_include_pad=0. Shared by the ``ort`` functions and the portable
    target (portable.py); each places the division itself."""
    e = b.op("Exp", b.op("Sub", z, b.op("ReduceMax", z, axes, keepdims=1)))
    den = pool(e)
    kept = b.op("GreaterOrEqual", b.op("ReduceMin", den, keepdims=0), b.const(MIN_MEAN_WEIGHT, np.float32))
    num = pool(b.op("Mul", xf, e))
    # a window sum of x * e above float32's range (|x| near its maximum): the generic form
    return num, den, b.op("And", kept, _all_finite(b, num))


UNSHIFTED_MAX = 60.0  # z = beta*x at most this: exp(z) <= 1.1e26, no overflow anywhere below
MIN_UNSHIFTED_BETA = 1e-6  # |beta| from here: |x| * exp(beta*x) <= (60/|beta|) e^60 ~ 7e33


def unshifted_soft(b: _Body, xf: str, z: str, pool) -> tuple[str, str, str]:
    """SoftPool's cheapest exact form, (numerator, denominator, kept): e = exp(z) with no
    shift at all, numerator = pool(x * e), denominator = pool(e); ``kept`` says that z <=
    UNSHIFTED_MAX everywhere (so no exp overflows; with |beta| >= MIN_UNSHIFTED_BETA no
    x * e either, which the caller checks, beta being a constant there) and every window's
    mean weight is >= MIN_MEAN_WEIGHT (as in shared_shift_soft). It saves the shift's
    full-size Sub: ordinary activations take it, the rest falls to the shifted form."""
    e = b.op("Exp", z)
    den = pool(e)
    small = b.op("LessOrEqual", b.op("ReduceMax", z, keepdims=0), b.const(UNSHIFTED_MAX, np.float32))
    weighty = b.op("GreaterOrEqual", b.op("ReduceMin", den, keepdims=0), b.const(MIN_MEAN_WEIGHT, np.float32))
    num = pool(b.op("Mul", xf, e))
    return num, den, b.op("And", b.op("And", small, weighty), _all_finite(b, num))


def expectation_ratio(b: _Body, xf: str, pool) -> tuple[str, str]:
    """StochasticPool's expectation as pool(r^2) / pool(r), r = relu(x): the counts cancel.
    A window without a positive value gives 0/0 = NaN, which the Where replaces by 0; a
    window holding NaN (Relu keeps it) gives NaN, as every runtime does.
    Returns (y, kept): ``kept`` (a bool scalar) says no sum of r^2 is inf, i.e. none
    overflowed (r above ~2^64 / sqrt(window)); otherwise the caller takes the generic
    decomposition, whose per-window scale keeps the sums finite."""
    r = b.op("Relu", xf)
    s1, s2 = pool(r), pool(b.op("Mul", r, r))
    y = _safe_div(b, s2, s1)
    # an overflow (or an inf input) makes some sum of r^2 inf; a NaN input makes it NaN,
    # which the ratio keeps (not an overflow: no generic form for it)
    inf = b.op("Cast", b.op("IsInf", s2), to=TensorProto.FLOAT)
    return y, b.op("Equal", b.op("ReduceMax", inf, keepdims=0), b.const(0.0, np.float32))


_POOL_REFS = {"kernel_shape": (_INTS, "kernel_shape"), "strides": (_INTS, "strides"), "pads": (_INTS, "pads"),
              "ceil_mode": (_INT, "ceil_mode")}


def _fast_or_generic(b: _Body, fast, generic) -> str:
    """If(the fast form applies, fast, generic) -> the float32 result.

    ``fast(f, xf, pool)`` builds the fast branch in body ``f`` from X in float32 and
    ``pool(t)``, the node's AveragePool with count_include_pad=0, and returns its result;
    ``generic()`` returns a fresh (body, [result]) of the per-window decomposition. SAME
    auto_pad keeps the generic form here: ONNX Runtime refuses pads next to it, and a
    second If to pick a pool variant would nest an If that ONNX Runtime cannot fold once
    the attributes are constants (the portable target, which knows them, covers SAME).
    """
    ks, pd, dl = b.ref("value_ints", "kernel_shape"), b.ref("value_ints", "pads"), b.ref("value_ints", "dilations")
    k = b.op("Shape", ks)
    probe = b.op_ref("Conv", [b.const([[[1.0, 1.0]]], np.float32), b.const([[[1.0, 0.0]]], np.float32)],
                     {"auto_pad": (_STRING, "auto_pad")})  # 2 outputs under SAME_* (see _windows)
    conditions = b.op("Concat", b.op("Less", b.op("Slice", pd, b.const([0]), k), ks),
                      b.op("Less", b.op("Slice", pd, k, b.const([2**62])), ks), b.op("Equal", dl, b.const(1)),
                      b.op("Equal", b.op("Reshape", b.op("Size", probe), b.const([1])), b.const([1])), axis=0)
    applicable = b.op("Equal", b.op("ReduceMin", b.op("Cast", conditions, to=TensorProto.INT64), keepdims=0),
                      b.const(1))
    f = _Body(f"{b.prefix}_fast")
    xf = f.op("Cast", "X", to=TensorProto.FLOAT)  # each branch casts X itself (see _generic_windowed)
    y = fast(f, xf, lambda t: f.op_ref("AveragePool", [t], _POOL_REFS, count_include_pad=0))
    (out,) = _if(b, applicable, (f, [y]), generic(), [TensorProto.FLOAT])
    return out


def _if(b: _Body, cond: str, then, other, types) -> list[str]:
    """outputs = If(cond, then=(body, outs), else=(body, outs)) with the given elem types."""
    def graph(body, outs, name):
        vis = []
        for o, t in zip(outs, types):
            b.n += 1
            alias = f"{b.prefix}_{name}_out_{b.n}"
            body.nodes.append(helper.make_node("Identity", [o], [alias]))
            vis.append(helper.make_tensor_value_info(alias, t, None))
        return helper.make_graph(body.nodes, name, [], vis)

    b.n += 1
    results = [f"{b.prefix}_if_{b.n}_{i}" for i in range(len(types))]
    b.nodes.append(helper.make_node("If", [cond], results, then_branch=graph(*then, "then"),
                                    else_branch=graph(*other, "else")))
    return results


def _spatial_axes(b: _Body, xf: str) -> str:
    return b.op("Range", b.const(2), b.op("Size", b.op("Shape", xf)), b.const(1))


def _generic_windowed(prefix: str, math) -> tuple[_Body, list[str]]:
    # every branch casts X itself: ONNX Runtime cannot drop a float->float Cast whose output
    # a subgraph reads (it warns once per subgraph)
    g = _Body(prefix)
    xf = g.op("Cast", "X", to=TensorProto.FLOAT)
    win, valid, out, nc, k = _windows(g, xf)
    y = math(g, win, valid)
    kk = g.op("Squeeze", k)
    axes = g.op("Range", g.const(1), g.op("Add", kk, g.const(1)), g.const(1))
    y = g.op("Slice", y, g.op("Mul", out, g.const([0])), out, axes)
    return g, [g.op("Reshape", y, g.op("Concat", nc, out, axis=0))]


def soft_pool_function(opset: int = D.OPSET, fast: bool = True) -> onnx.FunctionProto:
    """``fast=False``: the per-window body alone (the portable target's fallback branch)."""
    b = _Body("sp")

    def generic(prefix="sp_g"):
        return _generic_windowed(prefix, lambda g, win, valid: _soft_math(g, win, valid, g.const([1]),
                                                                         keepdims_ref=False))

    if not fast:
        body, (y,) = generic()
        b.nodes += body.nodes
    else:
        # one exp per element under the plane's maximum, AveragePool(x*e)/AveragePool(e),
        # kept only when no window lost its weight (an If on the result, at run time)
        def shared_shift(f, xf, pool):
            z = f.op("Mul", xf, f.ref("value_float", "beta"))
            num, den, kept = shared_shift_soft(f, xf, z, _spatial_axes(f, xf), pool)
            keep = _Body("sp_keep")  # the division inside the branch (OpenVINO gets an Identity of it wrong)
            (out,) = _if(f, kept, (keep, [keep.op("Div", num, den)]), generic("sp_g2"), [TensorProto.FLOAT])
            return out

        y = _fast_or_generic(b, shared_shift, generic)
    b.nodes.append(helper.make_node("CastLike", [y, "X"], ["Y"]))
    return _function(D.SOFT_POOL, b, _WINDOW_ATTRS + ["beta"], opset)


def stochastic_pool_function(opset: int = D.OPSET, sample: bool = False, fast: bool = True) -> onnx.FunctionProto:
    """Expectation only, or (``sample=True``) both modes, chosen at run time by ``mode``;
    ``fast=False``: the expectation body without its run-time fast form.

    The sample-capable body needs ONNX-ML's LabelEncoder to read the mode string (opset
    18 has no string comparison) and an If, so it is attached only to models that use
    mode="sample"; inference models get the lean expectation-only body.
    """
    b = _Body("stp")
    if not sample:
        # fast: AveragePool(r^2)/AveragePool(r), exact; else the one-hot Conv windows
        def generic_in(prefix="stp_g"):
            return _generic_windowed(prefix, lambda g, win, valid: _stochastic_math(
                g, win, g.const([1]), keepdims_ref=False))  # Conv zero-pads: relu(0) = 0 never counts

        def generic():
            return generic_in()

        if fast:
            def ratio(f, xf, pool):
                y_fast, kept = expectation_ratio(f, xf, pool)
                keep = _Body("stp_keep")
                (out,) = _if(f, kept, (keep, [keep.op("Identity", y_fast)]), generic_in("stp_g2"), [TensorProto.FLOAT])
                return out

            y = _fast_or_generic(b, ratio, generic)
        else:
            body, (y,) = generic()
            b.nodes += body.nodes
        b.nodes.append(helper.make_node("CastLike", [y, "X"], ["Y"]))
        return _function(D.STOCHASTIC_POOL, b, _WINDOW_ATTRS + ["mode", "seed"], opset)
    xf = b.op("Cast", "X", to=TensorProto.FLOAT)
    win, _, out, nc, k = _windows(b, xf)  # Conv zero-pads, and r = relu(0) = 0 never counts
    is_sample, seed = _mode_is_sample(b)
    out_shape = b.op("Concat", nc, out, axis=0)
    # expectation branch
    e = _Body("stp_e")
    y_e = _stochastic_math(e, win, b.const([1]), keepdims_ref=False)
    y_e = _crop(e, y_e, out, k)
    y_e = e.op("Reshape", y_e, out_shape)
    # sample branch: windows cropped to the output, rows in flat output-element order
    t = _Body("stp_s")
    y_s = t.op("Reshape", _philox_pick(t, _crop(t, win, out, k, first_axis=2), seed), out_shape)
    _if_mode(b, is_sample, t, y_s, e, y_e)
    return helper.make_function(D.DOMAIN, D.STOCHASTIC_POOL, ["X"], ["Y"], b.nodes,
                                [helper.make_opsetid("", opset), helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
                                attributes=_WINDOW_ATTRS + ["mode", "seed"])


ML_OPSET = 2  # LabelEncoder with keys_strings / values_int64s


def _crop(b: _Body, y: str, out: str, k: str, first_axis: int = 1) -> str:
    """Slice the spatial axes (from ``first_axis``) of y down to the output sizes ``out``."""
    kk = b.op("Squeeze", k)
    start = b.const(first_axis)
    axes = b.op("Range", start, b.op("Add", kk, start), b.const(1))
    return b.op("Slice", y, b.op("Mul", out, b.const([0])), out, axes)


_M32 = 0xFFFFFFFF


def _mulhilo(b: _Body, a: str, m: int) -> tuple[str, str]:
    """(hi, lo) 32-bit words of a * m for uint32 values held in int64, without overflow
    (16-bit halves, as poolexport._philox does; BitShift has no signed types)."""
    a1, a0 = b.op("Div", a, b.const(1 << 16)), b.op("BitwiseAnd", a, b.const(0xFFFF))
    m1, m0 = b.const(m >> 16), b.const(m & 0xFFFF)
    mid = b.op("Add", b.op("Mul", a1, m0), b.op("Mul", a0, m1))
    lo_full = b.op("Add", b.op("Mul", a0, m0), b.op("Mul", b.op("BitwiseAnd", mid, b.const(0xFFFF)), b.const(1 << 16)))
    lo = b.op("BitwiseAnd", lo_full, b.const(_M32))
    hi = b.op("Add", b.op("Add", b.op("Mul", a1, m1), b.op("Div", mid, b.const(1 << 16))),
              b.op("Div", lo_full, b.const(1 << 32)))
    return b.op("BitwiseAnd", hi, b.const(_M32)), lo


def _philox_pick(b: _Body, win: str, seed: str) -> str:
    """The pick of poolexport._philox / ops.stochastic_pool over windows (N*C, K, O...),
    returned flat (N*C*P,) in float32. Bit-exact: CumSum accumulates sequentially in
    float32 in ONNX Runtime and NumPy, as the kernels do."""
    from .._philox import PHILOX_M0, PHILOX_M1, PHILOX_ROUNDS, PHILOX_W0, PHILOX_W1

    kdim = b.op("Slice", b.op("Shape", win), b.const([1]), b.const([2]))
    rows3 = b.op("Reshape", win, b.op("Concat", b.const([0]), kdim, b.const([-1]), axis=0))
    rows = b.op("Reshape", b.op("Transpose", rows3, perm=[0, 2, 1]), b.op("Concat", b.const([-1]), kdim, axis=0))
    return _rows_pick(b, rows, kdim, seed)


def _rows_pick(b: _Body, rows: str, kdim: str, seed: str) -> str:
    """The pick over rows (M, K), row m keyed by element index m; returns (M,) float32."""
    from .._philox import PHILOX_M0, PHILOX_M1, PHILOX_ROUNDS, PHILOX_W0, PHILOX_W1

    r = b.op("Relu", rows)
    cum = b.op("CumSum", r, b.const(1))
    total = b.op("Squeeze", b.op("Gather", cum, b.op("Sub", kdim, b.const([1])), axis=1), b.const([1]))
    m = b.op("Shape", total)
    e = b.op("Range", b.const(0), b.op("Squeeze", m), b.const(1))
    # key = (seed mod 2^32, (seed >> 32) mod 2^32) of the two's-complement seed
    k0 = b.op("BitwiseAnd", seed, b.const(_M32))
    k1 = b.op("BitwiseAnd", b.op("Div", b.op("Sub", seed, k0), b.const(1 << 32)), b.const(_M32))
    zero = b.op("Mul", e, b.const(0))
    c = [b.op("BitwiseAnd", e, b.const(_M32)), b.op("Div", e, b.const(1 << 32)), zero, zero]
    for rnd in range(PHILOX_ROUNDS):
        if rnd:
            k0 = b.op("BitwiseAnd", b.op("Add", k0, b.const(PHILOX_W0)), b.const(_M32))
            k1 = b.op("BitwiseAnd", b.op("Add", k1, b.const(PHILOX_W1)), b.const(_M32))
        hi0, lo0 = _mulhilo(b, c[0], PHILOX_M0)
        hi1, lo1 = _mulhilo(b, c[2], PHILOX_M1)
        c = [b.op("BitwiseXor", b.op("BitwiseXor", hi1, c[1]), k0), lo1,
             b.op("BitwiseXor", b.op("BitwiseXor", hi0, c[3]), k1), lo0]
    u = b.op("Mul", b.op("Cast", b.op("Div", c[0], b.const(256)), to=TensorProto.FLOAT),
             b.const(2.0**-24, np.float32))
    t = b.op("Mul", u, total)
    hit = b.op("Cast", b.op("Greater", cum, b.op("Unsqueeze", t, b.const([1]))), to=TensorProto.INT32)
    first = b.op("ArgMax", hit, axis=1, keepdims=1)
    any_hit = b.op("Greater", b.op("ReduceMax", hit, b.const([1]), keepdims=1), b.const(0, np.int32))
    positive = b.op("Cast", b.op("Greater", r, b.const(0.0, np.float32)), to=TensorProto.INT32)
    last = b.op("ArgMax", positive, axis=1, keepdims=1, select_last_index=1)
    pick = b.op("Where", any_hit, first, last)
    picked = b.op("Squeeze", b.op("GatherElements", rows, pick, axis=1), b.const([1]))
    # total 0: no pick, 0; NaN (a NaN in the row, Relu keeps it): NaN
    none = b.op("Where", b.op("IsNaN", total), total, b.const(0.0, np.float32))
    return b.op("Where", b.op("Greater", total, b.const(0.0, np.float32)), picked, none)


def reduce_soft_pool_function(opset: int = D.OPSET) -> onnx.FunctionProto:
    b = _Body("rsp")
    xf = b.op("Cast", "X", to=TensorProto.FLOAT)
    y = _soft_math(b, xf, None, b.ref("value_ints", "axes"), keepdims_ref=True)
    b.nodes.append(helper.make_node("CastLike", [y, "X"], ["Y"]))
    return _function(D.REDUCE_SOFT_POOL, b, ["axes", "keepdims", "beta"], opset)


def reduce_stochastic_pool_function(opset: int = D.OPSET, sample: bool = False) -> onnx.FunctionProto:
    b = _Body("rstp")
    xf = b.op("Cast", "X", to=TensorProto.FLOAT)
    axes = b.ref("value_ints", "axes")
    attrs = ["axes", "keepdims", "mode", "seed"]
    if not sample:
        y = _stochastic_math(b, xf, axes, keepdims_ref=True)
        b.nodes.append(helper.make_node("CastLike", [y, "X"], ["Y"]))
        return _function(D.REDUCE_STOCHASTIC_POOL, b, attrs, opset)
    is_sample, seed = _mode_is_sample(b)
    # the output shape, read here because branches cannot use attribute references
    out_shape = b.op("Shape", b.op_ref("ReduceMax", [xf, axes], {"keepdims": (_INT, "keepdims")}))
    e = _Body("rstp_e")
    y_e = e.op("Reshape", _stochastic_math(e, xf, axes, keepdims_ref=False, keepdims=1), out_shape)
    # sample: a rank-generic transpose (reduced axes last, ascending) by scattering every
    # element to row = its output element, column = its row-major position in the window
    t = _Body("rstp_s")
    shape = t.op("Shape", xf)
    rank = t.op("Size", shape)
    norm = t.op("Mod", t.op("Add", axes, rank), rank)
    zeros = t.op("Mul", shape, b.const(0))
    mask = t.op("Cast", t.op("ScatterElements", zeros, norm, t.op("Add", t.op("Mul", norm, b.const(0)), b.const(1))),
                to=TensorProto.BOOL)
    kept_shape = t.op("Where", mask, b.const(1), shape)
    red_shape = t.op("Where", mask, shape, b.const(1))
    m = t.op("ReduceProd", kept_shape, keepdims=1)
    kdim = t.op("ReduceProd", red_shape, keepdims=1)
    row = t.op("Expand", t.op("Reshape", t.op("Range", b.const(0), t.op("Squeeze", m), b.const(1)), kept_shape), shape)
    col = t.op("Expand", t.op("Reshape", t.op("Range", b.const(0), t.op("Squeeze", kdim), b.const(1)), red_shape),
               shape)
    key = t.op("Reshape", t.op("Add", t.op("Mul", row, kdim), col), b.const([-1]))
    flat = t.op("Reshape", xf, b.const([-1]))
    rows = t.op("Reshape", t.op("ScatterElements", t.op("Mul", flat, b.const(0.0, np.float32)), key, flat, axis=0),
                t.op("Concat", m, kdim, axis=0))
    y_s = t.op("Reshape", _rows_pick(t, rows, kdim, seed), out_shape)
    _if_mode(b, is_sample, t, y_s, e, y_e)
    return helper.make_function(D.DOMAIN, D.REDUCE_STOCHASTIC_POOL, ["X"], ["Y"], b.nodes,
                                [helper.make_opsetid("", opset), helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
                                attributes=attrs)


def _mode_is_sample(b: _Body) -> tuple[str, str]:
    """(mode == "sample" as a bool scalar, seed as an int64 scalar)."""
    mode = b.op("Reshape", b.ref("value_string", "mode"), b.const([1]))
    mode_id = b.op("LabelEncoder", mode, domain="ai.onnx.ml", keys_strings=["expectation", "sample"],
                   values_int64s=[0, 1], default_int64=-1)
    return b.op("Equal", b.op("ReduceMax", mode_id, keepdims=0), b.const(1)), b.ref("value_int", "seed")


def _if_mode(b: _Body, is_sample: str, t: _Body, y_s: str, e: _Body, y_e: str) -> None:
    """Y = CastLike(If(is_sample, then: y_s, else: y_e), X)."""
    b.n += 1
    y = f"{b.prefix}_y_{b.n}"
    graph = lambda body, name, o: helper.make_graph(  # noqa: E731
        body.nodes, name, [], [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)])
    b.nodes.append(helper.make_node("If", [is_sample], [y], then_branch=graph(t, "sample", y_s),
                                    else_branch=graph(e, "expectation", y_e)))
    b.nodes.append(helper.make_node("CastLike", [y, "X"], ["Y"]))


# ------------------------------------------------------------------ the adaPool family
# ada_pool.h's math on the (N*C, K, O'...) windows: the window mean and the IDW distances
# on values scaled by SOFT_SCALE where max |w| > SOFT_SCALE_ABOVE; DSC on a / q, m / q
# (q = max(|a|, |m|)), so exp(DSC) is at most e; IDW weights dmin / dist in (0, 1]. Finite
# for any finite input; the results are clipped to [-max |w|, max |w|].
def _ada_common(b: _Body, win: str, valid: str):
    """(scaled windows, validity as float, scaled mean (keepdims), finish(yk) -> y)."""
    ax = b.const([1])
    amax = b.op("ReduceMax", b.op("Abs", win), ax, keepdims=1)  # padding is 0 in win
    k = _scale(b, amax, SOFT_SCALE_ABOVE, SOFT_SCALE)
    wk = b.op("Mul", win, k)
    vf = b.op("Cast", valid, to=TensorProto.FLOAT)
    n = b.op("ReduceSum", vf, ax, keepdims=1)
    mk = _safe_div(b, b.op("ReduceSum", wk, ax, keepdims=1), n)

    def finish(yk: str) -> str:
        k0 = b.op("ReduceMax", k, ax, keepdims=0)
        ak = b.op("Mul", b.op("ReduceMax", amax, ax, keepdims=0), k0)
        return b.op("Div", b.op("Min", b.op("Max", yk, b.op("Neg", ak)), ak), k0)

    return wk, vf, mk, finish


def _edscw_math(b: _Body, win: str, valid: str) -> str:
    wk, vf, mk, finish = _ada_common(b, win, valid)
    ax, zero, one = b.const([1]), b.const(0.0, np.float32), b.const(1.0, np.float32)
    q = b.op("Max", b.op("Abs", wk), b.op("Abs", mk))
    qpos = b.op("Greater", q, zero)
    safe = b.op("Where", qpos, q, one)
    u, v = b.op("Div", wk, safe), b.op("Div", mk, safe)
    r2 = b.op("Where", qpos, b.op("Add", b.op("Mul", u, u), b.op("Mul", v, v)), one)
    dsc = b.op("Where", qpos, b.op("Div", b.op("Mul", b.const(2.0, np.float32), b.op("Abs", b.op("Mul", u, v))), r2),
               one)
    e = b.op("Mul", b.op("Exp", dsc), vf)
    s = b.op("ReduceSum", e, ax, keepdims=0)
    num = b.op("ReduceSum", b.op("Mul", e, wk), ax, keepdims=0)
    return finish(_safe_div(b, num, s))


def _idw_math(b: _Body, win: str, valid: str) -> str:
    wk, vf, mk, finish = _ada_common(b, win, valid)
    ax, zero, one = b.const([1]), b.const(0.0, np.float32), b.const(1.0, np.float32)
    dist = b.op("Where", valid, b.op("Abs", b.op("Sub", wk, mk)), b.const(np.inf, np.float32))
    dmin = b.op("ReduceMin", dist, ax, keepdims=1)  # inf for an all-padding window
    pos = b.op("And", valid, b.op("Greater", dist, zero))
    w = b.op("Where", pos, b.op("Div", dmin, b.op("Where", pos, dist, one)), zero)
    s = b.op("ReduceSum", w, ax, keepdims=0)
    num = b.op("ReduceSum", b.op("Mul", w, wk), ax, keepdims=0)
    hit = b.op("Equal", b.op("ReduceMax", b.op("Cast", b.op("Equal", dist, zero), to=TensorProto.FLOAT), ax,
                                keepdims=0), one)  # some value equals the mean: the limit, y = m
    yk = b.op("Where", hit, b.op("Squeeze", mk, ax), _safe_div(b, num, s))
    return finish(yk)


def _em_math(b: _Body, win: str, valid: str) -> str:
    """SoftPool with beta = 1 (eM), _soft_math's steps without the beta attribute."""
    ax = b.const([1])
    z = b.op("Where", valid, win, b.const(-np.inf, np.float32))
    m = b.op("ReduceMax", z, ax, keepdims=1)
    m = b.op("Where", b.op("IsInf", m), b.const(0.0, np.float32), m)
    e = b.op("Exp", b.op("Sub", z, m))
    amax = b.op("ReduceMax", b.op("Abs", win), ax, keepdims=1)
    k = _scale(b, amax, SOFT_SCALE_ABOVE, SOFT_SCALE)
    s = b.op("ReduceSum", e, ax, keepdims=0)
    num = b.op("ReduceSum", b.op("Mul", e, b.op("Mul", win, k)), ax, keepdims=0)
    k0 = b.op("ReduceMax", k, ax, keepdims=0)
    ak = b.op("Mul", b.op("ReduceMax", amax, ax, keepdims=0), k0)
    return b.op("Div", b.op("Min", b.op("Max", _safe_div(b, num, s), b.op("Neg", ak)), ak), k0)


def _ada_window_function(name: str, math, opset: int) -> onnx.FunctionProto:
    b = _Body(name.lower())
    body, (y,) = _generic_windowed(f"{name.lower()}_g", math)
    b.nodes += body.nodes
    b.nodes.append(helper.make_node("CastLike", [y, "X"], ["Y"]))
    return _function(name, b, _WINDOW_ATTRS, opset)


def edscw_pool_function(opset: int = D.OPSET) -> onnx.FunctionProto:
    return _ada_window_function(D.EDSCW_POOL, _edscw_math, opset)


def idw_pool_function(opset: int = D.OPSET) -> onnx.FunctionProto:
    return _ada_window_function(D.IDW_POOL, _idw_math, opset)


def ada_pool_function(opset: int = D.OPSET) -> onnx.FunctionProto:
    """Y = Beta * eDSCW + (1 - Beta) * eM, Beta broadcast (numpy rules) to Y."""
    b = _Body("ada")
    body, (e,) = _generic_windowed("ada_e", _edscw_math)
    b.nodes += body.nodes
    body, (s,) = _generic_windowed("ada_s", _em_math)
    b.nodes += body.nodes
    beta = b.op("Cast", "Beta", to=TensorProto.FLOAT)
    y = b.op("Add", b.op("Mul", beta, e), b.op("Mul", b.op("Sub", b.const(1.0, np.float32), beta), s))
    # beta in [0, 1]: kept between the two values (ada_pool.h's rule)
    inside = b.op("And", b.op("GreaterOrEqual", beta, b.const(0.0, np.float32)),
                  b.op("LessOrEqual", beta, b.const(1.0, np.float32)))
    y = b.op("Where", inside, b.op("Min", b.op("Max", y, b.op("Min", e, s)), b.op("Max", e, s)), y)
    b.nodes.append(helper.make_node("CastLike", [y, "X"], ["Y"]))
    return helper.make_function(D.DOMAIN, D.ADA_POOL, ["X", "Beta"], ["Y"], b.nodes,
                                [helper.make_opsetid("", opset)], attributes=_WINDOW_ATTRS)


BUILDERS = {
    D.SOFT_POOL: soft_pool_function,
    D.STOCHASTIC_POOL: stochastic_pool_function,
    D.REDUCE_SOFT_POOL: reduce_soft_pool_function,
    D.REDUCE_STOCHASTIC_POOL: reduce_stochastic_pool_function,
    D.EDSCW_POOL: edscw_pool_function,
    D.IDW_POOL: idw_pool_function,
    D.ADA_POOL: ada_pool_function,
}


def _ada_unpool_function(opset: int = D.OPSET) -> onnx.FunctionProto:
    from .ada_unpool import ada_unpool_function

    return ada_unpool_function(opset)


BUILDERS[D.ADA_UNPOOL] = _ada_unpool_function


def functions(op_types, opset: int = D.OPSET, sample: bool = False, fast: bool = True) -> list[onnx.FunctionProto]:
    """The local functions for the given op types (each once, in a stable order);
    ``sample``: StochasticPool's body also handles mode="sample"; ``fast=False``: the
    windowed ops without their run-time fast forms (the portable target decided already)."""
    out = []
    for name in D.OPS + D.ADA_OPS + D.UNPOOL_OPS:
        if name in set(op_types):
            fn = BUILDERS[name]
            if name == D.SOFT_POOL:
                out.append(fn(opset, fast=fast))
            elif name == D.STOCHASTIC_POOL:
                out.append(fn(opset, sample=sample, fast=fast))
            elif name == D.REDUCE_STOCHASTIC_POOL:
                out.append(fn(opset, sample=sample))
            else:
                out.append(fn(opset))
    return out
