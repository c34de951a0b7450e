"""The ``poolexport`` ONNX domain (version 1): op names, attributes and OpSchemas.

Registering the schemas lets ``onnx.checker`` validate nodes of this domain and lets
onnxscript (the dynamo exporter's translation layer) look the ops up. Attribute names are
the argument names of the torch.library ops in ``poolexport.ops``; defaults are those of
ONNX ``AveragePool`` (strides 1, pads 0, dilations 1, ceil_mode 0, auto_pad NOTSET).
"""
from __future__ import annotations

import onnx
from onnx import defs

DOMAIN = "poolexport"
VERSION = 1
OPSET = 18  # standard opset of exported graphs and of the decompositions

SOFT_POOL = "SoftPool"
STOCHASTIC_POOL = "StochasticPool"
REDUCE_SOFT_POOL = "ReduceSoftPool"
REDUCE_STOCHASTIC_POOL = "ReduceStochasticPool"
OPS = (SOFT_POOL, STOCHASTIC_POOL, REDUCE_SOFT_POOL, REDUCE_STOCHASTIC_POOL)
WINDOWED_OPS = (SOFT_POOL, STOCHASTIC_POOL)
# the adaPool family (Stergiou and Poppe, IEEE TIP 2022): windowed, CPU kernels only
EDSCW_POOL = "EdscwPool"
IDW_POOL = "IdwPool"
ADA_POOL = "AdaPool"
ADA_OPS = (EDSCW_POOL, IDW_POOL, ADA_POOL)
# adaUnpool: not windowed (no attributes), CPU kernel only
ADA_UNPOOL = "AdaUnpool"
UNPOOL_OPS = (ADA_UNPOOL,)

_A = defs.OpSchema.AttrType
_Attr = defs.OpSchema.Attribute

_WINDOW_DOC = """
Windowing follows ONNX AveragePool exactly (attributes kernel_shape, strides, pads,
dilations, ceil_mode, auto_pad with the same meaning and defaults); padded positions are
never part of a window, and a window with no valid position outputs 0. X is
N x C x D1..Dk with k = 1, 2 or 3. Window positions are ordered row-major over the kernel.
"""

_DOCS = {
    SOFT_POOL: "SoftPool (Stergiou et al., ICCV 2021): Y = sum_i softmax(beta * w)_i * w_i over each "
    "window w, computed stably (the window maximum is subtracted before exp)." + _WINDOW_DOC,
    STOCHASTIC_POOL: "Stochastic pooling (Zeiler and Fergus, ICLR 2013) with r = max(w, 0): mode "
    "'expectation' gives sum(r^2)/sum(r); mode 'sample' picks w_i with probability r_i/sum(r) using "
    "Philox4x32-10 keyed by seed and the flat output index (see poolexport._philox). A window with "
    "sum(r) = 0 outputs 0." + _WINDOW_DOC,
    REDUCE_SOFT_POOL: "SoftPool over whole axes: Y = sum softmax(beta * X) * X over `axes` (ReduceMean's "
    "meaning of axes and keepdims; all axes when axes is absent or empty), computed stably.",
    REDUCE_STOCHASTIC_POOL: "Stochastic pooling over whole axes (ReduceMean's meaning of axes and "
    "keepdims): mode 'expectation' gives sum(r^2)/sum(r) with r = max(X, 0); mode 'sample' picks with "
    "Philox4x32-10 keyed by seed and the flat output index, window order row-major over the reduced axes.",
    EDSCW_POOL: "eDSCW pooling (adaPool, Stergiou and Poppe, IEEE TIP 2022): Y = sum_i softmax(DSC(w_i, m))_i * "
    "w_i over each window w with mean m, DSC(a, m) = 2|a m| / (a^2 + m^2) (1 at a = m = 0)." + _WINDOW_DOC,
    IDW_POOL: "Inverse-distance-weighted pooling (adaPool repository): Y = sum_i w_i * x_i over each window, "
    "w_i proportional to 1 / |x_i - m| (m the window mean); Y = m where some x_i equals m." + _WINDOW_DOC,
    ADA_POOL: "adaPool (Stergiou and Poppe, IEEE TIP 2022): Y = Beta * EdscwPool(X) + (1 - Beta) * "
    "SoftPool(X, beta=1); Beta (not clamped) broadcasts to Y numpy-style." + _WINDOW_DOC,
}


