"""Read model files that someone else wrote without running code from them.

Each check reads a file as data and refuses, with one line naming the reason, anything
that the loader it guards would turn into running code. What each format can run, and
what poolexport lets it run (README, "What poolexport will and will not run from a file"):

* ``.pt2`` (torch.export archive). torch 2.13's ``torch.export.load``
  (torch/export/pt2_archive/_package.py, torch/_export/serde/serialize.py) runs code from
  the file in five places:
    1. ``deserialize_torch_artifact`` (serialize.py) unpickles the sample inputs
       (``data/sample_inputs/<model>.pt``) and legacy weights/constants: first
       ``weights_only=True``, then, if that fails, a full ``weights_only=False`` unpickle;
    2. ``_load_state_dict``/``_load_constants`` (_package.py) unpickle payloads marked
       ``use_pickle`` with ``weights_only=False``, ``pickle.loads`` every
       ``opaque_obj_*`` constant and ``torch._C._pickle_load_obj`` every ``custom_obj_*``
       (TorchBind) constant;
    3. ``ExportedProgramDeserializer._parse_sym_expr`` (serialize.py) parses every symbolic
       shape (``expr_str`` in ``models/<model>.json``) with ``sympy.sympify``, which is
       ``eval``;
    4. ``deserialize_operator`` resolves each node's ``target`` by attribute lookup from the
       ``torch``, ``_operator`` and ``math`` modules (``torch.os.system`` resolves), and the
       graph calls it when the program runs;
    5. ``_convert_guards_code_to_fn`` (torch/export/_unlift.py) ``exec``s the program's
       ``guards_code`` strings when ``ExportedProgram.module()`` is called.
  Without trust, :func:`check_pt2` accepts only what is data: pickles that load with
  ``weights_only=True`` (tensors, containers of them), symbolic shapes written as sympy's
  ``srepr`` (Symbol, Integer and arithmetic calls; no string reaches ``sympify``), node
  targets that are ``torch.ops`` operators or pure ``operator``/``math`` functions, guards
  that are arithmetic on input sizes; and :func:`weights_only_unpickling` makes every
  unpickle inside ``torch.export.load`` a ``weights_only`` one, so nothing this check
  missed can fall back to a full unpickle.
* TorchScript archives. Their code is TorchScript (no Python imports), and their pickles
  are read by TorchScript's own unpickler, which builds only tensors and TorchScript
  classes; but ``__setstate__`` methods run at load time and ``forward`` at export time,
  and a few operators touch files (``aten::save``, ``aten::from_file``,
  ``debugprims::load_tensor``) or other processes (``c10d``, ``symm_mem``).
  :func:`check_torchscript` reads the archive's code as Python syntax and refuses those.
* ONNX files: code never runs from them, but external data can point at any file
  (``../../etc/shadow``, an absolute path, a symlink), which would then be read into a
  served model or copied into a Triton repository. :func:`check_onnx_external_data`
  refuses locations outside the model's folder whatever the installed onnx/onnxruntime
  versions check (onnx >= 1.16 and onnxruntime >= 1.20 check too; older ones did not).
"""
from __future__ import annotations

import ast
import contextlib
import io
import json
import math
import os
import re
import threading
import zipfile
from pathlib import Path

import torch


from .errors import TRUST_HINT, UntrustedFileError

# ------------------------------------------------------------------ pickles
_PICKLE_PROTO = re.compile(rb"\A\x80[\x02-\x05]")


def _is_pickle_or_torch_save(data: bytes) -> bool:
    # torch.save writes a zip (PK..) with data.pkl inside; protocol 2-5 pickles start 0x80 N
    return bool(_PICKLE_PROTO.match(data)) or data[:4] == b"PK\x03\x04"


def _weights_only_loads(data: bytes) -> None:
    torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


_unpickle_lock = threading.Lock()


