"""The .pt2 allowlist, rule by rule: the program JSON against torch's serde schema with a
grammar per string, operators from torch's schemas, the archive's entry names.

Each case edits one thing of a real program (the shipped example) and checks that exactly
that is refused, and that the untouched program passes; the attacks through the command
line are in test_attacks.py and test_untrusted_files.py.
"""
import copy
import io
import json
import zipfile

import pytest
import torch

import _crafted
import poolexport  # noqa: F401  (registers poolexport:: operators)
from poolexport._untrusted import grammar
from poolexport._untrusted.errors import UntrustedFileError
from poolexport._untrusted.operators import check_graph_target, operator_problem
from poolexport._untrusted.program import STRING_RULES, ProgramError, check_program
from poolexport._untrusted.pt2 import check_pt2_archive


@pytest.fixture(scope="module")
def entries():
    with zipfile.ZipFile(_crafted.PT2) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


@pytest.fixture(scope="module")
def program(entries):
    return json.loads(next(v for k, v in entries.items() if k.endswith("models/model.json")))


def _node(program, i=3):
    return program["graph_module"]["graph"]["nodes"][i]


def test_the_shipped_program_passes(program, entries):
    check_program(program)
    check_pt2_archive("x.pt2", entries)


# ------------------------------------------------------------------ schema structure
@pytest.mark.parametrize("edit, where", [
    (lambda p: _node(p).update(extra_field=1), "unknown field 'extra_field' of Node"),
    (lambda p: p["graph_module"].update(code="import os"), "unknown field 'code' of GraphModule"),
    (lambda p: _node(p)["inputs"][0]["arg"].update(as_int=1), "exactly one member"),
    (lambda p: _node(p)["inputs"][0].update(arg={"as_module": "os"}), "has no member 'as_module'"),
    (lambda p: _node(p)["inputs"][0].update(arg={"as_custom_obj": {"name": "x", "class_fqn": "a.b"}}),
     "TorchBind/custom objects"),
    (lambda p: _node(p).update(target=["torch", "ops"]), "expected a string"),
    (lambda p: _node(p).update(is_hop_single_tensor_return=1), "expected a boolean"),
    (lambda p: p["schema_version"].update(major=True), "schema_version"),
    (lambda p: p["graph_module"]["graph"]["tensor_values"][next(iter(p["graph_module"]["graph"]["tensor_values"]))]
     .update(dtype=99), "not a ScalarType value"),
    (lambda p: p["graph_module"]["graph"]["custom_obj_values"].update(x={"name": "x", "class_fqn": "y"}),
     "must be empty"),
    (lambda p: p["graph_module"]["metadata"].update(x="y"), "must be empty"),
    (lambda p: _node(p)["metadata"].update(seq_nr="1"), "unknown node metadata key 'seq_nr'"),
])
def test_schema_violations_refused(program, edit, where):
    bad = copy.deepcopy(program)
    edit(bad)
    with pytest.raises(ProgramError, match=where):
        check_program(bad)


# ------------------------------------------------------------------ strings torch evaluates
def _signature(p):
    return p["graph_module"]["module_call_graph"][0]["signature"]


def _guard_edit(text):
    return lambda p: p["guards_code"].append(text)


