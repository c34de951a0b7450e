"""Fast standard-op forms of SoftPool and StochasticPool for the ``portable`` target.

The generic decomposition (``decompositions.py``) extracts every window with a one-hot
Conv: correct for any attributes, and 4-7x slower than the naive formula. The portable
target knows each node's attributes, so nodes with dilation 1 and pads below the kernel
(the windows ONNX's AveragePool at opset 18 covers) get a form built from ops that every
runtime runs fast:

* StochasticPool, mode "expectation": sum(r^2)/sum(r) over a window is
  AveragePool(r^2)/AveragePool(r) (the counts cancel; ``count_include_pad=0`` keeps
  padding out of the window). Exact while every sum of r^2 stays finite; an ``If`` on
  the sums (none inf; a NaN input's NaN stays in its windows, as on every runtime) takes
  the generic decomposition otherwise (its per-window scale keeps the sums finite for any
  finite input).
* SoftPool: softmax is shift-invariant, so one exp per input element under one shift per
  (N, C) plane, e = exp(beta*x - max_plane), gives y = AveragePool(x*e)/AveragePool(e):
  the naive formula's cost plus one ReduceMax and one Sub. It is exact to float32
  rounding unless a window's weights underflow: when every window's mean weight is at
  least exp(-60), its largest weight is too, and any weight lost to underflow (below
  exp(-87)) is under exp(-27) of it, invisible in float32. An ``If`` on that check (a
  ReduceMin over the output-sized denominator) takes the generic decomposition otherwise,
  so any finite input gives a finite, exact result. Before that, an outer ``If`` tries
  the same form with no shift at all (e = exp(beta*x)) when beta*x <= 60 everywhere
  (one scalar ReduceMax) and the same weight check holds: ordinary activations then skip
  the shift's full-size Sub (measured 1.28-1.34x the naive formula instead of 1.35-1.6x).
  Only for |beta| >= 1e-6: with a tinier beta, x * exp(beta*x) could overflow.

Everything else (dilations, pads as large as the kernel, sample mode) keeps the generic
decomposition. (A reshape into non-overlapping blocks was tried for kernel == stride: ONNX
Runtime reduces the strided block axes 3-4x slower than the form above.)
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from . import domain as D
from .decompositions import (  # one coding of the fast forms
    MIN_UNSHIFTED_BETA,
    _Body,
    expectation_ratio,
    shared_shift_soft,
    unshifted_soft,
)



def _attrs(node) -> dict:
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _avg_attrs(a: dict) -> dict:
    attrs = dict(kernel_shape=a["kernel_shape"], strides=a["strides"], ceil_mode=a["ceil_mode"],
                 count_include_pad=0)
    if a["auto_pad"] == "NOTSET":
        attrs["pads"] = a["pads"]
    else:
        attrs["auto_pad"] = a["auto_pad"]
    return attrs


def _dilation_one_pads_small(a: dict) -> bool:
    k = len(a["kernel_shape"])
    return all(d == 1 for d in a["dilations"]) and all(
        a["pads"][i] < a["kernel_shape"][i] and a["pads"][k + i] < a["kernel_shape"][i] for i in range(k))


def _pool(g: _Body, a: dict):
    """AveragePool of the node's window (count_include_pad=0), attributes as constants."""
    return lambda t: g.op("AveragePool", t, **_avg_attrs(a))


def _generic_branch(node, model_opset: int, prefix: str, x_name: str):
    """The generic decomposition of ``node`` inlined into a subgraph (nodes, output name)."""
    import onnx.inliner

    from .decompositions import functions

    y = f"{prefix}/generic_y"
    call = helper.make_node(node.op_type, [x_name], [y], domain=D.DOMAIN, name=f"{prefix}/generic")
    call.attribute.extend(node.attribute)
    graph = helper.make_graph([call], "generic", [helper.make_tensor_value_info(x_name, TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)])
    tmp = helper.make_model(graph, opset_imports=[helper.make_opsetid("", model_opset),
                                                  helper.make_opsetid(D.DOMAIN, D.VERSION)],
                            functions=functions([node.op_type], model_opset, fast=False))
    inlined = onnx.inliner.inline_local_functions(tmp)
    return list(inlined.graph.node), list(inlined.graph.initializer), y


