"""Validate a torch.export program (``models/<name>.json``) against torch's serde schema,
with a grammar for every string in it.

torch reads the JSON with ``_dict_to_dataclass`` (torch/_export/serde/serialize.py), which
ignores unknown keys and checks no types; the deserializer then resolves node targets,
sympifies symbolic shapes, pastes names into generated code and execs guards. Here the same
JSON is walked against the dataclasses of torch/_export/serde/schema.py with their type
hints: an unknown key, a wrong type, or a union with other than one member is refused, and
each string field has a rule (``STRING_RULES``), so a string torch would evaluate or paste
cannot carry code. A field with no rule is refused: a new schema field is reviewed before
it is accepted. TorchBind/custom objects are refused wherever the schema allows them.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import re
import types
import typing

from torch._export.serde import schema
from torch._export.serde.union import _Union

from . import grammar
from .operators import check_graph_target

# schema versions whose layout these rules were written against (torch 2.8 - 2.13 write 8.x)
SUPPORTED_SCHEMA_MAJOR = 8
# float fields: a JSON number, or exactly one of the spellings torch.export.save gives inf and NaN
NON_FINITE_FLOATS = ("Infinity", "-Infinity", "NaN")


def _refuse(_value):
    raise ValueError("TorchBind/custom objects are not allowed")


def _device_type(value):
    if value not in ("cpu", "cuda", "meta"):
        raise ValueError(f"device type {value[:20]!r}")


def _target(value):
    try:
        check_graph_target(value)
    except ValueError as exc:
        raise ValueError(f"operator {value[:80]!r} is refused: {exc}") from None


def _metadata_value(key: str, value: str) -> None:
    """Node metadata, as torch's deserialize_metadata reads each key."""
    grammar.text(value)
    if key == "stack_trace":
        return  # kept as text; FX writes it only into comments, line by line
    if key in ("custom", "from_node"):
        return grammar.plain_json_text(value)  # json.loads, kept as data
    if key == "nn_module_stack":  # "key,path,type;..." kept as strings
        for item in value.split(";"):
            for part in _split_meta(item):
                if not _META_PATH.match(part):
                    raise ValueError(f"nn_module_stack entry {part[:60]!r}")
        return
    if key == "torch_fn":  # "name;kind.fn" kept as strings
        if not grammar.META_WORD.match(value.replace(";", " ")):
            raise ValueError(f"torch_fn {value[:60]!r}")
        return
    if key == "source_fn_stack":  # "node,target;..." each target resolved with getattr
        for item in value.split(";"):
            name, _, target = item.partition(",")
            if not grammar.IDENT.match(name):
                raise ValueError(f"source_fn_stack name {name[:40]!r}")
            grammar.dotted_identifier(target)
        return
    raise ValueError(f"unknown node metadata key {key[:40]!r}")


_META_PATH = re.compile(r"\A[A-Za-z0-9_.@<>\[\]'\"(), :-]*\Z")


def _split_meta(item: str) -> list[str]:
    # serialize.py metadata_split: three parts separated by commas outside brackets
    out, start, depth = [], 0, 0
    for i, c in enumerate(item):
        if c in "[(":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == "," and depth == 0:
            out.append(item[start:i])
            start = i + 1
    out.append(item[start:])
    if len(out) != 3:
        raise ValueError(f"nn_module_stack entry {item[:60]!r}")
    return out


def _payload_name(value):
    if not re.fullmatch(r"(weight|tensor)_[0-9]{1,9}", value):
        raise ValueError(f"payload file {value[:40]!r} (only weight_N and tensor_N are read as tensors)")


_fqn = grammar.fqn
_ident = grammar.identifier


def _fqn_or_root(value):
    grammar.fqn(value, empty_ok=True)


def _forward_arg_name(value):
    grammar.identifier(value)