@pytest.mark.parametrize("edit, why", [
    # pasted into `def forward(...)`, exec'd by ExportedProgram.module()
    (lambda p: _signature(p)["forward_arg_names"].__setitem__(0, "x=__import__('os').system('id')"),
     "not an identifier"),
    (lambda p: _signature(p)["forward_arg_names"].__setitem__(0, "lambda"), "not an identifier"),
    (lambda p: _signature(p)["forward_arg_names"].__setitem__(0, "__class__"), "not an identifier"),
    # FX node names become Python names in generated code
    (lambda p: _node(p).update(name="relu_; import os"), "not an identifier"),
    (lambda p: _node(p)["outputs"][0]["as_tensor"].update(name="a b"), "not an identifier"),
    # resolved by getattr from torch / _operator / math
    (lambda p: _node(p).update(target="torch.os.system"), "not a torch operator"),
    (lambda p: _node(p).update(target="torch.ops.aten.from_file.default"), "takes a string 'filename'"),
    (lambda p: _node(p).update(target="torch.ops.aten.set_.source_Storage"), "Storage"),
    (lambda p: _node(p).update(target="torch.ops.c10d.allreduce_.default"), "namespace 'c10d'"),
    (lambda p: _node(p).update(target="torch.ops.aten.relu_.no_such_overload"), "no such operator"),
    (lambda p: _node(p).update(target="#custom.op"), "not a dotted name"),
    (lambda p: _node(p).update(target="_operator.attrgetter"), "not a torch operator"),
    (lambda p: _node(p)["inputs"].append({"name": "op", "arg": {"as_operator": "torch.ops.aten.from_file.default"},
                                          "kind": 2}), "takes a string 'filename'"),
    (lambda p: _node(p)["inputs"].append({"name": "op", "arg": {"as_operator": "builtins.eval"}, "kind": 2}),
     "not a torch operator"),
    # module paths (getattr on the module)
    (lambda p: p["graph_module"]["signature"]["input_specs"][0]["parameter"].update(parameter_name="a..b"),
     "dotted module path"),
    (lambda p: p["graph_module"]["signature"]["input_specs"][0]["parameter"].update(parameter_name="__dict__"),
     "dotted module path"),
    # exec'd guards: the quote would end the assert message's string literal
    (_guard_edit("L['x\"+__import__(\"os\").system(\"id\")+\"'].size()[0] == 2"), "not an identifier"),
    (_guard_edit("__import__('os').system('id')"), "guard is not arithmetic"),
    (_guard_edit("L['x'].size()[0] == 2\nimport os"), "one-line"),
    (_guard_edit("L['x'].__class__ == 2"), "guard is not arithmetic"),
    # sympify'd symbolic shapes
    (lambda p: p["graph_module"]["graph"]["sym_int_values"].update(
        s9={"as_expr": {"expr_str": "Max('__import__(\"os\")', 1)", "hint": None}}), "plain sympy srepr"),
    (lambda p: p["graph_module"]["graph"]["sym_int_values"].update(
        s9={"as_expr": {"expr_str": "Symbol('a b')", "hint": None}}), "plain sympy srepr"),
    # comments FX writes from a stack trace: \r ends a Python line
    (lambda p: _node(p)["metadata"].update(stack_trace="File \"a.py\", line 1, in f\n    x\rimport os"),
     "control character"),
    (lambda p: _node(p)["metadata"].update(source_fn_stack="relu,torch.os.system()"), "not a dotted name"),
    # pytree specs: container types resolve through torch's registry
    (lambda p: _signature(p).update(in_spec=json.dumps([1, {"type": "os.system", "context": None,
                                                             "children_spec": []}])), "container type"),
    (lambda p: _signature(p).update(in_spec="not json"), "not JSON"),
])
def test_dangerous_strings_refused(program, edit, why):
    bad = copy.deepcopy(program)
    edit(bad)
    with pytest.raises(ProgramError, match=why):
        check_program(bad)


def test_every_string_field_of_the_schema_has_a_rule():
    """A str field with no rule would be refused at load; listing them here makes a schema
    change (a new torch) visible as a failing test, not as files that stop loading."""
    import dataclasses
    import typing

    from torch._export.serde import schema

    missing = []
    for cls in vars(schema).values():
        if isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ == schema.__name__:
            if cls.__name__ in ("AOTInductorModelPickleData", "ExternKernelNode", "ExternKernelNodes"):
                continue  # not part of an ExportedProgram
            for f in dataclasses.fields(cls):
                hint = str(typing.get_type_hints(cls, globalns=vars(schema))[f.name])
                if ("str" in hint and "dict[str" not in hint) and (cls.__name__, f.name) not in STRING_RULES:
                    missing.append(f"{cls.__name__}.{f.name}")
    assert missing == []


# ------------------------------------------------------------------ grammar boundaries
@pytest.mark.parametrize("text, ok", [
    ("x", True), ("_x1", True), ("x" * 1000, True), ("1x", False), ("", False), ("x-y", False),
    ("class", False), ("__x", False), ("x\n", False), ("é", False),
])
def test_identifier(text, ok):
    if ok:
        grammar.identifier(text)
    else:
        with pytest.raises(ValueError):
            grammar.identifier(text)


@pytest.mark.parametrize("length, ok", [(grammar.MAX_TEXT - 1, True), (grammar.MAX_TEXT, True),
                                        (grammar.MAX_TEXT + 1, False)])
def test_text_length_limit(length, ok):
    value = "a" * length
    if ok:
        grammar.text(value)
    else:
        with pytest.raises(ValueError):
            grammar.text(value)


