"""Allow only known entries and side-effect-free calls in an untrusted TorchScript archive.

A TorchScript archive runs its own code: ``__setstate__`` methods at load time and
``forward`` at export time. The code is TorchScript, not Python (no imports, no Python
builtins beyond TorchScript's own); its pickles (``data.pkl``, ``constants.pkl``) are read
by TorchScript's C++ unpickler, which builds tensors and the archive's own TorchScript
classes only (torch/csrc/jit/serialization/import.cpp, unpickler.cpp). What it can reach
outside the process is what its operator calls reach, so every call in every code file is
resolved the way TorchScript's printer wrote it (torch/csrc/jit/serialization/python_print.cpp):

* ``torch.NAME(...)`` -> ``aten::NAME``; ``ops.NS.NAME(...)`` -> ``NS::NAME``;
* ``value.NAME(...)`` -> a method of a class in the archive, else ``aten::NAME`` or
  ``prim::NAME`` (tensor, list, dict and string methods are aten/prim operators);
* ``NAME(...)`` -> TorchScript's builtins listed below, or a class or function of the archive;
* ``__torch__.path.Class(...)`` -> a class of the archive;

and each operator must pass :func:`operators.operator_problem` for every overload.
"""
from __future__ import annotations

import ast
import re

from . import grammar
from .errors import TRUST_HINT, UntrustedFileError
from .operators import operator_problem
from .strict_zip import relative_to_root

# TorchScript's builtin functions that python_print writes by bare name
# (torch/csrc/jit/frontend/ir_emitter.cpp, torch/jit/_builtins.py)
BUILTIN_CALLS = frozenset({
    "annotate", "unchecked_cast", "uninitialized", "isinstance", "int", "float", "bool", "str",
    "complex", "len", "range", "enumerate", "zip", "min", "max", "abs", "round", "divmod", "print",
    "list", "dict", "tuple", "sorted", "sum", "any", "all", "ord", "chr",
    "hash", "hex", "oct", "bin", "fork", "wait", "Tensor", "Optional", "List", "Dict", "Tuple",
    "Union", "NamedTuple",
})

# Entry names of torch.jit.save's layout, relative to the archive's root folder
# (torch/csrc/jit/serialization/export_module.cpp ScriptModuleSerializer)
_ENTRY = re.compile(
    r"\A(?:data\.pkl|constants\.pkl|version|byteorder|\.data/version|\.data/serialization_id"
    r"|traced_inputs\.pkl|traced_inputs/[0-9]{1,9}|data/[0-9]{1,9}|constants/[0-9]{1,9}"
    r"|extra/[A-Za-z0-9_.-]{1,200}"
    r"|code/__torch__(?:/[A-Za-z0-9_]{1,200})*\.py(?:\.debug_pkl)?)\Z")
# torch.jit.save's printer writes ASCII code with newline line ends only (python_print.cpp
# escapes string constants). Anything else could be read differently by Python's ast (which
# this check uses) and TorchScript's lexer (torch/csrc/jit/frontend/lexer.h): \r ends a
# comment for one and not the other, hiding code from the check.
_CODE_BYTES = re.compile(rb"\A[\n\x20-\x7e]*\Z")


def is_torchscript(names: list[str]) -> bool:
    rel = {n.split("/", 1)[1] for n in names if "/" in n}
    return "data.pkl" in rel and any(r.startswith("code/") for r in rel)


def check_torchscript_archive(path, entries: dict[str, bytes]) -> None:
    """UntrustedFileError (one line naming the rule) unless every entry is known and every
    call in the archive's code is allowed."""
    rel = _relative_names(path, entries)
    for name in rel:
        if not _ENTRY.match(name):
            raise UntrustedFileError(
                f"{path}: {name} is not an entry torch.jit.save writes; refusing it ({TRUST_HINT})")
    sources = {}
    for name, data in rel.items():
        if name.startswith("code/") and name.endswith(".py"):
            if not _CODE_BYTES.match(data):
                bad = next(bytes([b]) for b in data if not (b == 10 or 0x20 <= b <= 0x7e))
                raise UntrustedFileError(
                    f"{path}: {name} holds the byte {bad!r}; torch.jit.save writes printable ASCII and newlines "
                    f"only, and TorchScript's lexer reads other bytes differently from this check; refusing it "
                    f"({TRUST_HINT})")
            try:
                sources[name] = ast.parse(data.decode("utf-8"))
            except (UnicodeDecodeError, SyntaxError, ValueError):
                raise UntrustedFileError(
                    f"{path}: {name} is not readable TorchScript code; refusing it ({TRUST_HINT})") from None
    defined = set()
    for tree in sources.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                defined.add(node.name)
    for name, data in rel.items():
        if name.endswith(".pkl") or name.endswith(".debug_pkl"):
            problem = _pickle_problem(data, defined, debug=name.endswith(".debug_pkl"))
            if problem:
                raise UntrustedFileError(f"{path}: {name} {problem}; refusing to load it ({TRUST_HINT})")
    for name, tree in sources.items():
        aliases = _function_aliases(tree, defined)
        called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom, ast.Global, ast.Nonlocal, ast.Lambda, ast.Await,
                                 ast.AsyncFunctionDef, ast.With, ast.Try, ast.Yield, ast.YieldFrom)):
                raise UntrustedFileError(
                    f"{path}: {name} holds a {type(node).__name__} statement, which TorchScript does not write; "
                    f"refusing it ({TRUST_HINT})")
            problem, what = None, node
            if isinstance(node, ast.Call):
                chain = _chain(node.func)
                if chain == RAISE:
                    problem = _raise_problem(node)
                elif chain == ["getattr"]:
                    problem = _getattr_problem(node)
                elif isinstance(node.func, ast.Name) and node.func.id in aliases:
                    problem = aliases[node.func.id]
                else:
                    problem = _call_problem(node.func, defined)
                what = node.func
            if problem is None and isinstance(node, ast.Attribute) and id(node) not in inner:
                problem = _type_problem(node, defined)  # in annotations too: a slot's type
            if problem is None and isinstance(node, ast.Attribute) and id(node) not in called:
                problem = _value_problem(node)  # an operator taken as a value and called later
            if problem is None and isinstance(node, (ast.AnnAssign, ast.arg, ast.FunctionDef)):
                problem = _string_annotation_problem(node)
            if problem:
                verb = "calls" if isinstance(node, ast.Call) else "names"
                raise UntrustedFileError(
                    f"{path}: {name} line {node.lineno} {verb} {_describe(what)}: {problem}; refusing to "
                    f"load it ({TRUST_HINT})")