# (dataclass, field) -> rule for the strings in it (each element of a list of strings)
STRING_RULES: dict[tuple[str, str], typing.Callable[[str], None]] = {
    ("Device", "type"): _device_type,
    ("SymExpr", "expr_str"): grammar.sympy_srepr,
    ("SymIntArgument", "as_name"): _ident,
    ("SymFloatArgument", "as_name"): _ident,
    ("SymBoolArgument", "as_name"): _ident,
    ("TensorArgument", "name"): _ident,
    ("TokenArgument", "name"): _ident,
    ("GraphArgument", "name"): _ident,
    ("CustomObjArgument", "name"): _refuse,
    ("CustomObjArgument", "class_fqn"): _refuse,
    ("Argument", "as_string"): grammar.text,
    ("Argument", "as_strings"): grammar.text,
    ("Argument", "as_operator"): _target,
    ("NamedArgument", "name"): _ident,
    ("Node", "target"): _target,
    ("Node", "name"): _ident,
    ("ConstantValue", "as_string"): grammar.text,
    ("InputToConstantInputSpec", "name"): _ident,
    ("InputToParameterSpec", "parameter_name"): _fqn,
    ("InputToBufferSpec", "buffer_name"): _fqn,
    ("InputToTensorConstantSpec", "tensor_constant_name"): _fqn,
    ("InputToCustomObjSpec", "custom_obj_name"): _refuse,
    ("BufferMutationSpec", "buffer_name"): _fqn,
    ("ParameterMutationSpec", "parameter_name"): _fqn,
    ("GradientToParameterSpec", "parameter_name"): _fqn,
    ("GradientToUserInputSpec", "user_input_name"): _ident,
    ("UserInputMutationSpec", "user_input_name"): _ident,
    ("ModuleCallSignature", "in_spec"): grammar.treespec,
    ("ModuleCallSignature", "out_spec"): grammar.treespec,
    ("ModuleCallSignature", "forward_arg_names"): _forward_arg_name,
    ("ModuleCallEntry", "fqn"): _fqn_or_root,
    ("NamedTupleDef", "field_names"): _ident,
    ("ExportedProgram", "verifiers"): _ident,
    ("ExportedProgram", "torch_version"): lambda v: None if grammar.VERSION.match(v) else _bad("version", v),
    ("ExportedProgram", "guards_code"): grammar.guard,
    ("PayloadMeta", "path_name"): _payload_name,
}

# (dataclass, field) -> rule for the keys of a dict field; None: the dict must be empty
KEY_RULES: dict[tuple[str, str], typing.Optional[typing.Callable[[str], None]]] = {
    ("Argument", "as_string_to_argument"): _ident,
    ("Node", "metadata"): grammar.identifier,  # values: _metadata_value
    ("Graph", "tensor_values"): _ident,
    ("Graph", "sym_int_values"): _ident,
    ("Graph", "sym_bool_values"): _ident,
    ("Graph", "sym_float_values"): _ident,
    ("Graph", "custom_obj_values"): None,
    ("GraphModule", "metadata"): None,
    ("GraphModule", "treespec_namedtuple_fields"): grammar.dotted_identifier,
    ("ExportedProgram", "opset_version"): _ident,
    ("ExportedProgram", "range_constraints"): _ident,
    ("PayloadConfig", "config"): _fqn,
}
REFUSED_MEMBERS = {("Argument", "as_custom_obj"), ("InputSpec", "custom_obj")}


def _bad(what, value):
    raise ValueError(f"{what} {value[:40]!r}")


class ProgramError(ValueError):
    """Where in the program JSON (a path like ``graph_module.graph.nodes[3].target``) and why."""


@functools.lru_cache(maxsize=None)
def _hints(cls) -> dict:
    return typing.get_type_hints(cls, globalns=vars(schema))