@contextlib.contextmanager
def weights_only_unpickling():
    """Every ``torch.load`` in this block is ``weights_only=True``, whatever the caller asks.

    torch.export.load's own fallback (``weights_only=False`` after a failed weights-only
    load, torch/_export/serde/serialize.py ``deserialize_torch_artifact``) then fails
    instead of unpickling arbitrary objects. torch looks ``torch.load`` up at call time.
    """
    real = torch.load

    def load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        return real(f, *args, **kwargs)

    with _unpickle_lock:
        torch.load = load
        try:
            yield
        finally:
            torch.load = real


# ------------------------------------------------------------------ .pt2: symbolic shapes
# sympy's srepr, as torch's serializer writes it (serialize.py _print_sympy): calls of
# these names with numbers, Symbol('name', flag=True) and nested calls. Nothing else.
_SYMPY_CALLS = frozenset({
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Mod", "Abs",
    "floor", "ceiling", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality",
    "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan", "And", "Or", "Not",
    "Piecewise", "ExprCondPair", "BooleanTrue", "BooleanFalse",
    # torch/utils/_sympy/functions.py (the deserializer's sympy_functions)
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt",
    "CeilDiv", "IntTrueDiv", "FloatTrueDiv", "LShift", "RShift", "IsNonOverlappingAndDenseIndicator",
    "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "FloatPow",
    "PowByNatural", "Identity",
})
_SYMPY_NAMES = frozenset({"oo", "zoo", "nan", "true", "false", "int_oo"})
_SYMBOL_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")
_NUMBER_TEXT = re.compile(r"\A[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\Z")


