"""Readable node and value names from the module paths of the exported PyTorch model.

torch.onnx's dynamo exporter names nodes after ATen ops and counters (``node_Conv_290``,
values ``getitem_3``) but keeps, on each node, the module path it was traced in
(``metadata_props["pkg.torch.onnx.name_scopes"]``, e.g. ``['', 'layer1', 'layer1.0',
'layer1.0.conv1', 'conv2d']``). :func:`name_nodes` renames every node of the main graph
``<module path>/<OpType>`` (``layer1.0.conv1/Conv``; ``_1``, ``_2``... where a module
holds several of one op type) and every value between nodes ``<node name>_output_<i>``,
so Netron and profilers show where each node came from.

A node that carries a ``<path>.weight`` initializer takes that path (a Conv that absorbed
the following BatchNorm keeps the BatchNorm's metadata but the Conv's weight). Nodes
without metadata (inlined decompositions, fast forms) take the path of the node they
replaced (looked up by the value it produced, see :func:`module_scopes`) or of the node
that consumes them. Graph inputs, outputs and initializers keep their names; a file
without the metadata (the TorchScript exporter already writes ``/layer1/conv1/Conv``)
keeps its node names, and only empty or repeated ones are filled in.
"""
from __future__ import annotations

import ast

import onnx

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
# the scope torch.export gives the shape arithmetic it inserts outside any module
_NO_MODULE = "_empty_nn_module_stack_from_metadata_hook"


def _metadata_scope(node: onnx.NodeProto):
    """The module path recorded by torch.onnx ('' for the root module), None if absent."""
    for prop in node.metadata_props:
        if prop.key == SCOPES_KEY:
            try:
                scopes = ast.literal_eval(prop.value)  # a list literal; literal_eval runs nothing
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                return None
            if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
                return None
            modules = [s for s in scopes[:-1] if s and s != _NO_MODULE]  # the last is the FX node
            return modules[-1] if modules else ""
    return None


def _weight_scope(node: onnx.NodeProto, initializers: set):
    for name in node.input:
        if name in initializers and name.endswith(".weight") and len(name) > len(".weight"):
            return name[: -len(".weight")]
    return None


def module_scopes(model: onnx.ModelProto) -> dict:
    """Value name -> module path of the node producing it, for the nodes that carry
    torch.onnx's metadata. Taken before a pass replaces nodes (inlining, fast forms) and
    given to :func:`name_nodes` after it: a replacement still produces the same output."""
    if not any(_metadata_scope(n) is not None for n in model.graph.node):
        return {}  # not from the dynamo exporter: its names are the exporter's own
    initializers = {t.name for t in model.graph.initializer}
    scopes = {}
    for node in model.graph.node:
        scope = _weight_scope(node, initializers)
        if scope is None:
            scope = _metadata_scope(node)
        if scope is not None:
            for out in node.output:
                if out:
                    scopes[out] = scope
    return scopes


def _subgraphs(node: onnx.NodeProto):
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def _names_in(graph: onnx.GraphProto, nodes: set, values: set) -> None:
    """Every node and value name defined anywhere in ``graph`` and its subgraphs."""
    values.update(i.name for i in graph.input)
    values.update(o.name for o in graph.output)
    values.update(t.name for t in graph.initializer)
    values.update(vi.name for vi in graph.value_info)
    for node in graph.node:
        nodes.add(node.name)
        values.update(node.output)
        for g in _subgraphs(node):
            _names_in(g, nodes, values)


def _read_by_subgraphs(node: onnx.NodeProto, out: set) -> set:
    for g in _subgraphs(node):
        for n in g.node:
            out.update(n.input)
            _read_by_subgraphs(n, out)
        out.update(o.name for o in g.output)
    return out


def _rename_values(graph: onnx.GraphProto, rename: dict) -> None:
    """Apply ``rename`` to every read and definition in ``graph`` and its subgraphs (ONNX
    names are unique across nested scopes, so one map serves all of them)."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
        for i, name in enumerate(node.output):
            if name in rename:
                node.output[i] = rename[name]
        for g in _subgraphs(node):
            _rename_values(g, rename)
    for vi in list(graph.value_info) + list(graph.output):
        if vi.name in rename:
            vi.name = rename[vi.name]


class _Unique:
    def __init__(self, taken: set):
        self.taken = set(taken)
        self.count: dict = {}

    def __call__(self, base: str) -> str:
        n = self.count.get(base, 0)
        name = base if n == 0 else f"{base}_{n}"
        while name in self.taken:
            n += 1
            name = f"{base}_{n}"
        self.count[base] = n + 1
        self.taken.add(name)
        return name


def name_nodes(model: onnx.ModelProto, scopes: dict | None = None) -> onnx.ModelProto:
    """Rename the main graph's nodes and intermediate values after their module paths (in
    place; also returned). ``scopes``: :func:`module_scopes` of the model before passes that
    replaced nodes; by default taken from this model."""
    graph = model.graph
    own = module_scopes(model)
    scopes = {**(scopes or {}), **own}
    if not scopes:  # no torch.onnx metadata: keep the exporter's names, fill in the missing
        return _fill_missing(model)
    initializers = {t.name for t in graph.initializer}
    consumers: dict = {}
    for i, node in enumerate(graph.node):
        for name in set(node.input) | _read_by_subgraphs(node, set()):
            consumers.setdefault(name, []).append(i)
    # graph.node is in topological order: walking it backwards, a node without a path of
    # its own takes the first consumer's (decided already)
    node_scope: list = [None] * len(graph.node)
    for i in range(len(graph.node) - 1, -1, -1):
        node = graph.node[i]
        scope = _weight_scope(node, initializers)
        if scope is None:
            scope = _metadata_scope(node)
        if scope is None:
            scope = next((scopes[o] for o in node.output if o in scopes), None)
        if scope is None:
            scope = next((node_scope[j] for o in node.output for j in consumers.get(o, ())
                          if node_scope[j] is not None), None)
        node_scope[i] = scope
    # names used in subgraphs stay; the main graph's node names are all given anew
    sub_nodes, sub_values = set(), set()
    for node in graph.node:
        for g in _subgraphs(node):
            _names_in(g, sub_nodes, sub_values)
    unique_node = _Unique(sub_nodes)
    keep = {i.name for i in graph.input} | {o.name for o in graph.output} | initializers
    all_nodes, all_values = set(), set()
    _names_in(graph, all_nodes, all_values)
    renamed = {o for n in graph.node for o in n.output if o and o not in keep}
    # the old names of renamed values are free (one map renames all of them at once)
    unique_value = _Unique((all_values - renamed) | sub_values)
    rename = {}
    for node, scope in zip(graph.node, node_scope):
        base = f"{scope}/{node.op_type}" if scope else node.op_type
        node.name = unique_node(base)
        for k, out in enumerate(node.output):
            if out and out not in keep:
                rename[out] = unique_value(f"{node.name}_output_{k}")
    _rename_values(graph, rename)
    return model


def _fill_missing(model: onnx.ModelProto) -> onnx.ModelProto:
    """Keep each node's name; give one to a node without a name or with a name used before."""
    graph = model.graph
    sub_nodes, sub_values = set(), set()
    for node in graph.node:
        for g in _subgraphs(node):
            _names_in(g, sub_nodes, sub_values)
    unique = _Unique({n.name for n in graph.node if n.name} | sub_nodes)
    used = set()
    for node in graph.node:
        if node.name and node.name not in used and node.name not in sub_nodes:
            used.add(node.name)
            continue
        node.name = unique(node.op_type)
    return model