def fast_form(node, model_opset: int, index: int, elem_type=None):
    """(nodes, initializers) replacing ``node``, or None when the generic form must stay.
    ``elem_type``: the input's ONNX element type when known (float32 needs no Cast)."""
    a = _attrs(node)
    if node.op_type == D.STOCHASTIC_POOL and a.get("mode") != "expectation":
        return None
    if node.op_type not in D.WINDOWED_OPS or not _dilation_one_pads_small(a):
        return None
    g = _Body(f"{node.name or node.op_type}_{index}")
    x, y_out = node.input[0], node.output[0]
    is_float = elem_type == TensorProto.FLOAT
    xf = x if is_float else g.op("Cast", x, to=TensorProto.FLOAT)
    generic_inits = []
    rank = len(a["kernel_shape"]) + 2  # a typed output of known rank satisfies onnx.checker
    graph = lambda nodes, name, out: helper.make_graph(  # noqa: E731
        nodes, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, [None] * rank)])
    if node.op_type == D.STOCHASTIC_POOL:
        # the ratio where every output is finite, else (a sum of r^2 overflowed) the generic
        # decomposition, whose per-window scale keeps the sums finite
        y_fast, ok = expectation_ratio(g, xf, _pool(g, a))
        generic_nodes, generic_inits, y_generic = _generic_branch(node, model_opset, g.prefix, xf)
        kept = f"{g.prefix}/ratio_y"
        y = g.op("If", ok, then_branch=graph([helper.make_node("Identity", [y_fast], [kept])], "ratio", kept),
                 else_branch=graph(generic_nodes, "per_window", y_generic))
    else:
        z = xf if a["beta"] == 1.0 else g.op("Mul", xf, g.const(a["beta"], np.float32))
        # shifted: one shift per plane, else the generic decomposition
        s = _Body(f"{g.prefix}_shifted")
        num, den, ok = shared_shift_soft(s, xf, z, s.const(list(range(2, len(a["kernel_shape"]) + 2))), _pool(s, a))
        y_fast = s.op("Div", num, den)
        generic_nodes, generic_inits, y_generic = _generic_branch(node, model_opset, g.prefix, xf)
        kept = f"{g.prefix}/shared_shift_y"
        y_shifted = s.op("If", ok,
                         then_branch=graph([helper.make_node("Identity", [y_fast], [kept])], "shared_shift", kept),
                         else_branch=graph(generic_nodes, "per_window", y_generic))
        if abs(a["beta"]) >= MIN_UNSHIFTED_BETA:  # first the unshifted form, the shifted one when it does not hold
            num, den, ok = unshifted_soft(g, xf, z, _pool(g, a))
            y_plain = g.op("Div", num, den)
            kept = f"{g.prefix}/unshifted_y"
            y = g.op("If", ok, then_branch=graph([helper.make_node("Identity", [y_plain], [kept])], "unshifted", kept),
                     else_branch=graph(s.nodes, "shifted", y_shifted))
        else:
            g.nodes += s.nodes
            y = y_shifted
    if is_float:
        g.nodes.append(helper.make_node("Identity", [y], [y_out]))
    else:
        g.nodes.append(helper.make_node("CastLike", [y, x], [y_out]))
    return g.nodes, generic_inits


def specialize(model: onnx.ModelProto, opset: int) -> None:
    """Replace each SoftPool/StochasticPool node that has a fast form (in place)."""
    try:
        typed = onnx.shape_inference.infer_shapes(model)
        types = {vi.name: vi.type.tensor_type.elem_type
                 for vi in list(typed.graph.input) + list(typed.graph.value_info) + list(typed.graph.output)}
    except Exception:
        types = {}
    new_nodes, inits = [], []
    for i, node in enumerate(model.graph.node):
        form = fast_form(node, opset, i, types.get(node.input[0])) if node.domain == D.DOMAIN else None
        if form is None:
            new_nodes.append(node)
        else:
            new_nodes += form[0]
            inits += form[1]
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    model.graph.initializer.extend(inits)
