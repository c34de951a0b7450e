"""ONNX files run no code, but their external data can point at any file."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import UntrustedFileError

# ONNX Runtime (and OpenVINO's ONNX reader) read `offset` as a memory address when a
# tensor's location is this: never valid in a file.
_MEMORY_ADDRESS_TAG = "*/_ORT_MEM_ADDR_/*"


def _tensors(model):
    """(label, TensorProto) for every tensor an ONNX reader may load data for: graph
    initializers, both halves (values, indices) of sparse initializers, tensor and sparse
    tensor attributes, in the main graph, every subgraph (If/Loop/Scan bodies) and every
    local function. onnx.external_data_helper walks neither sparse tensors nor attributes
    whose graph is set under another attribute type, so this walks on its own, without
    recursion (nesting depth is the file's choice)."""
    graphs = [("graph", model.graph)]
    nodes = [("function " + repr(f.name), n) for f in model.functions for n in f.node]

    def sparse(label, sp):
        yield f"{label} (values)", sp.values
        yield f"{label} (indices)", sp.indices

    while graphs or nodes:
        if graphs:
            where, g = graphs.pop()
            for t in g.initializer:
                yield f"initializer {t.name!r}", t
            for sp in g.sparse_initializer:
                yield from sparse(f"sparse initializer {sp.values.name!r}", sp)
            nodes.extend((where, n) for n in g.node)
            continue
        where, node = nodes.pop()
        for a in node.attribute:
            label = f"attribute {a.name!r} of node {node.name or node.op_type!r} in {where}"
            if a.HasField("t"):
                yield label, a.t
            for t in a.tensors:
                yield label, t
            if a.HasField("sparse_tensor"):
                yield from sparse(label, a.sparse_tensor)
            for sp in a.sparse_tensors:
                yield from sparse(label, sp)
            if a.HasField("g"):
                graphs.append((f"{where} > {label}", a.g))
            graphs.extend((f"{where} > {label}", g) for g in a.graphs)


def check_onnx_external_data(path) -> list[str]:
    """The external-data files of an ONNX file, each checked to be a plain file inside its
    folder (relative locations, as written in the model); UntrustedFileError otherwise."""
    import onnx

    path = Path(path)
    model = onnx.load(os.fspath(path), load_external_data=False)
    base = path.resolve().parent
    locations = []
    for label, tensor in _tensors(model):
        entries = [e.value for e in tensor.external_data if e.key == "location"]
        if tensor.data_location != onnx.TensorProto.EXTERNAL and not entries:
            continue
        if not entries:
            entries = [""]
        for location in entries:  # readers differ on which of several wins: check all
            target = (base / location).resolve()
            if not location or location == _MEMORY_ADDRESS_TAG or os.path.isabs(location) \
                    or (base / location).is_symlink() \
                    or os.path.commonpath([str(base), str(target)]) != str(base) \
                    or not target.is_file():
                raise UntrustedFileError(
                    f"{path}: {label} keeps its data at {location!r}, outside the model's folder "
                    "or not a plain file in it; refusing to read it")
            if location not in locations:
                locations.append(location)
    return locations