# What TorchScript's pickler writes as GLOBAL (torch/csrc/jit/serialization/pickler.cpp) and
# its unpickler resolves (unpickler.cpp readGlobal), besides the archive's own classes
_PICKLE_GLOBALS = frozenset({
    "collections OrderedDict", "torch._utils _rebuild_tensor_v2", "torch._utils _rebuild_tensor",
    "torch.jit._pickle build_intlist", "torch.jit._pickle build_tensorlist", "torch.jit._pickle build_doublelist",
    "torch.jit._pickle build_boollist", "torch.jit._pickle build_complexlist", "torch.jit._pickle restore_type_tag",
    "torch.jit._pickle build_tensor_from_id",
})
_STORAGE_GLOBAL = re.compile(r"\Atorch [A-Za-z0-9]{1,40}Storage\Z")
_ARCHIVE_CLASS_GLOBAL = re.compile(r"\A__torch__(\.[A-Za-z0-9_]+)* ([A-Za-z0-9_]+)\Z")
_PICKLE_OPCODES_REFUSED = frozenset({"STACK_GLOBAL", "INST", "OBJ", "EXT1", "EXT2", "EXT4"})


def _pickle_problem(data: bytes, defined: set[str], debug: bool) -> str | None:
    """The globals a TorchScript pickle names, read as opcodes (pickletools parses, it runs
    nothing): tensor rebuilding, storages, containers and the archive's own classes; no
    TorchBind classes (``__torch__.torch.classes.*``), no objects in a ``.debug_pkl``."""
    import pickletools

    try:
        for op, arg, _pos in pickletools.genops(data):
            if op.name in _PICKLE_OPCODES_REFUSED:
                return f"uses the pickle opcode {op.name}, which TorchScript does not write"
            if op.name != "GLOBAL":
                continue
            if arg in _PICKLE_GLOBALS:
                continue
            if debug:
                return f"names {arg[:60]!r}; debug records hold source ranges, no objects"
            if _STORAGE_GLOBAL.match(arg):
                continue
            m = _ARCHIVE_CLASS_GLOBAL.match(arg)
            if m and not arg.startswith("__torch__.torch.classes") and m.group(2) in defined:
                continue
            return f"names {arg[:60]!r}, which is not a tensor, a container or a class of the archive"
    except Exception as exc:
        return f"is not a readable pickle ({type(exc).__name__})"
    return None


def _string_annotation_problem(node) -> str | None:
    annotation = node.returns if isinstance(node, ast.FunctionDef) else node.annotation
    if annotation is not None and any(isinstance(n, ast.Constant) and isinstance(n.value, str)
                                      for n in ast.walk(annotation)):
        return "a type written as a string, which TorchScript's printer does not write"
    return None


def _function_aliases(tree: ast.AST, defined: set[str]) -> dict[str, str | None]:
    """Local names TorchScript's printer binds to the archive's functions
    (``_0 = __torch__.torch.nn.functional._max_pool2d`` then ``_0(...)``): name -> problem
    or None. A name bound to anything else anywhere in the file is not an alias."""
    bound: dict[str, str | None] = {}
    others = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if not isinstance(target, ast.Name):
                    continue
                chain = _chain(node.value)
                if chain and chain[0] == "__torch__":
                    bound[target.id] = None if chain[-1] in defined else "not a function of the archive"
                else:
                    others.add(target.id)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.For, ast.comprehension, ast.arg, ast.NamedExpr)):
            for sub in ast.walk(node.target if hasattr(node, "target") else node):
                if isinstance(sub, ast.Name):
                    others.add(sub.id)
            if isinstance(node, ast.arg):
                others.add(node.arg)
    return {k: v for k, v in bound.items() if k not in others}


