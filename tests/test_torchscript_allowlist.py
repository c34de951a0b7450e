"""TorchScript archives: known entries only, and every call in their code resolved to an
allowed operator, a TorchScript builtin or the archive's own code."""
import io
import zipfile

import pytest
import torch

import _crafted
import poolexport
from poolexport._untrusted.errors import UntrustedFileError
from poolexport._untrusted.torchscript import check_torchscript_archive, is_torchscript


class _Scripted(torch.nn.Module):
    """Control flow, a raise, list and dict methods, tensor methods (scripted: our pool
    layers are not scriptable; the traced archives below carry our ops)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.pool = torch.nn.MaxPool2d(2)

    def forward(self, x):
        if x.dim() != 4:
            raise ValueError("expected NCHW")
        sizes: list[int] = []
        sizes.append(x.size(0))
        table: dict[str, int] = {"n": sizes[0]}
        y = self.pool(self.conv(x)).relu_()
        return y.view(table["n"], -1)


def _entries(module) -> dict:
    buf = io.BytesIO()
    torch.jit.save(module, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


@pytest.fixture(scope="module")
def scripted():
    return _entries(torch.jit.script(_Scripted().eval()))


def _with_code(entries, old, new):
    name = next(n for n, d in entries.items() if n.endswith(".py") and old.encode() in d)
    return {**entries, name: entries[name].replace(old.encode(), new.encode(), 1)}


def test_ordinary_archives_pass(scripted):
    check_torchscript_archive("s.pt", scripted)
    assert is_torchscript(list(scripted))
    with zipfile.ZipFile(_crafted.EXAMPLES / "newcbam.ts") as z:
        shipped = {i.filename: z.read(i) for i in z.infolist()}
    check_torchscript_archive("newcbam.ts", shipped)
    traced = torch.jit.trace(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), poolexport.nn.SoftPool2d(2)).eval(),
                             torch.randn(1, 3, 8, 8))
    check_torchscript_archive("t.pt", _entries(traced))


@pytest.mark.parametrize("new, why", [
    ('torch.save(x, "/tmp/x")\n    y = torch.relu_(_1)', "takes a string 'filename'"),
    ('torch.from_file("/etc/passwd", True, 8)\n    y = torch.relu_(_1)', "takes a string 'filename'"),
    ('x.save("/tmp/x")\n    y = torch.relu_(_1)', "takes a string 'filename'"),
    ('ops.c10d.barrier()\n    y = torch.relu_(_1)', "namespace 'c10d'"),
    ('ops.profiler._record_function_enter("x")\n    y = torch.relu_(_1)', "namespace 'profiler'"),
    ('eval("1")\n    y = torch.relu_(_1)', "not a TorchScript builtin"),
    ('getattr(torch, "from_file")\n    y = torch.relu_(_1)', "getattr of something other than a module"),
    ('torch.no_such_op(x)\n    y = torch.relu_(_1)', "no such operator"),
    ('torch.jit._load_for_lite_interpreter(x)\n    y = torch.relu_(_1)', "not an operator"),
    ('x.record_stream(x)\n    y = torch.relu_(_1)', "Stream"),
    ('(lambda: 1)()\n    y = torch.relu_(_1)', "not a named function"),
])
def test_calls_refused(scripted, new, why):
    bad = _with_code(scripted, "y = torch.relu_(_1)", new)
    with pytest.raises(UntrustedFileError, match=why):
        check_torchscript_archive("s.pt", bad)


def test_import_statement_refused(scripted):
    name = next(n for n in scripted if n.endswith(".py"))
    bad = {**scripted, name: b"import os\n" + scripted[name]}
    with pytest.raises(UntrustedFileError, match="Import statement"):
        check_torchscript_archive("s.pt", bad)


@pytest.mark.parametrize("cls, ok", [('"builtins.ValueError"', True), ('"builtins.RuntimeError"', True),
                                     ('"os.system"', False), ('"builtins.eval"', False), ("x", False)])
def test_raise_class_must_be_a_builtin_exception(scripted, cls, ok):
    entries = _with_code(scripted, '"builtins.ValueError"', cls)
    if ok:
        check_torchscript_archive("s.pt", entries)
    else:
        with pytest.raises(UntrustedFileError, match="exception class|not a TorchScript builtin"):
            check_torchscript_archive("s.pt", entries)


@pytest.mark.parametrize("name", ["attributes.pkl", "model.json", "code/__torch__/x.so", "code/../x.py",
                                  "tensors/0", "data/x", "extra/a/b", "constants/0.pkl"])
def test_unknown_entries_refused(scripted, name):
    root = next(iter(scripted)).split("/", 1)[0]
    with pytest.raises(UntrustedFileError, match="not an entry torch.jit.save writes"):
        check_torchscript_archive("s.pt", {**scripted, f"{root}/{name}": b""})


def test_unparseable_code_refused(scripted):
    name = next(n for n in scripted if n.endswith(".py"))
    with pytest.raises(UntrustedFileError, match="not readable TorchScript code"):
        check_torchscript_archive("s.pt", {**scripted, name: b"def (:"})


def test_torchbind_slot_type_refused(scripted):
    """A slot typed as a TorchBind class: TorchScript's unpickler would call its C++
    __setstate__ on data from the file (aten.OpaqueObject's pickle.loads it)."""
    # the slot's printed type may be mangled (___torch_mangle_N) when other tests scripted Conv2d
    name = next(n for n, d in scripted.items() if n.endswith(".py") and b"  conv : __torch__." in d)
    lines = scripted[name].split(b"\n")
    lines = [b"  conv : __torch__.torch.classes.aten.OpaqueObject" if ln.startswith(b"  conv : ") else ln
             for ln in lines]
    bad = {**scripted, name: b"\n".join(lines)}
    with pytest.raises(UntrustedFileError, match="TorchBind class 'aten.OpaqueObject'"):
        check_torchscript_archive("s.pt", bad)


@pytest.mark.parametrize("global_name, ok", [
    (b"torch._utils\n_rebuild_tensor_v2", True),
    (b"collections\nOrderedDict", True),
    (b"torch\nFloatStorage", True),
    (b"os\nsystem", False),
    (b"builtins\neval", False),
    (b"__torch__.torch.classes.aten\nOpaqueObject", False),
    (b"__torch__.somewhere\nNotInTheArchive", False),
])
def test_pickle_globals(scripted, global_name, ok):
    """The globals data.pkl may name, read as opcodes: GLOBAL module\\nname\\n."""
    name = next(n for n in scripted if n.endswith("/data.pkl"))
    data = b"\x80\x02c" + global_name + b"\n)\x81q\x00."  # PROTO 2, GLOBAL, EMPTY_TUPLE, NEWOBJ, STOP
    entries = {**scripted, name: data}
    if ok:
        check_torchscript_archive("s.pt", entries)
    else:
        with pytest.raises(UntrustedFileError, match="data.pkl names"):
            check_torchscript_archive("s.pt", entries)


def test_pickle_opcodes_torchscript_never_writes(scripted):
    name = next(n for n in scripted if n.endswith("/data.pkl"))
    data = b"\x80\x04\x8c\x02os\x8c\x06system\x93)R."  # STACK_GLOBAL
    with pytest.raises(UntrustedFileError, match="STACK_GLOBAL"):
        check_torchscript_archive("s.pt", {**scripted, name: data})