def _window_attrs() -> list:
    return [
        _Attr("kernel_shape", _A.INTS, "Window size along each spatial axis.", required=True),
        _Attr("strides", _A.INTS, "Stride along each spatial axis (default 1).", required=False),
        _Attr("pads", _A.INTS, "Begin and end padding of each spatial axis (default 0).", required=False),
        _Attr("dilations", _A.INTS, "Dilation along each spatial axis (default 1).", required=False),
        _Attr("ceil_mode", onnx.helper.make_attribute("ceil_mode", 0), "Use ceil for the output shape."),
        _Attr("auto_pad", onnx.helper.make_attribute("auto_pad", "NOTSET"),
              "NOTSET, SAME_UPPER, SAME_LOWER or VALID (AveragePool's meaning)."),
    ]


def _reduce_attrs() -> list:
    return [
        _Attr("axes", _A.INTS, "Axes to reduce (all when absent or empty).", required=False),
        _Attr("keepdims", onnx.helper.make_attribute("keepdims", 1), "Keep the reduced axes with size 1."),
    ]


def _soft_attrs() -> list:
    return [_Attr("beta", onnx.helper.make_attribute("beta", 1.0), "Inverse temperature (0 = average pooling).")]


def _stochastic_attrs() -> list:
    return [
        _Attr("mode", onnx.helper.make_attribute("mode", "expectation"), "'expectation' (inference) or 'sample'."),
        _Attr("seed", onnx.helper.make_attribute("seed", 0), "Seed of the Philox generator (mode 'sample')."),
    ]


def _seed_word_attrs() -> list:
    # written only by the ``tensorrt`` target, in place of seed: TensorRT's ONNX parser
    # narrows an INT attribute to int32, so the seed travels as its two 32-bit words
    return [
        _Attr("seed_lo", _A.INT, "Low 32 bits of seed, as a signed int32 (tensorrt target).", required=False),
        _Attr("seed_hi", _A.INT, "High 32 bits of seed, as a signed int32 (tensorrt target).", required=False),
    ]


def _plugin_attrs() -> list:
    # written only by the ``tensorrt`` target: TensorRT's ONNX parser finds the plugin by
    # op type + the first two attributes and takes the ahead-of-time implementation when
    # ``aot`` is 1; every other runtime ignores them
    return [
        _Attr("plugin_namespace", _A.STRING, "TensorRT plugin namespace ('poolexport').", required=False),
        _Attr("plugin_version", _A.STRING, "TensorRT plugin version ('1').", required=False),
        _Attr("aot", _A.INT, "1: TensorRT uses the plugin's ahead-of-time (PTX) implementation.", required=False),
    ]


# ------------------------------------------------------------------ type and shape inference
def _attr(ctx, name, default):
    a = ctx.get_attribute(name)
    if a is None:
        return default
    value = onnx.helper.get_attribute_value(a)
    return value.decode() if isinstance(value, bytes) else value


def _input_dims(ctx, i: int = 0):
    """Input i's (elem_type, dims or None); dims hold ints, dim_param strings, or None (unknown)."""
    t = ctx.get_input_type(i)
    if t is None or not t.HasField("tensor_type"):
        return None, None
    tt = t.tensor_type
    if not tt.HasField("shape"):
        return tt.elem_type, None
    return tt.elem_type, [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]


def _set_output(ctx, elem_type, dims) -> None:
    ctx.set_output_type(0, onnx.helper.make_tensor_type_proto(elem_type, dims))