def _check_sympy_node(node: ast.AST) -> None:
    if isinstance(node, ast.Expression):
        return _check_sympy_node(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
        return
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        return _check_sympy_node(node.operand)
    if isinstance(node, ast.Name) and node.id in _SYMPY_NAMES:
        return
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _SYMPY_CALLS:
        name = node.func.id
        for kw in node.keywords:
            # Symbol flags (integer=True, positive=True), Float(..., precision=53)
            if kw.arg is None or not isinstance(kw.value, ast.Constant) or type(kw.value.value) not in (bool, int):
                raise ValueError(f"keyword argument of {name}")
        for i, arg in enumerate(node.args):
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                # a string handed to any sympy constructor but these is sympify()ed, i.e. eval()ed
                if name == "Symbol" and i == 0 and _SYMBOL_NAME.match(arg.value):
                    continue
                if name == "Float" and i == 0 and _NUMBER_TEXT.match(arg.value):
                    continue
                raise ValueError(f"string argument {arg.value[:40]!r} of {name}")
            _check_sympy_node(arg)
        return
    raise ValueError(f"{type(node).__name__} {ast.unparse(node)[:60]!r}")


def _check_sym_expr(text: str) -> None:
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ValueError("not an expression") from None
    _check_sympy_node(tree)


# ------------------------------------------------------------------ .pt2: node targets
# Pure functions that torch's serializer writes as _operator.X / math.X / torch.sym_X
# (serialize.py _SYM_OPS); everything else must be a torch.ops operator.
_OPERATOR_TARGETS = frozenset({
    "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos", "abs", "eq", "ne",
    "lt", "le", "gt", "ge", "and_", "or_", "xor", "not_", "invert", "lshift", "rshift", "getitem",
})
_OP_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")


def _check_target(target: str) -> None:
    parts = target.split(".")
    if any(p.startswith("__") or not _OP_NAME.match(p) for p in parts):
        raise ValueError(target)
    if parts[:2] == ["torch", "ops"] and len(parts) in (4, 5):
        # resolve as the deserializer does; only registered operators may come out
        # (torch.ops.loaded_libraries.pop would resolve too, and is not one)
        obj = torch.ops
        for p in parts[2:]:
            obj = getattr(obj, p, None)
        if isinstance(obj, (torch._ops.OpOverload, torch._ops.OpOverloadPacket, torch._ops.HigherOrderOperator)):
            return
    if len(parts) == 2 and parts[0] == "_operator" and parts[1] in _OPERATOR_TARGETS:
        return
    if len(parts) == 2 and parts[0] == "math" and callable(getattr(math, parts[1], None)):
        return
    if len(parts) == 2 and parts[0] == "torch" and parts[1].startswith("sym_"):
        return
    raise ValueError(target)


# ------------------------------------------------------------------ .pt2: guards
_GUARD_FUNCTIONS = frozenset({"max", "min", "IsNonOverlappingAndDenseIndicator",
                              "cast_symbool_to_symint_guardless"})
_TENSOR_METHODS = frozenset({"size", "stride", "dim", "numel", "storage_offset"})


def _check_guard_node(node: ast.AST) -> None:
    """Arithmetic and comparisons on ``L['x'].size()[i]``, as torch writes guards
    (torch/export/exported_program.py ``_convert_guards_to_code``)."""
    if isinstance(node, ast.Expression):
        return _check_guard_node(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
        return
    if isinstance(node, ast.Name) and node.id == "inf":
        return
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
            and type(node.slice.value) in (int, str):
        if isinstance(node.value, ast.Name) and node.value.id == "L":
            return  # an input, by name
        return _check_guard_node(node.value)
    if isinstance(node, ast.Call) and not node.keywords:
        func = node.func
        ok = (isinstance(func, ast.Name) and func.id in _GUARD_FUNCTIONS) or (
            isinstance(func, ast.Attribute) and (
                (func.attr in _TENSOR_METHODS and not isinstance(func.value, ast.Name)
                 and _check_guard_node(func.value) is None)
                or (isinstance(func.value, ast.Name) and func.value.id == "math" and not func.attr.startswith("_")
                    and callable(getattr(math, func.attr, None)))
                or (isinstance(func.value, ast.Name) and func.value.id == "torch" and func.attr.startswith("sym_"))))
        if ok:
            for arg in node.args:
                _check_guard_node(arg)
            return
    if isinstance(node, (ast.Compare, ast.BoolOp, ast.UnaryOp, ast.BinOp, ast.Tuple, ast.List)):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                _check_guard_node(child)
        return
    raise ValueError(ast.unparse(node)[:60] if isinstance(node, ast.expr) else type(node).__name__)


def _check_guard(text: str) -> None:
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ValueError("not an expression") from None
    _check_guard_node(tree)


def _walk_program_json(obj, path: str, what: str) -> None:
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            if "target" in o and "inputs" in o and isinstance(o["target"], str):
                try:
                    _check_target(o["target"])
                except ValueError:
                    raise UntrustedFileError(
                        f"{path}: graph node calls {o['target'][:80]!r}, which is not a torch operator; "
                        f"refusing to load it ({TRUST_HINT})") from None
            expr = o.get("expr_str")
            if isinstance(expr, str):
                try:
                    _check_sym_expr(expr)
                except ValueError as exc:
                    raise UntrustedFileError(
                        f"{path}: symbolic shape {expr[:60]!r} is not plain sympy ({exc}); torch would eval it; "
                        f"refusing to load it ({TRUST_HINT})") from None
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)


def _raw_payloads(archive: zipfile.ZipFile) -> set[str]:
    """Entries that the archive's weight/constant configs declare as raw tensor storage
    (``use_pickle`` false): torch reads them with get_storage_from_record, so their bytes,
    which may begin like a pickle, are data."""
    raw, pickled = set(), set()
    for name in archive.namelist():
        folder, _, base = name.rpartition("/")
        if base not in ("model_weights_config.json", "model_constants_config.json") or not folder.endswith(
                ("/data/weights", "/data/constants")):
            continue
        try:
            config = json.loads(archive.read(name)).get("config", {})
        except (ValueError, AttributeError):
            continue  # not ours to judge: the entries stay checked
        for meta in config.values() if isinstance(config, dict) else ():
            if isinstance(meta, dict) and isinstance(meta.get("path_name"), str):
                (raw if meta.get("use_pickle") is False else pickled).add(f"{folder}/{meta['path_name']}")
    return raw - pickled  # a path any entry unpickles stays checked


def check_pt2(path, data: bytes) -> None:
    """Refuse a torch.export archive that would run code when loaded or run (see module doc)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise UntrustedFileError(f"{path}: not a torch.export archive (not a zip file)") from None
    with archive:
        raw = _raw_payloads(archive)
        for info in archive.infolist():
            name = info.filename
            base = name.rsplit("/", 1)[-1]
            if "/data/constants/" in name and base.startswith(("custom_obj_", "opaque_obj_")):
                # torch picks the loader by this prefix, whatever the config says
                raise UntrustedFileError(
                    f"{path}: {name} is a pickled Python or TorchBind object, which loading unpickles; "
                    f"refusing it ({TRUST_HINT})")
            if name in raw:
                continue  # read as tensor storage (_build_file_map), never unpickled
            if "/models/" in name and name.endswith(".json"):
                try:
                    program = json.loads(archive.read(info))
                except ValueError:
                    raise UntrustedFileError(f"{path}: {name} is not valid JSON") from None
                _walk_program_json(program, path, name)
                for guard in program.get("guards_code") or []:
                    try:
                        _check_guard(guard)
                    except ValueError as exc:
                        raise UntrustedFileError(
                            f"{path}: guard {str(guard)[:60]!r} is not arithmetic on input sizes ({exc}); torch "
                            f"would exec it; refusing to load it ({TRUST_HINT})") from None
                continue
            with archive.open(info) as entry:
                head = entry.read(4)  # raw weight payloads (most of the bytes) are not read whole
            if _is_pickle_or_torch_save(head):
                try:
                    _weights_only_loads(archive.read(info))
                except Exception:
                    raise UntrustedFileError(
                        f"{path}: {name} holds pickled objects other than tensors, which loading would "
                        f"unpickle (run code from the file); refusing it ({TRUST_HINT})") from None


# ------------------------------------------------------------------ TorchScript
# Operators that reach outside the process's tensors: files, other processes.
_TORCHSCRIPT_DENIED_OPS = frozenset({"save", "from_file", "load_tensor", "_load_for_mobile"})
_TORCHSCRIPT_DENIED_NAMESPACES = frozenset({"debugprims", "c10d", "_c10d_functional", "_c10d_functional_autograd",
                                            "symm_mem", "profiler", "_test", "static_runtime"})


def check_torchscript(path, archive: zipfile.ZipFile) -> None:
    """Refuse TorchScript code that touches files or other processes (see module doc)."""
    for name in archive.namelist():
        if "/code/" not in name or not name.endswith(".py"):
            continue
        source = archive.read(name).decode("utf-8", "replace")
        try:
            tree = ast.parse(source)
        except SyntaxError:
            raise UntrustedFileError(f"{path}: {name} is not readable TorchScript code") from None
        for node in ast.walk(tree):
            ident = None
            if isinstance(node, ast.Attribute):
                ident = node.attr
                if isinstance(node.value, ast.Attribute) and node.value.attr == "ops" \
                        and node.attr in _TORCHSCRIPT_DENIED_NAMESPACES:
                    raise UntrustedFileError(
                        f"{path}: {name} calls operators of torch.ops.{node.attr}, which reach outside the "
                        f"model; refusing to load it ({TRUST_HINT})")
                if isinstance(node.value, ast.Name) and node.value.id == "ops" \
                        and node.attr in _TORCHSCRIPT_DENIED_NAMESPACES:
                    raise UntrustedFileError(
                        f"{path}: {name} calls operators of ops.{node.attr}, which reach outside the model; "
                        f"refusing to load it ({TRUST_HINT})")
            elif isinstance(node, ast.Name):
                ident = node.id
            elif isinstance(node, ast.alias):
                ident = node.name.rsplit(".", 1)[-1]
            if ident in _TORCHSCRIPT_DENIED_OPS:
                raise UntrustedFileError(
                    f"{path}: {name} calls {ident!r}, which reads or writes files; refusing to load it "
                    f"({TRUST_HINT})")
