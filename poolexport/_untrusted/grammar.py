"""Grammars for the strings of an untrusted program that torch evaluates, resolves or pastes
into code it generates. Each check raises ValueError(reason); callers add where it was.

* identifiers: node, argument and input names become Python names in the code that FX and
  ``ExportedProgram.module()`` generate and exec (torch/fx/graph.py ``_gen_python_code``,
  torch/export/_unlift.py ``_get_codegen``, which pastes ``forward_arg_names`` into
  ``def forward(...)``);
* dotted names: parameter/buffer fully qualified names (``getattr`` paths on the module);
* sympy ``srepr`` text: torch parses symbolic shapes with ``sympy.sympify`` (``eval``,
  torch/_export/serde/serialize.py ``_parse_sym_expr``);
* guards: ``exec``ed as ``torch._assert(<guard>, "Guard failed: <guard>")``
  (torch/export/_unlift.py ``_convert_guards_code_to_fn``), so they are arithmetic on input
  sizes and every string in them is an identifier (a quote would end the message literal);
* text: data that reaches only values and comments (string arguments, stack traces): no
  control character but newline and tab, since Python also ends a line at ``\\r`` and a
  comment that FX writes from it would end early.
"""
from __future__ import annotations

import ast
import json
import keyword
import re

IDENT = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")
FQN = re.compile(r"\A[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*\Z")
DOTTED_IDENT = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
VERSION = re.compile(r"\A[0-9A-Za-z.+_-]{1,64}\Z")
# nn_module_stack / torch_fn entries: module paths and class names, as torch writes them
# (``L__self__stem.2``, ``stem.2``, ``pkg.mod.<locals>.Block``, ``relu_1;function.relu``)
META_WORD = re.compile(r"\A[A-Za-z0-9_.<>\[\]' -]*\Z")
# ASCII digits only: torch writes no others, and a Unicode-aware \d let Float('١') through
NUMBER_TEXT = re.compile(r"\A[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\Z")
MAX_TEXT = 1 << 16

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def identifier(text: str) -> None:
    if not IDENT.match(text) or keyword.iskeyword(text) or text.startswith("__"):
        raise ValueError(f"{text[:40]!r} is not an identifier")


def fqn(text: str, empty_ok: bool = False) -> None:
    if text == "" and empty_ok:
        return
    if not FQN.match(text) or any(p.startswith("__") for p in text.split(".")):
        raise ValueError(f"{text[:60]!r} is not a dotted module path")


def dotted_identifier(text: str) -> None:
    if not DOTTED_IDENT.match(text) or any(p.startswith("__") for p in text.split(".")):
        raise ValueError(f"{text[:60]!r} is not a dotted name")


def text(value: str) -> None:
    if len(value) > MAX_TEXT:
        raise ValueError(f"a string of {len(value)} characters (at most {MAX_TEXT})")
    bad = _CONTROL.search(value)
    if bad:
        raise ValueError(f"control character {bad.group()!r} in {value[:40]!r}")