def _infer_windowed(ctx) -> None:
    """ONNX AveragePool's output-size rule (poolexport._window), axis by axis: a symbolic
    spatial size stays symbolic where the window keeps the size (stride 1, SAME or a span
    covered by the pads) and becomes unknown elsewhere; N and C pass through."""
    from .._window import INT_OPS, axis_output, make_window_spec, resolve_axis

    elem, dims = _input_dims(ctx)
    if elem is None:
        return
    if dims is None:
        return _set_output(ctx, elem, None)
    k = len(dims) - 2
    kernel = _attr(ctx, "kernel_shape", [])
    if k not in (1, 2, 3) or len(kernel) != k:
        raise ValueError(f"poolexport: kernel_shape {list(kernel)} does not fit a {len(dims)}-D input")
    spec = make_window_spec("poolexport", k, kernel, _attr(ctx, "strides", []) or 1, _attr(ctx, "pads", []) or 0,
                            _attr(ctx, "dilations", []) or 1, bool(_attr(ctx, "ceil_mode", 0)),
                            _attr(ctx, "auto_pad", "NOTSET"))
    out = dims[:2]
    for i, n in enumerate(dims[2:]):
        if isinstance(n, int):
            out.append(resolve_axis(spec, i, n)[0])  # checks that the window fits
        else:
            args = (spec.kernel_shape[i], spec.strides[i], spec.pads[i], spec.pads[k + i], spec.dilations[i],
                    spec.ceil_mode, spec.auto_pad, INT_OPS)
            # with stride 1 the rule is n + constant, so one large size tells whether it keeps n
            keeps = spec.strides[i] == 1 and int(axis_output(1000, *args)[0]) == 1000
            out.append(n if keeps else None)
    _set_output(ctx, elem, out)


def _infer_reduce(ctx) -> None:
    from .._window import reduce_layout

    elem, dims = _input_dims(ctx)
    if elem is None:
        return
    if dims is None:
        return _set_output(ctx, elem, None)
    axes = _attr(ctx, "axes", [])
    _, _, _, out = reduce_layout(dims, list(axes), bool(_attr(ctx, "keepdims", 1)), "poolexport")
    _set_output(ctx, elem, list(out))


def _schema(name: str, attrs: list) -> defs.OpSchema:
    inputs = [defs.OpSchema.FormalParameter("X", "T", "Input tensor.")]
    if name == ADA_POOL:
        inputs.append(defs.OpSchema.FormalParameter("Beta", "T", "Blend mask, broadcast to Y."))
    schema = defs.OpSchema(
        name,
        DOMAIN,
        VERSION,
        _DOCS[name],
        inputs=inputs,
        outputs=[defs.OpSchema.FormalParameter("Y", "T", "Pooled tensor.")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float32 or float16 tensors.")],
        attributes=attrs + _plugin_attrs(),
    )
    schema.set_type_and_shape_inference_function(_infer_windowed if name in WINDOWED_OPS + ADA_OPS else _infer_reduce)
    return schema


def schemas() -> list[defs.OpSchema]:
    return [
        _schema(SOFT_POOL, _window_attrs() + _soft_attrs()),
        _schema(STOCHASTIC_POOL, _window_attrs() + _stochastic_attrs() + _seed_word_attrs()),
        _schema(REDUCE_SOFT_POOL, _reduce_attrs() + _soft_attrs()),
        _schema(REDUCE_STOCHASTIC_POOL, _reduce_attrs() + _stochastic_attrs() + _seed_word_attrs()),
    ] + [_schema(name, _window_attrs()) for name in ADA_OPS] + [_unpool_schema()]


def _unpool_schema() -> defs.OpSchema:
    from .ada_unpool import schema

    return schema()


def register_schemas() -> None:
    """Register the domain's OpSchemas once per process (idempotent)."""
    for schema in schemas():
        if not defs.has(schema.name, DOMAIN):
            defs.register_schema(schema)


register_schemas()
