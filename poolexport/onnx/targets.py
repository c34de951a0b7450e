"""Export targets: what the ``poolexport`` nodes of an exported graph become.

* ``ort`` (default): the custom nodes plus a model-local function of the same name for
  each (the standard-op decomposition), so ONNX Runtime with our custom-op library runs
  the kernels and any other runtime (plain ONNX Runtime, onnx's ReferenceEvaluator) runs
  the decomposition.
* ``portable``: standard ops only; no ``poolexport`` node or domain is left. Nodes with a
  fast form (``portable.py``: AveragePool ratios, a guarded shared shift) get it, the
  others the decomposition inlined.
* ``tensorrt``: the custom nodes shaped for TensorRT's ONNX parser: op type = plugin
  name, ``plugin_namespace="poolexport"``, ``plugin_version="1"``, the int64 ``seed`` as
  int32 ``seed_lo``/``seed_hi``, and no local functions (the parser would prefer a local
  function over the plugin).

Every target writes the node attributes explicitly (AveragePool's defaults filled in), an
IR version that onnxruntime >= 1.17 reads, no initializer or value_info that nothing uses
(ONNX Runtime warns ``Removing initializer ...`` at load for each), and ``metadata_props``
saying what made the file and what it needs (:data:`METADATA_KEYS`). Nodes are named after
the module paths they came from (``names.py``: ``layer1.0.conv1/Conv``).
"""
from __future__ import annotations

import onnx
import onnx.inliner
from onnx import helper

from . import domain as D
from .decompositions import functions
from .names import module_scopes, name_nodes

TARGETS = ("ort", "portable", "tensorrt")
IR_VERSION = 10  # onnx 1.23 writes 14 by default; onnxruntime 1.31 reads up to 13


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _set(node: onnx.NodeProto, name: str, value) -> None:
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


def _input_rank(model: onnx.ModelProto, name: str):
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return None


def custom_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == D.DOMAIN]


def normalize_nodes(model: onnx.ModelProto) -> None:
    """Write every attribute of every poolexport node explicitly (defaults filled in)."""
    ranks = None
    for node in custom_nodes(model):
        if node.op_type not in D.OPS + D.ADA_OPS + D.UNPOOL_OPS:
            known = ", ".join(D.OPS + D.ADA_OPS + D.UNPOOL_OPS)
            raise ValueError(f"{node.op_type}: not an op of the {D.DOMAIN} domain (known: {known})")
        if node.op_type in D.UNPOOL_OPS:
            continue  # no attributes
        a = _attrs(node)
        windowed = node.op_type in D.WINDOWED_OPS + D.ADA_OPS
        if windowed:
            if "kernel_shape" not in a:
                raise ValueError(f"{node.op_type}: kernel_shape is required (node {node.name!r})")
            k = len(a["kernel_shape"])
            defaults = dict(strides=[1] * k, pads=[0] * (2 * k), dilations=[1] * k, ceil_mode=0, auto_pad="NOTSET")
        else:
            defaults = dict(keepdims=1)
            if "axes" not in a or len(a["axes"]) == 0:
                if ranks is None:
                    model_inferred = onnx.shape_inference.infer_shapes(model)
                    ranks = model_inferred
                r = _input_rank(ranks, node.input[0])
                if r is None:
                    raise ValueError(f"{node.op_type}: axes is absent and the input rank is unknown (node {node.name!r})")
                _set(node, "axes", list(range(r)))
        if node.op_type in (D.SOFT_POOL, D.REDUCE_SOFT_POOL):
            defaults["beta"] = 1.0
        elif node.op_type not in D.ADA_OPS:
            defaults.update(mode="expectation", seed=0)
        for name, value in defaults.items():
            if name not in a:
                _set(node, name, value)
        a = _attrs(node)
        auto_pad = a.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if windowed and auto_pad != "NOTSET" and a.get("ceil_mode"):
            _set(node, "ceil_mode", 0)  # ignored by ONNX unless NOTSET; the decomposition relies on 0
        if windowed and auto_pad != "NOTSET":
            _set(node, "pads", [0] * len(a["pads"]))  # ignored by ONNX unless NOTSET; likewise


def _mode(node) -> str:
    mode = _attrs(node).get("mode", b"expectation")
    return mode.decode() if isinstance(mode, bytes) else mode


def uses_sample(model: onnx.ModelProto) -> bool:
    return any(n.op_type in (D.STOCHASTIC_POOL, D.REDUCE_STOCHASTIC_POOL) and _mode(n) == "sample"
               for n in custom_nodes(model))


def check_decomposable(model: onnx.ModelProto) -> None:
    for node in custom_nodes(model):
        if node.op_type in (D.STOCHASTIC_POOL, D.REDUCE_STOCHASTIC_POOL) and _mode(node) not in (
                "expectation", "sample"):
            raise ValueError(f"{node.op_type}: mode must be 'expectation' or 'sample', got {_mode(node)!r}")


def _default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise ValueError("model: no standard ONNX opset import")