# ------------------------------------------------------------------ sympy srepr
# torch writes symbolic shapes with sympy's srepr (serialize.py ``_print_sympy``): calls of
# these names with numbers, Symbol('name', flag=True) and nested calls. Nothing else.
SYMPY_CALLS = frozenset({
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
SYMPY_NAMES = frozenset({"oo", "zoo", "nan", "true", "false", "int_oo"})
MAX_EXPR = 4096


def _sympy_node(node: ast.AST) -> None:
    if isinstance(node, ast.Expression):
        return _sympy_node(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
        return
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        return _sympy_node(node.operand)
    if isinstance(node, ast.Name) and node.id in SYMPY_NAMES:
        return
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in SYMPY_CALLS:
        name = node.func.id
        for kw in node.keywords:
            # Symbol flags (integer=True, positive=True), Float(..., precision=53)
            if kw.arg is None or not isinstance(kw.value, ast.Constant) or type(kw.value.value) not in (bool, int):
                raise ValueError(f"keyword argument of {name}")
        for i, arg in enumerate(node.args):
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                # a string handed to any sympy constructor but these is sympify()ed, i.e. eval()ed
                if name == "Symbol" and i == 0 and IDENT.match(arg.value):
                    continue
                if name == "Float" and i == 0 and NUMBER_TEXT.match(arg.value):
                    continue
                raise ValueError(f"string argument {arg.value[:40]!r} of {name}")
            _sympy_node(arg)
        return
    raise ValueError(f"{type(node).__name__} {ast.unparse(node)[:60]!r}")


def _expression(value: str) -> ast.Expression:
    try:
        return ast.parse(value, mode="eval")
    except SyntaxError:
        raise ValueError("not an expression") from None


def sympy_srepr(value: str) -> None:
    """Refused with the rule's name: torch sympify()s (evals) this text."""
    try:
        if len(value) > MAX_EXPR:
            raise ValueError(f"{len(value)} characters")
        _sympy_node(_expression(value))
    except ValueError as exc:
        raise ValueError(f"symbolic shape is not plain sympy srepr, and torch would eval it ({exc})") from None


# ------------------------------------------------------------------ guards
_GUARD_FUNCTIONS = frozenset({"max", "min", "IsNonOverlappingAndDenseIndicator", "cast_symbool_to_symint_guardless"})
_TENSOR_METHODS = frozenset({"size", "stride", "dim", "numel", "storage_offset"})
_GUARD_MATH = frozenset({"ceil", "floor", "trunc", "sqrt", "log2", "log", "exp", "isnan", "isinf"})


def _guard_node(node: ast.AST) -> None:
    """Arithmetic and comparisons on ``L['x'].size()[i]``, as torch writes guards
    (torch/export/exported_program.py ``_convert_guards_to_code``)."""
    if isinstance(node, ast.Expression):
        return _guard_node(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
        return
    if isinstance(node, ast.Name) and node.id == "inf":
        return
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
        key = node.slice.value
        if type(key) is str:
            identifier(key)  # pasted between double quotes in the generated assert
        elif type(key) is not int:
            raise ValueError("subscript")
        if isinstance(node.value, ast.Name) and node.value.id == "L":
            return  # an input, by name
        return _guard_node(node.value)
    if isinstance(node, ast.Call) and not node.keywords:
        func = node.func
        ok = (isinstance(func, ast.Name) and func.id in _GUARD_FUNCTIONS) or (
            isinstance(func, ast.Attribute) and (
                (func.attr in _TENSOR_METHODS and not isinstance(func.value, ast.Name)
                 and _guard_node(func.value) is None)
                or (isinstance(func.value, ast.Name) and func.value.id == "math" and func.attr in _GUARD_MATH)
                or (isinstance(func.value, ast.Name) and func.value.id == "torch"
                    and func.attr in ("sym_max", "sym_min", "sym_not", "sym_float", "sym_int", "sym_ite"))))
        if ok:
            for arg in node.args:
                _guard_node(arg)
            return
    if isinstance(node, (ast.Compare, ast.BoolOp, ast.UnaryOp, ast.BinOp, ast.Tuple, ast.List)):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                _guard_node(child)
            elif not isinstance(child, (ast.operator, ast.cmpop, ast.boolop, ast.unaryop, ast.expr_context)):
                raise ValueError(type(child).__name__)
        return
    raise ValueError(ast.unparse(node)[:60] if isinstance(node, ast.expr) else type(node).__name__)


def guard(value: str) -> None:
    """Refused with the rule's name: torch execs this text when the program is called."""
    try:
        if len(value) > MAX_EXPR or "\n" in value or "\r" in value:
            raise ValueError("not a one-line expression")
        _guard_node(_expression(value))
    except ValueError as exc:
        raise ValueError(f"guard is not arithmetic on input sizes, and torch would exec it ({exc})") from None


# ------------------------------------------------------------------ pytree specs
# treespec_loads (torch/utils/_pytree.py) parses each context with json.loads and an
# object_hook that imports a module and walks attributes for {"__enum__": ...} objects
# (enum_object_hook), and defaultdict contexts name a factory to import. So each container
# type gets exactly the context torch writes for it (``_treespec_to_json``): null for
# sequences, a list of str/int keys for dicts; JSON objects are refused everywhere.
_SEQUENCE_TYPES = frozenset({"builtins.tuple", "builtins.list", "torch.fx.immutable_collections.immutable_list"})
_MAPPING_TYPES = frozenset({"builtins.dict", "collections.OrderedDict",
                            "torch.fx.immutable_collections.immutable_dict"})
TREESPEC_TYPES = frozenset({None}) | _SEQUENCE_TYPES | _MAPPING_TYPES
MAX_TREESPEC_NODES = 1 << 16


def treespec(value: str) -> None:
    try:
        spec = json.loads(value)
    except ValueError:
        raise ValueError("not JSON") from None
    if not (isinstance(spec, list) and len(spec) == 2 and type(spec[0]) is int):
        raise ValueError("not a [protocol, spec] pair")
    stack, seen = [spec[1]], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_TREESPEC_NODES or not isinstance(node, dict) or set(node) != {"type", "context", "children_spec"}:
            raise ValueError("not a tree node")
        kind, context = node["type"], node["context"]
        if kind not in TREESPEC_TYPES:
            raise ValueError(f"container type {str(kind)[:60]!r}")
        if kind is None:
            ok = context is None
        else:
            try:
                parsed = json.loads(context) if isinstance(context, str) else object()
            except ValueError:
                parsed = object()
            if kind in _SEQUENCE_TYPES:
                ok = parsed is None
            else:
                ok = isinstance(parsed, list) and all(
                    (isinstance(k, str) and not _CONTROL.search(k)) or type(k) is int for k in parsed)
        if not ok:
            raise ValueError(f"context {str(context)[:60]!r} of a {kind or 'leaf'} node")
        if not isinstance(node["children_spec"], list):
            raise ValueError("children")
        stack.extend(node["children_spec"])


def _plain_json(obj, depth: int = 0) -> None:
    """JSON of strings (checked as text), numbers, booleans, null, lists and dicts."""
    if depth > 64:
        raise ValueError("nested too deep")
    if isinstance(obj, str):
        text(obj)
    elif isinstance(obj, list):
        for item in obj:
            _plain_json(item, depth + 1)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            text(k)
            _plain_json(v, depth + 1)
    elif obj is not None and type(obj) not in (int, float, bool):
        raise ValueError(type(obj).__name__)


def plain_json_text(value: str) -> None:
    text(value)
    try:
        _plain_json(json.loads(value))
    except ValueError as exc:
        raise ValueError(f"not plain JSON ({exc})") from None