def _unwrap(tp):
    if isinstance(tp, str):
        tp = getattr(schema, tp)
    if isinstance(tp, typing.ForwardRef):
        tp = getattr(schema, tp.__forward_arg__)
    if typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _walk(tp, value, where: str, owner: tuple[str, str]) -> None:
    tp = _unwrap(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # Optional[X]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return
        return _walk(args[0], value, where, owner)
    if isinstance(tp, type) and issubclass(tp, _Union):
        if not isinstance(value, dict) or len(value) != 1:
            raise ProgramError(f"{where}: a {tp.__name__} must have exactly one member")
        (member, inner), = value.items()
        hints = _hints(tp)
        if member not in hints:
            raise ProgramError(f"{where}: {tp.__name__} has no member {str(member)[:40]!r}")
        if (tp.__name__, member) in REFUSED_MEMBERS:
            raise ProgramError(f"{where}.{member}: TorchBind/custom objects are not allowed")
        return _walk(hints[member], inner, f"{where}.{member}", (tp.__name__, member))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ProgramError(f"{where}: expected an object for {tp.__name__}")
        hints = _hints(tp)
        for key in value:
            if key not in hints:
                raise ProgramError(f"{where}: unknown field {str(key)[:40]!r} of {tp.__name__}")
        for key, item in value.items():
            _walk(hints[key], item, f"{where}.{key}", (tp.__name__, key))
        return
    if origin is list:
        if not isinstance(value, list):
            raise ProgramError(f"{where}: expected a list")
        (item_tp,) = typing.get_args(tp)
        for i, item in enumerate(value):
            _walk(item_tp, item, f"{where}[{i}]", owner)
        return
    if origin is dict:
        if not isinstance(value, dict):
            raise ProgramError(f"{where}: expected an object")
        key_rule = KEY_RULES.get(owner, "missing")
        if key_rule == "missing":
            raise ProgramError(f"{where}: no rule for the keys of {owner[0]}.{owner[1]}")
        if key_rule is None and value:
            raise ProgramError(f"{where}: must be empty")
        _, item_tp = typing.get_args(tp)
        for key, item in value.items():
            try:
                key_rule(key)
            except ValueError as exc:
                raise ProgramError(f"{where}: key: {exc}") from None
            if owner == ("Node", "metadata"):
                if not isinstance(item, str):
                    raise ProgramError(f"{where}[{key!r}]: expected a string")
                try:
                    _metadata_value(key, item)
                except ValueError as exc:
                    raise ProgramError(f"{where}[{key!r}]: {exc}") from None
                continue
            _walk(item_tp, item, f"{where}[{key!r}]", owner)
        return
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if type(value) is not int or value not in {m.value for m in tp}:
            raise ProgramError(f"{where}: not a {tp.__name__} value")
        return
    if tp is bool:
        if type(value) is not bool:
            raise ProgramError(f"{where}: expected a boolean")
        return
    if tp is int:
        if type(value) is not int:
            raise ProgramError(f"{where}: expected an integer")
        return
    if tp is float:
        # torch's serializer writes non-finite floats (a -inf padding value) as these strings
        if type(value) not in (int, float) and not (type(value) is str and value in NON_FINITE_FLOATS):
            raise ProgramError(f"{where}: expected a number")
        return
    if tp is str:
        if not isinstance(value, str):
            raise ProgramError(f"{where}: expected a string")
        rule = STRING_RULES.get(owner)
        if rule is None:
            raise ProgramError(f"{where}: no rule for strings in {owner[0]}.{owner[1]}")
        try:
            rule(value)
        except ValueError as exc:
            raise ProgramError(f"{where}: {exc}") from None
        return
    raise ProgramError(f"{where}: unsupported schema type {tp!r}")


def check_program(program) -> None:
    """ProgramError naming the path and the rule, for any part of ``program`` (parsed JSON of
    ``models/<name>.json``) that does not match the schema and its string rules."""
    if not isinstance(program, dict):
        raise ProgramError("program: expected an object")
    version = program.get("schema_version")
    if not (isinstance(version, dict) and version.get("major") == SUPPORTED_SCHEMA_MAJOR):
        raise ProgramError(f"schema_version: {version!r:.60} (this poolexport reads schema "
                           f"{SUPPORTED_SCHEMA_MAJOR}.x, written by torch 2.8 and later)")
    _walk(schema.ExportedProgram, program, "program", ("ExportedProgram", ""))


def check_payload_config(config) -> None:
    _walk(schema.PayloadConfig, config, "config", ("PayloadConfig", ""))
