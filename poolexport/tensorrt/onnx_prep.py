"""Shape an ONNX model's poolexport nodes the way TensorRT's ONNX parser needs them.

Applied by the engine builder to its own copy of the model (the file is not touched), so
any poolexport export (``ort`` or ``tensorrt`` target) builds:

* ``plugin_namespace="poolexport"``, ``plugin_version="1"`` and ``aot=1`` on every node
  (the parser finds plugin ``poolexport::<OpType>``; ``aot`` asks for the AOT path);
* every attribute written, defaults filled in (tensorrt.plugin declares attributes
  without defaults; the parser skips a field the node lacks), in the plugin's field order;
* the int64 ``seed`` split into int32 ``seed_lo``/``seed_hi``: the parser reads an INT
  attribute as int32 (``loadFields``), which would drop the seed's high word;
* no model-local function for these ops (the parser prefers a local function over a
  plugin).
"""
from __future__ import annotations

import onnx
from onnx import helper

from . import abi
from .plugins import ATTRS, NAMESPACE, VERSION

DOMAIN = "poolexport"
_PLUGIN_ATTRS = ("plugin_namespace", "plugin_version", "aot")


def _rank_of(model: onnx.ModelProto, name: str, cache: dict):
    if "inferred" not in cache:
        cache["inferred"] = onnx.shape_inference.infer_shapes(model)
    g = cache["inferred"].graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return None


def _defaults(op: str, attrs: dict, rank) -> dict:
    d = {}
    if "kernel_shape" in ATTRS[op]:
        k = len(attrs["kernel_shape"])
        d = dict(strides=[1] * k, pads=[0] * (2 * k), dilations=[1] * k, ceil_mode=0, auto_pad="NOTSET")
    elif "axes" in ATTRS[op]:
        d = dict(axes=list(range(rank)) if rank is not None else None, keepdims=1)
    if "beta" in ATTRS[op]:
        d["beta"] = 1.0
    elif "mode" in ATTRS[op]:
        d.update(mode="expectation", seed_lo=0, seed_hi=0)
    return d


def _split_seed(op: str, attrs: dict, node_name: str) -> dict:
    """``seed`` -> ``seed_lo``/``seed_hi``; a node prepared before keeps its two words."""
    if "seed" not in attrs:
        return attrs
    if "seed_lo" in attrs or "seed_hi" in attrs:
        raise ValueError(f"{op}: node {node_name!r} has both seed and seed_lo/seed_hi")
    out = {k: v for k, v in attrs.items() if k != "seed"}
    out["seed_lo"], out["seed_hi"] = abi.seed_words(attrs["seed"])
    return out


def prepare_onnx(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with its poolexport nodes shaped for TensorRT (see module doc)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    cache: dict = {}
    for node in out.graph.node:
        if node.domain != DOMAIN:
            continue
        op = node.op_type
        if op not in ATTRS:
            raise ValueError(f"{op}: no TensorRT plugin for this op (known: {', '.join(ATTRS)})")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name not in _PLUGIN_ATTRS}
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
        attrs = {k: v for k, v in attrs.items() if not (isinstance(v, list) and not v)}  # [] = default
        attrs = _split_seed(op, attrs, node.name)
        unknown = set(attrs) - set(ATTRS[op])
        if unknown:
            raise ValueError(f"{op}: unknown attribute(s) {sorted(unknown)} on node {node.name!r}")
        if "kernel_shape" in ATTRS[op] and "kernel_shape" not in attrs:
            raise ValueError(f"{op}: kernel_shape is required (node {node.name!r})")
        if "axes" in ATTRS[op] and "axes" not in attrs:
            rank = _rank_of(out, node.input[0], cache)
            if rank is None:
                raise ValueError(f"{op}: axes is absent and the input rank is unknown (node {node.name!r})")
        else:
            rank = None
        full = {**_defaults(op, attrs, rank), **attrs}
        del node.attribute[:]
        for name in ATTRS[op]:
            node.attribute.append(helper.make_attribute(name, full[name]))
        node.attribute.append(helper.make_attribute("plugin_namespace", NAMESPACE))
        node.attribute.append(helper.make_attribute("plugin_version", VERSION))
        node.attribute.append(helper.make_attribute("aot", 1))
    kept = [f for f in out.functions if f.domain != DOMAIN]
    del out.functions[:]
    out.functions.extend(kept)
    return out
