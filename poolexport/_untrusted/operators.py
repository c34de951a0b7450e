"""Which operators an untrusted program may call: decided from torch's own op schemas.

A graph node (``.pt2``) or a call in TorchScript code names an operator; torch resolves the
name and the program calls it when it runs. An operator is allowed when

* its namespace is one whose operators compute on tensors: ``aten`` and ``prims`` (torch's
  operator set), ``prim`` (TorchScript's control and container ops), ``poolexport`` (ours);
  other namespaces (``c10d``, ``profiler``, ``debugprims``, ``_test``, ``symm_mem``,
  libraries a user happened to import) are refused as unknown;
* every one of its schema's argument and return types is a type that holds values
  (tensors, numbers, devices, generators, lists/tuples/dicts/optionals of those):
  ``Storage`` (``set_`` onto a storage, e.g. a file-backed one), ``Stream``, ``Future``,
  ``RRef``, ``Await``, TorchBind classes (``__torch__.torch.classes.*``) and anything else
  not listed are refused;
* each ``str`` argument is one of the mode or message parameters listed below. A string is
  where a file name or another object's name enters (``aten::from_file(str filename)``,
  ``aten::save(t item, str filename)``), so an operator taking a string under any other
  parameter name is refused; a new torch operator with a new string parameter is refused
  until it is reviewed and added here.

Higher-order operators (``torch.ops.higher_order``) have no schema of this kind; the ones
that only structure a graph (control flow, grad/autocast regions, functionalized calls of
an operator that is itself checked) are listed by name.
"""
from __future__ import annotations

import functools
import math
import re

import torch

ALLOWED_NAMESPACES = frozenset({"aten", "prims", "prim", "poolexport"})

# Type names as printed in torch schemas (torch._C.FunctionSchema str of each argument type)
SAFE_TYPE_NAMES = frozenset({
    "Tensor", "int", "float", "bool", "complex", "number", "str", "Device", "Generator", "Layout",
    "ScalarType", "MemoryFormat", "Scalar", "SymInt", "SymFloat", "SymBool", "QScheme", "Dimname",
    "List", "Optional", "Dict", "Tuple", "Any", "AnyEnumType", "t", "t1", "t2", "tVal",
})

# str parameters that select a mode, carry a message or are TorchScript string/dict methods'
# operands; gathered from every aten and prim schema of torch 2.13 that takes a str, minus
# ``filename`` (from_file, save)
SAFE_STRING_PARAMETERS = frozenset({
    "self", "norm", "reduce", "a", "b", "rounding_mode", "mode", "key", "interpolation", "driver",
    "substr", "UPLO", "approximate", "assert_msg", "separator", "ord", "side", "padding", "el", "s",
    "fillchar", "chars", "string", "activation", "p", "input", "message", "type", "inputs", "l",
    "item", "device_type", "idx", "t", "algorithm", "padding_side", "values", "old", "new",
    "pad_mode", "equation", "indexing", "api_name",
    "dict", "to_add",  # dict(str, t) operands of __contains__ / update
    "ind", "msg",  # prim::ModuleContainerIndex, prim::RaiseException (TorchScript)
    "auto_pad",  # poolexport's own ops (ONNX's auto_pad modes)
})

# torch.ops.higher_order.*: graph structure only; operator arguments they carry are checked
# as operators in their own right
ALLOWED_HIGHER_ORDER = frozenset({
    "cond", "while_loop", "map_impl", "scan", "associative_scan", "wrap_with_set_grad_enabled",
    "wrap_with_autocast", "auto_functionalized", "auto_functionalized_v2", "with_effects",
    "invoke_subgraph",
})

# What torch's serializer writes for Python-level operations in a graph
# (torch/_export/serde/serialize.py _SYM_OPS and the getitem of multi-output nodes)
OPERATOR_MODULE_TARGETS = frozenset({
    "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos", "abs", "eq", "ne",
    "lt", "le", "gt", "ge", "and_", "or_", "xor", "not_", "invert", "lshift", "rshift", "getitem",
})
MATH_TARGETS = frozenset(n for n in dir(math) if not n.startswith("_") and callable(getattr(math, n)))
TORCH_SYM_TARGETS = frozenset(n for n in dir(torch) if n.startswith("sym_") and callable(getattr(torch, n)))

# Operators whose kernels trust their index or offset arguments (torch checks no bounds for
# them: an out-of-range sparse index writes outside the heap buffer in add_), by name:
# sparse and nested constructors, the *_unsafe variants, set_ onto another storage, the
# quantized-from-int constructors. _unsafe_view stays: it checks the element count like view.
UNSAFE_NAME = re.compile(r"unsafe(?!_view$)|sparse|nested|^set_$|^_make_per_(tensor|channel)_quantized_tensor$")

_TYPE_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_IDENT = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")


def schema_problem(schema) -> str | None:
    """Why this schema's operator may not run on untrusted input, or None."""
    for arg in list(schema.arguments) + list(schema.returns):
        text = str(arg.type)
        for word in _TYPE_WORD.findall(text):
            if word not in SAFE_TYPE_NAMES:
                return f"takes or returns a {word}"
        if "str" in _TYPE_WORD.findall(text) and arg in schema.arguments and arg.name not in SAFE_STRING_PARAMETERS:
            return f"takes a string {arg.name!r}"
    return None


@functools.lru_cache(maxsize=None)
def operator_problem(namespace: str, name: str, overload: str | None) -> str | None:
    """Why ``namespace::name[.overload]`` may not be called, or None when it may. With no
    overload (TorchScript resolves it by types), every overload must be allowed."""
    if namespace not in ALLOWED_NAMESPACES:
        return f"operators of namespace {namespace!r} are not allowed"
    if not (_IDENT.match(name) and (overload is None or _IDENT.match(overload))):
        return "not an operator name"
    if UNSAFE_NAME.search(name):
        return "a constructor that trusts its indices or offsets (memory-unsafe on crafted input)"
    schemas = torch._C._jit_get_schemas_for_operator(f"{namespace}::{name}")
    if overload is not None:
        wanted = "" if overload == "default" else overload
        schemas = [s for s in schemas if s.overload_name == wanted]
    if not schemas:
        return "no such operator"
    for schema in schemas:
        problem = schema_problem(schema)
        if problem:
            return problem
    return None


def check_graph_target(target: str) -> None:
    """A ``.pt2`` node target or ``as_operator`` argument as torch's deserializer resolves it
    (torch/_export/serde/serialize.py ``deserialize_operator``); ValueError(reason) if refused."""
    parts = target.split(".")
    if not all(_IDENT.match(p) and not p.startswith("__") for p in parts):
        raise ValueError("not a dotted name")
    if parts[:3] == ["torch", "ops", "higher_order"] and len(parts) == 4:
        if parts[3] in ALLOWED_HIGHER_ORDER:
            return
        raise ValueError(f"higher-order operator {parts[3]!r} is not allowed")
    if parts[:2] == ["torch", "ops"] and len(parts) == 5:
        problem = operator_problem(parts[2], parts[3], parts[4])
        if problem is None:
            return
        raise ValueError(problem)
    if len(parts) == 2 and parts[0] == "_operator" and parts[1] in OPERATOR_MODULE_TARGETS:
        return
    if len(parts) == 2 and parts[0] == "math" and parts[1] in MATH_TARGETS:
        return
    if len(parts) == 2 and parts[0] == "torch" and parts[1] in TORCH_SYM_TARGETS:
        return
    raise ValueError("not a torch operator or one of the pure _operator/math/torch.sym_* functions")