@pytest.mark.parametrize("char", ["\r", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\x00", "\x7f"])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_text_control_characters(char, where):
    value = {"first": char + "ab", "middle": "a" + char + "b", "last": "ab" + char}[where]
    with pytest.raises(ValueError, match="control character"):
        grammar.text(value)


def test_text_keeps_newline_and_tab():
    grammar.text("File \"a.py\", line 1\n\tx = 1")


@pytest.mark.parametrize("expr, ok", [
    ("Symbol('s0', integer=True, positive=True)", True),
    ("Add(Mul(Integer(2), Symbol('s0')), Integer(-1))", True),
    ("FloorDiv(Symbol('s0'), Integer(2))", True),
    ("Float('1.5', precision=53)", True),
    ("Float('1.5e', precision=53)", False),
    ("Symbol('s0', integer=x)", False),
    ("Add(Symbol('s0'), s1)", False),
    ("Function('f')(Symbol('s0'))", False),
    ("Symbol('s0').__class__", False),
])
def test_sympy_srepr(expr, ok):
    if ok:
        grammar.sympy_srepr(expr)
    else:
        with pytest.raises(ValueError):
            grammar.sympy_srepr(expr)


@pytest.mark.parametrize("extra, ok", [(-1, True), (0, True), (1, False)])
def test_sympy_srepr_length_limit(extra, ok):
    body = "Add(" + ", ".join(["Integer(1)"] * (grammar.MAX_EXPR // 12)) + ")"
    body = body[:-1] + " " * (grammar.MAX_EXPR + extra - len(body)) + ")"
    assert len(body) == grammar.MAX_EXPR + extra
    if ok:
        grammar.sympy_srepr(body)
    else:
        with pytest.raises(ValueError, match="characters"):
            grammar.sympy_srepr(body)


# ------------------------------------------------------------------ operators
@pytest.mark.parametrize("target, ok", [
    ("torch.ops.aten.conv2d.default", True),
    ("torch.ops.aten.div.Tensor_mode", True),  # str rounding_mode: a mode
    ("torch.ops.aten._assert_scalar.default", True),  # str assert_msg: a message
    ("torch.ops.poolexport.soft_pool.default", True),
    ("torch.ops.aten.copy_.default", True),
    ("torch.ops.higher_order.cond", True),
    ("_operator.getitem", True),
    ("math.ceil", True),
    ("torch.sym_max", True),
    ("torch.ops.aten._unsafe_view.default", True),  # checks the element count like view
    ("torch.ops.aten.from_file.default", False),
    ("torch.ops.aten.record_stream.default", False),
    # trust their indices/offsets: an out-of-range sparse index writes outside the heap buffer
    ("torch.ops.aten._sparse_coo_tensor_with_dims_and_tensors.default", False),
    ("torch.ops.aten._unsafe_index.Tensor", False),
    ("torch.ops.aten._nested_view_from_buffer.default", False),
    ("torch.ops.aten.set_.source_Tensor_storage_offset", False),
    ("torch.ops.aten._make_per_tensor_quantized_tensor.default", False),
    ("torch.ops.aten.set_.source_Storage_storage_offset", False),
    ("torch.ops.higher_order.triton_kernel_wrapper_mutation", False),
    ("torch.ops.profiler._record_function_enter.default", False),
    ("torch.ops.aten", False),
    ("torch.ops.aten.add", False),
    ("torch.ops.aten.add.Tensor.extra", False),
    ("torch._C._get_tracing_state", False),
    ("math.__loader__", False),
    ("_operator.methodcaller", False),
    ("torch.load", False),
])
def test_graph_targets(target, ok):
    if ok:
        check_graph_target(target)
    else:
        with pytest.raises(ValueError):
            check_graph_target(target)


def test_every_aten_string_parameter_is_reviewed():
    """A torch with a new str parameter: its operators are refused until the name is reviewed;
    this lists which are refused today, so the list does not grow unseen."""
    refused = sorted({s.name for s in torch._C._jit_get_all_schemas()
                      if s.name.split("::")[0] in ("aten", "prim")
                      and (operator_problem(*s.name.split("::"), None) or "").startswith("takes a string")})
    # RaiseException's cls: TorchScript code is checked call by call (test_torchscript_allowlist.py)
    assert refused == ["aten::from_file", "aten::save", "prim::RaiseException"]


# ------------------------------------------------------------------ archive layout
@pytest.mark.parametrize("name, why", [
    ("data/aotinductor/model/model.so", "AOTInductor native code"),
    ("serialized_exported_program.json", "pre-2.8 layout"),
    ("models/model2.json", "second program"),
    ("models/model.json.bak", "second program"),
    ("data/constants/sub/opaque_obj_0", "pickled Python or TorchBind object"),
    ("data/weights/weight_999", "not an entry this layout has"),
    ("data/executorch/x", "ExecuTorch"),
    ("xl_model_weights/model_param_config", "pickle"),
    ("readme.txt", "not an entry this layout has"),
    ("extra/../x", "not an entry this layout has"),
])
def test_unknown_entries_refused(entries, name, why):
    root = next(iter(entries)).split("/", 1)[0]
    bad = dict(entries)
    bad[f"{root}/{name}"] = b"\x80\x02N."
    with pytest.raises(UntrustedFileError, match=why):
        check_pt2_archive("x.pt2", bad)


def test_extra_text_files_accepted(entries):
    root = next(iter(entries)).split("/", 1)[0]
    check_pt2_archive("x.pt2", {**entries, f"{root}/extra/notes.txt": b"hello"})
    with pytest.raises(UntrustedFileError, match="not text"):
        check_pt2_archive("x.pt2", {**entries, f"{root}/extra/notes.txt": b"\xff\xfe"})


def _edit_config(entries, kind, edit):
    name = next(k for k in entries if k.endswith(f"data/{kind}/model_{kind}_config.json"))
    config = json.loads(entries[name])
    edit(config["config"])
    return {**entries, name: json.dumps(config).encode()}


@pytest.mark.parametrize("edit, why", [
    (lambda c: next(iter(c.values())).update(path_name="opaque_obj_0"), "payload file 'opaque_obj_0'"),
    (lambda c: next(iter(c.values())).update(path_name="weight_9999"), "not in the archive"),
    (lambda c: next(iter(c.values())).update(use_pickle=True), "pickled objects other than tensors"),
    (lambda c: next(iter(c.values())).update(tensor_meta=None), "no tensor_meta"),
])
def test_weight_config_rules(entries, edit, why):
    with pytest.raises(UntrustedFileError, match=why):
        check_pt2_archive("x.pt2", _edit_config(entries, "weights", edit))


def test_pickled_weight_of_plain_tensor_accepted(entries):
    """use_pickle with a payload torch's weights-only unpickler reads is data."""
    cfg = next(k for k in entries if k.endswith("data/weights/model_weights_config.json"))
    first = next(iter(json.loads(entries[cfg])["config"].values()))["path_name"]
    payload = next(k for k in entries if k.endswith("data/weights/" + first))
    buf = io.BytesIO()
    torch.save(torch.zeros(3), buf)
    edited = _edit_config(entries, "weights", lambda c: next(iter(c.values())).update(use_pickle=True))
    check_pt2_archive("x.pt2", {**edited, payload: buf.getvalue()})


@pytest.mark.parametrize("name, value", [("archive_format", b"pt3"), ("archive_version", b"1"),
                                         ("byteorder", b"middle"), (".data/version", b"6\nx")])
def test_fixed_entries_checked(entries, name, value):
    full = next(k for k in entries if k.split("/", 1)[1] == name)
    with pytest.raises(UntrustedFileError, match=name):
        check_pt2_archive("x.pt2", {**entries, full: value})


def test_two_roots_refused(entries):
    with pytest.raises(UntrustedFileError, match="one root folder"):
        check_pt2_archive("x.pt2", {**entries, "other/extra/x": b""})


# ------------------------------------------------------------------ ordinary files pass
@pytest.mark.parametrize("name", __import__("poolexport.models", fromlist=["list_models"]).list_models())
def test_every_example_network_saved_by_torch_passes(name, tmp_path):
    """torch.export.save and torch.jit.save (trace) files of every example network pass the
    checks as they are (the CLI round trip of a few is in test_attacks.py)."""
    from poolexport import models
    from poolexport._untrusted.strict_zip import read_archive
    from poolexport._untrusted.torchscript import check_torchscript_archive

    model = models.create_model(name).eval()
    x = torch.randn(*models.default_input_shape(name))
    buf = io.BytesIO()
    torch.export.save(torch.export.export(model, (x,)), buf)
    check_pt2_archive(name, read_archive(buf.getvalue(), name).entries)
    buf = io.BytesIO()
    torch.jit.save(torch.jit.trace(model, x), buf)
    check_torchscript_archive(name, read_archive(buf.getvalue(), name).entries)


def _program_of(module, x):
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(module, (x,)), buffer)
    z = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    name = next(n for n in z.namelist() if n.endswith("models/model.json"))
    return json.loads(z.read(name))


class _PadWith(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x):
        return torch.nn.functional.pad(x, (1, 1), value=self.value)


@pytest.mark.parametrize("value", [float("-inf"), float("inf"), float("nan")])
def test_non_finite_float_constants_accepted(value):
    # a max pool's -inf padding: torch.export.save spells it as a string in as_float
    program = _program_of(_PadWith(value), torch.randn(1, 2, 3))
    floats = [a["arg"]["as_float"] for n in program["graph_module"]["graph"]["nodes"] for a in n["inputs"]
              if isinstance(a.get("arg"), dict) and "as_float" in a["arg"]]
    assert floats and all(isinstance(f, str) for f in floats)
    check_program(program)


@pytest.mark.parametrize("spelling", ["inf", "-inf", "Infinity ", "infinity", "1e400", "nan", "NaN0", "", "__import__"])
def test_other_strings_in_float_fields_refused(spelling):
    program = _program_of(_PadWith(float("-inf")), torch.randn(1, 2, 3))
    for n in program["graph_module"]["graph"]["nodes"]:
        for a in n["inputs"]:
            if isinstance(a.get("arg"), dict) and "as_float" in a["arg"]:
                a["arg"]["as_float"] = spelling
    with pytest.raises(ProgramError, match="expected a number"):
        check_program(program)