def _set_opset(model: onnx.ModelProto, domain: str, version: int | None) -> None:
    kept = [i for i in model.opset_import if i.domain != domain]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    if version is not None:
        model.opset_import.append(helper.make_opsetid(domain, version))


def attach_functions(model: onnx.ModelProto, fast: bool = True) -> onnx.ModelProto:
    """Add the decomposition of each poolexport op used (replacing any already there);
    ``fast=False``: without the run-time choice of a fast form."""
    check_decomposable(model)
    used = {n.op_type for n in custom_nodes(model)}
    kept = [f for f in model.functions if f.domain != D.DOMAIN]
    del model.functions[:]
    sample = uses_sample(model)
    model.functions.extend(kept + functions(used, _default_opset(model), sample=sample, fast=fast))
    if sample:
        from .decompositions import ML_OPSET

        ml = [i for i in model.opset_import if i.domain == "ai.onnx.ml"]
        if ml and ml[0].version != ML_OPSET:
            raise ValueError(f"StochasticPool: mode='sample' needs ai.onnx.ml opset {ML_OPSET} for its "
                             f"decomposition; the model imports {ml[0].version}")
        _set_opset(model, "ai.onnx.ml", ML_OPSET)
    return model


def _names_read(graph: onnx.GraphProto, names: set) -> set:
    """Every name a node of ``graph`` or of its subgraphs (If/Loop/Scan bodies, which may read
    outer-scope values) reads, and the graph's outputs."""
    for node in graph.node:
        names.update(node.input)
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                _names_read(a.g, names)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    _names_read(g, names)
    names.update(o.name for o in graph.output)
    return names


def prune_unused(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop initializers no node (subgraphs included) reads and value_info of names no node
    of the main graph produces (what rewriting left behind, e.g. the shape constant of a
    Reshape that became a Flatten); in place, also returned."""
    graph = model.graph
    read = _names_read(graph, set())
    inputs = {i.name for i in graph.input}  # an initializer that is also an input stays overridable
    kept = [t for t in graph.initializer if t.name in read or t.name in inputs]
    if len(kept) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(kept)
    kept_sparse = [t for t in graph.sparse_initializer if t.values.name in read or t.values.name in inputs]
    if len(kept_sparse) != len(graph.sparse_initializer):
        del graph.sparse_initializer[:]
        graph.sparse_initializer.extend(kept_sparse)
    produced = {o for n in graph.node for o in n.output}
    info = [vi for vi in graph.value_info if vi.name in produced]
    if len(info) != len(graph.value_info):
        del graph.value_info[:]
        graph.value_info.extend(info)
    return model


# metadata_props of every exported file
METADATA_KEYS = ("poolexport.version", "poolexport.target", "poolexport.custom_op_library",
                 "poolexport.domain_version")


def required_library(target: str, has_custom: bool) -> str:
    """What a runtime must load to run the file's poolexport nodes ("none": nothing)."""
    if not has_custom or target == "portable":
        return "none"  # an ort file runs its local functions without the library, but slowly
    if target == "tensorrt":
        return "poolexport.tensorrt plugins (tensorrt.plugin, namespace poolexport, version 1)"
    from ..ort import LIBRARY_NAME

    return LIBRARY_NAME


def set_metadata(model: onnx.ModelProto, target: str, has_custom: bool) -> onnx.ModelProto:
    from .. import __version__

    values = dict(zip(METADATA_KEYS, (__version__, target, required_library(target, has_custom), str(D.VERSION))))
    kept = [p for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in values.items():
        model.metadata_props.add(key=key, value=value)
    return model


def apply_target(model: onnx.ModelProto, target: str = "ort") -> onnx.ModelProto:
    """Shape an exported model for ``target`` (in place; also returned)."""
    if target not in TARGETS:
        raise ValueError(f"target: must be one of {', '.join(TARGETS)}, got {target!r}")
    if _default_opset(model) < D.OPSET:
        raise ValueError(f"opset: the decompositions need opset >= {D.OPSET}, got {_default_opset(model)}")
    normalize_nodes(model)
    has_custom = bool(custom_nodes(model))
    scopes = module_scopes(model)  # before nodes are replaced: the replacements take their paths
    if target == "tensorrt":
        # one shaping for TensorRT, shared with build-engine: every attribute written
        # (the parser skips absent fields), seed as int32 seed_lo/seed_hi (the parser
        # narrows INT attributes), plugin namespace/version, aot=1, and no local
        # functions (the parser prefers them)
        from ..tensorrt.onnx_prep import prepare_onnx

        model.CopyFrom(prepare_onnx(model))
    else:
        if target == "portable":
            from .portable import specialize

            specialize(model, _default_opset(model))  # fast standard-op forms where they exist
        attach_functions(model, fast=target != "portable")  # portable: what is left has no fast form
    if target == "portable":
        model = onnx.inliner.inline_local_functions(model)
        _set_opset(model, D.DOMAIN, None)
    else:
        _set_opset(model, D.DOMAIN, D.VERSION if has_custom else None)
    model.ir_version = IR_VERSION
    prune_unused(model)
    name_nodes(model, scopes)
    set_metadata(model, target, has_custom)
    return model
