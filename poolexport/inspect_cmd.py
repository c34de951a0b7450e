"""``poolexport inspect FILE.onnx [--json]``: what an ONNX file holds and what it needs.

Prints the ops used (counts by domain and op type), the custom domains and their versions,
what runtime and library the file needs (poolexport's custom-op library, TensorRT plugins,
or nothing beyond a standard ONNX runtime), the ``poolexport.*`` metadata written at
export, inputs and outputs with their dims (symbolic names kept) and element types, the
opset imports, the file size and the producer.

The file is only parsed: no runtime loads it, no shape inference runs on it, and external
data is listed (location, size when it lies inside the model's folder) but never read. A
file that does not parse as an ONNX model (or was cut short) gets a one-line error, exit 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

NAME = "inspect"
HELP = "show what an ONNX file holds and needs: ops, custom domains, runtime/library, inputs and outputs"

STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training")
ORT_DOMAINS = ("com.microsoft", "com.microsoft.nchwc", "com.microsoft.experimental", "com.ms.internal.nhwc")
POOLEXPORT_DOMAIN = "poolexport"  # poolexport.onnx.domain.DOMAIN (that module registers schemas on import)
PLUGIN_ATTRIBUTE = "plugin_namespace"  # on the nodes of a tensorrt-target file
_MEMORY_ADDRESS_TAG = "*/_ORT_MEM_ADDR_/*"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, metavar="FILE.onnx", help="ONNX file to describe (parsed only, never run)")
    p.add_argument("--json", action="store_true", help="print the description as JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    model = read_model(args.model)
    info = describe(model, args.model)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print(info)
    return 0


# ------------------------------------------------------------------ reading
def read_model(path: Path):
    """The ModelProto of ``path``, parsed without external data; UsageError (one line,
    exit 2) for a missing file, a file that is not ONNX, or one cut short."""
    from .cli import UsageError

    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if not path.is_file():
        raise UsageError(f"{path}: not a regular file")
    import onnx
    from google.protobuf.message import DecodeError

    data = path.read_bytes()
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError, MemoryError) as exc:
        why = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{path}: not an ONNX model, or the file is cut short ({why})") from None
    # protobuf accepts many byte strings (an empty file parses to an empty message): a
    # model has an IR version, a graph and an opset import, which a cut file may lack
    missing = [what for what, ok in (("IR version", model.ir_version > 0), ("graph", model.HasField("graph")),
                                     ("opset import", len(model.opset_import) > 0)) if not ok]
    if missing:
        raise UsageError(f"{path}: not an ONNX model, or the file is cut short (no {', '.join(missing)})")
    return model


# ------------------------------------------------------------------ describing
def _dtype_name(elem_type: int) -> str:
    import onnx

    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except Exception:
        try:
            return onnx.TensorProto.DataType.Name(elem_type).lower()
        except ValueError:
            return f"type {elem_type}"


def _value(vi) -> dict:
    t = vi.type
    kind = t.WhichOneof("value")
    if kind != "tensor_type":
        return {"name": vi.name, "dtype": kind or "unknown", "dims": None}
    tt = t.tensor_type
    dims = None
    if tt.HasField("shape"):
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
    return {"name": vi.name, "dtype": _dtype_name(tt.elem_type), "dims": dims}


def dims_text(dims) -> str:
    if dims is None:
        return "(rank unknown)"
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _all_nodes(graph):
    """Nodes of ``graph`` and of its subgraphs, without recursion (nesting is the file's choice)."""
    stack = [graph]
    while stack:
        g = stack.pop()
        for node in g.node:
            yield node
            for a in node.attribute:
                if a.HasField("g"):
                    stack.append(a.g)
                stack.extend(a.graphs)


def _external_data(model, path: Path) -> list:
    """Each tensor's external-data location and whether it is a plain file inside the
    model's folder; nothing is read, and nothing outside the folder is touched."""
    import onnx

    from ._untrusted.onnx_data import _tensors

    base = path.resolve().parent
    out = []
    for label, tensor in _tensors(model):
        entries = [e.value for e in tensor.external_data if e.key == "location"]
        if tensor.data_location != onnx.TensorProto.EXTERNAL and not entries:
            continue
        for location in entries or [""]:
            entry = {"tensor": label, "location": location, "status": "ok", "size_bytes": None}
            target = (base / location).resolve() if location else base
            if not location or location == _MEMORY_ADDRESS_TAG or os.path.isabs(location) \
                    or (base / location).is_symlink() or os.path.commonpath([str(base), str(target)]) != str(base):
                entry["status"] = "outside the model's folder or not a file name: a loader must refuse it"
            elif not target.is_file():
                entry["status"] = "missing"
            else:
                entry["size_bytes"] = target.stat().st_size
            out.append(entry)
    return out


def _library_found():
    try:
        from .ort import get_library_path

        return get_library_path()
    except Exception:
        return None


def needs(model, functions: set) -> dict:
    """What runs the file: the runtime, the custom-op library, and why."""
    used: dict = {}
    plugin_form = False
    for node in _all_nodes(model.graph):
        used.setdefault(node.domain, set()).add(node.op_type)
        if node.domain == POOLEXPORT_DOMAIN and any(a.name == PLUGIN_ATTRIBUTE for a in node.attribute):
            plugin_form = True
    custom = {d: ops for d, ops in used.items() if d not in STANDARD_DOMAINS}
    notes = []
    library = None
    if not custom:
        runtime = "any ONNX runtime: standard ops only (plain ONNX Runtime, OpenVINO, TensorRT, ...)"
    elif POOLEXPORT_DOMAIN in custom and plugin_form:
        runtime = "TensorRT with poolexport's plugins (poolexport build-engine FILE.onnx -o FILE.plan)"
        library = "poolexport.tensorrt plugins"
        notes.append("a tensorrt-target file: its poolexport nodes are TensorRT plugin nodes, with no fallback")
    elif POOLEXPORT_DOMAIN in custom:
        from .ort import LIBRARY_NAME

        library = LIBRARY_NAME
        ops = custom[POOLEXPORT_DOMAIN]
        without = sorted(op for op in ops if (POOLEXPORT_DOMAIN, op) not in functions)
        if without:
            runtime = f"ONNX Runtime with poolexport's custom-op library ({LIBRARY_NAME})"
            notes.append(f"no fallback in the file for {', '.join(without)}: plain ONNX Runtime cannot run it")
        else:
            runtime = (f"ONNX Runtime with poolexport's custom-op library ({LIBRARY_NAME}) for the fast kernels; "
                       "plain ONNX Runtime runs the file's fallback functions (slower)")
        notes.append("OpenVINO and other runtimes: export with --target portable (standard ops only)")
    else:
        runtime = "a runtime with kernels for the custom domains below"
    for domain in sorted(custom):
        if domain == POOLEXPORT_DOMAIN:
            continue
        if domain in ORT_DOMAINS:
            notes.append(f"domain {domain}: ONNX Runtime's own contrib ops (ONNX Runtime only)")
        else:
            notes.append(f"domain {domain!r}: not poolexport's; needs that domain's custom-op library")
    result = {"runtime": runtime, "custom_op_library": library, "notes": notes}
    if library and library.endswith(".so"):
        result["library_found"] = _library_found()
    return result


def describe(model, path: Path) -> dict:
    """Everything ``inspect`` prints, as plain data (the --json output)."""
    graph = model.graph
    initializer_names = {t.name for t in graph.initializer}
    counts = Counter((n.domain or "ai.onnx", n.op_type) for n in _all_nodes(graph))
    opsets = {(i.domain or "ai.onnx"): i.version for i in model.opset_import}
    functions = {(f.domain, f.name) for f in model.functions}
    custom = sorted({d for d, _ in counts if d not in STANDARD_DOMAINS}
                    | {d for d in opsets if d not in STANDARD_DOMAINS})
    metadata = {p.key: p.value for p in model.metadata_props}
    params = 0
    stored = 0
    for t in graph.initializer:
        n = 1
        for d in t.dims:
            n *= d
        params += n
        stored += len(t.raw_data)
    info = {
        "file": str(path),
        "size_bytes": path.stat().st_size,
        "ir_version": model.ir_version,
        "producer": {"name": model.producer_name, "version": model.producer_version},
        "graph_name": graph.name,
        "opset_imports": opsets,
        "poolexport_metadata": {k: v for k, v in metadata.items() if k.startswith("poolexport.")},
        "metadata": {k: v[:200] for k, v in metadata.items() if not k.startswith("poolexport.")},
        "inputs": [_value(vi) for vi in graph.input if vi.name not in initializer_names],
        "outputs": [_value(vi) for vi in graph.output],
        "nodes": sum(counts.values()),
        "ops": [{"domain": d, "op_type": op, "count": c} for (d, op), c in sorted(counts.items())],
        "custom_domains": [{"domain": d, "version": opsets.get(d),
                            "ops": sorted(op for (dd, op) in counts if dd == d),
                            "fallback_functions": sorted(f for (fd, f) in functions if fd == d)} for d in custom],
        "functions": [{"domain": f.domain, "name": f.name, "nodes": len(f.node)} for f in model.functions],
        "initializers": {"count": len(graph.initializer), "parameters": params, "bytes_in_file": stored},
        "external_data": _external_data(model, path),
        "needs": needs(model, functions),
        "checker": _checker(model),
    }
    if POOLEXPORT_DOMAIN in opsets:
        from . import __version__

        info["needs"]["domain_version"] = opsets[POOLEXPORT_DOMAIN]
        info["needs"]["this_poolexport"] = __version__
    return info


def _checker(model) -> str:
    """onnx.checker's verdict (structure only: no shape inference, nothing run)."""
    import onnx

    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        text = str(exc).strip()
        return "error: " + (text.splitlines()[0][:300] if text else type(exc).__name__)
    return "ok"


# ------------------------------------------------------------------ printing
def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _print(info: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    out = Console() if sys.stdout.isatty() else Console(width=100)
    producer = " ".join(x for x in (info["producer"]["name"], info["producer"]["version"]) if x) or "unknown"
    out.print(f"[bold]{escape(info['file'])}[/]: {_size(info['size_bytes'])}, IR version {info['ir_version']}, "
              f"producer {escape(producer)}", soft_wrap=True)
    out.print("opsets: " + ", ".join(f"{d} {v}" for d, v in info["opset_imports"].items()), soft_wrap=True)
    meta = info["poolexport_metadata"]
    if meta:
        out.print("poolexport: " + ", ".join(f"{k.split('.', 1)[1]} {escape(v)}" for k, v in meta.items()),
                  soft_wrap=True)
    need = info["needs"]
    out.print(f"[bold]needs[/]: {escape(need['runtime'])}", soft_wrap=True)
    if "library_found" in need:
        found = need["library_found"]
        out.print(f"  library on this machine: {escape(found) if found else 'not found (build it with pip install .)'}",
                  soft_wrap=True)
    if "domain_version" in need:
        out.print(f"  poolexport domain version {need['domain_version']} "
                  f"(this is poolexport {need['this_poolexport']})", soft_wrap=True)
    for note in need["notes"]:
        out.print(f"  {escape(note)}", soft_wrap=True)
    io = Table(title="inputs and outputs", title_justify="left")
    for col in ("", "name", "dtype", "dims"):
        io.add_column(col, no_wrap=False)
    for kind in ("inputs", "outputs"):
        for v in info[kind]:
            io.add_row(kind[:-1], escape(v["name"]), v["dtype"], escape(dims_text(v["dims"])))
    out.print(io)
    ops = Table(title=f"ops ({info['nodes']} nodes)", title_justify="left")
    for col, justify in (("domain", "left"), ("op", "left"), ("count", "right")):
        ops.add_column(col, justify=justify)
    for row in sorted(info["ops"], key=lambda r: (r["domain"] != POOLEXPORT_DOMAIN, r["domain"], -r["count"])):
        ops.add_row(escape(row["domain"]), escape(row["op_type"]), str(row["count"]))
    out.print(ops)
    for d in info["custom_domains"]:
        fallback = ", ".join(d["fallback_functions"]) or "none"
        out.print(f"custom domain {escape(d['domain'])} version {d['version']}: ops {escape(', '.join(d['ops']))}; "
                  f"fallback functions: {escape(fallback)}", soft_wrap=True)
    init = info["initializers"]
    out.print(f"initializers: {init['count']} ({init['parameters']:,} values, "
              f"{_size(init['bytes_in_file'])} in the file)")
    if info["external_data"]:
        for e in info["external_data"]:
            size = "" if e["size_bytes"] is None else f", {_size(e['size_bytes'])}"
            out.print(f"external data: {escape(e['tensor'])} -> {escape(e['location'])} "
                      f"({escape(e['status'])}{size})", soft_wrap=True)
    else:
        out.print("external data: none")
    out.print(f"onnx.checker: {escape(info['checker'])}", soft_wrap=True)