_SUBMODULE_NAME = re.compile(r"\A[A-Za-z0-9_]{1,200}\Z")


def _type_problem(node: ast.Attribute, defined: set[str]) -> str | None:
    """A ``__torch__.*`` name, wherever it stands (a call, a value, an attribute's type
    annotation), must be a class or function of the archive. TorchBind classes
    (``__torch__.torch.classes.*``) are refused: the unpickler calls their C++
    ``__setstate__`` with state from the file (``aten.OpaqueObject`` unpickles it with
    Python's pickle, torch/csrc/jit/python/opaque_obj.h)."""
    chain = _chain(node)
    if not chain or chain[0] != "__torch__":
        return None
    if chain[1:3] == ["torch", "classes"]:
        return f"TorchBind class {'.'.join(chain[3:])[:60]!r} (its __setstate__ runs native code on the file's data)"
    if chain[-1] not in defined:
        return "not a class or function of the archive"
    return None


def _getattr_problem(call: ast.Call) -> str | None:
    """``getattr(self, "0")``: how the printer names a submodule whose name is not an
    identifier (nn.Sequential's children); a constant attribute name only."""
    if call.keywords or len(call.args) != 2:
        return "unexpected arguments"
    owner, name = call.args
    if not isinstance(owner, ast.Name) or owner.id in ("torch", "ops", "__torch__", "CONSTANTS"):
        return "getattr of something other than a module value"
    if not (isinstance(name, ast.Constant) and isinstance(name.value, str) and _SUBMODULE_NAME.match(name.value)):
        return "the attribute is not a constant submodule name"
    return None


def _value_problem(node: ast.Attribute) -> str | None:
    chain = _chain(node)
    if not chain or chain[0] not in ("torch", "ops"):
        return None
    if chain[0] == "torch" and len(chain) == 2:
        problem = operator_problem("aten", chain[1], None)
        return None if problem == "no such operator" else problem  # torch.float32 and the like
    if chain[0] == "ops" and len(chain) == 3:
        return operator_problem(chain[1], chain[2], None)
    if chain[0] == "ops" and len(chain) < 3:
        return None  # the head of ops.NS.op
    return "not an operator"


RAISE = ["ops", "prim", "RaiseException"]
_BUILTIN_EXCEPTION = re.compile(r"\Abuiltins\.[A-Za-z]{1,60}(Error|Exception|Warning|Interrupt|Iteration)\Z")


def _raise_problem(call: ast.Call) -> str | None:
    """``raise E(msg)`` prints as ``ops.prim.RaiseException(msg, "builtins.E")``; the class
    is a name torch reports (torch/csrc/jit/runtime/interpreter.cpp JITException), accepted
    as a constant naming a builtin exception only."""
    if call.keywords or len(call.args) > 2:
        return "unexpected arguments"
    if len(call.args) == 2:
        cls = call.args[1]
        if not (isinstance(cls, ast.Constant) and isinstance(cls.value, str) and _BUILTIN_EXCEPTION.match(cls.value)):
            return "the exception class is not a builtin exception's name"
    return None


def _relative_names(path, entries: dict[str, bytes]) -> dict[str, bytes]:
    rel = relative_to_root(entries)
    if rel is None:
        raise UntrustedFileError(f"{path}: entries are not all under one root folder, as torch.jit.save writes them; "
                                 f"refusing it ({TRUST_HINT})")
    return rel


def _chain(node: ast.AST) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return parts[::-1]
    return None


def _describe(func: ast.AST) -> str:
    try:
        return repr(ast.unparse(func)[:60])
    except Exception:
        return "a call"


def _call_problem(func: ast.AST, defined: set[str]) -> str | None:
    if isinstance(func, ast.Name):
        if func.id in BUILTIN_CALLS or func.id in defined:
            return None
        return "not a TorchScript builtin or a function of the archive"
    if not isinstance(func, ast.Attribute):
        return "not a named function"
    chain = _chain(func)
    if chain and chain[0] == "torch" and len(chain) == 2:
        return operator_problem("aten", chain[1], None)
    if chain and chain[0] == "ops" and len(chain) == 3:
        return operator_problem(chain[1], chain[2], None)
    if chain and chain[0] == "__torch__":
        return None if chain[-1] in defined else "not a class of the archive"
    if chain and chain[0] in ("torch", "ops"):
        return "not an operator"
    method = func.attr  # a method of some value: the archive's own, or an operator's
    if method in defined:
        return None
    if not grammar.IDENT.match(method):
        return "not a method name"
    problems = [operator_problem(ns, method, None) for ns in ("aten", "prim")]
    if any(p is None for p in problems):
        return None
    return next((p for p in problems if p != "no such operator"), "no such method or operator")
