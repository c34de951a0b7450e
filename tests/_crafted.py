"""Model files an attacker would send: each runs ``touch <marker>`` when loaded by the
plain torch loader. Built from the shipped examples, so everything else in them is valid.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import shlex
import zipfile
from pathlib import Path

import torch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PT2 = EXAMPLES / "resnet_softpool.pt2"


class _Payload:
    def __init__(self, marker):
        self.marker = os.fspath(marker)

    def __reduce__(self):
        return os.system, ("touch " + shlex.quote(self.marker),)


def payload_pickle(marker) -> bytes:
    return pickle.dumps(_Payload(marker), protocol=2)


def _rewrite_zip(src: Path, dst: Path, edit) -> None:
    """Copy ``src`` to ``dst`` with ``edit(name, bytes) -> bytes | None`` applied per entry."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info))
            if data is not None:
                zout.writestr(info, data)


def _prefix(src: Path) -> str:
    with zipfile.ZipFile(src) as z:
        return z.namelist()[0].split("/", 1)[0]


def pt2_sample_inputs(dst: Path, marker) -> Path:
    """The issue's attack: data/sample_inputs/model.pt is a pickle with a payload."""
    _rewrite_zip(PT2, dst, lambda n, d: payload_pickle(marker) if n.endswith("data/sample_inputs/model.pt") else d)
    return dst


def pt2_pickled_weight(dst: Path, marker, alias_as_raw: bool = False) -> Path:
    """A weight marked use_pickle, which torch.export.load unpickles with weights_only=False.
    ``alias_as_raw``: a second config entry names the same payload as raw storage."""
    def edit(name, data):
        if name.endswith("data/weights/model_weights_config.json"):
            config = json.loads(data)
            first = next(iter(config["config"].values()))
            first["use_pickle"] = True
            if alias_as_raw:
                config["config"]["alias"] = {**first, "use_pickle": False}
            return json.dumps(config).encode()
        if name.endswith("data/weights/weight_0"):
            buf = io.BytesIO()
            torch.save(_Payload(marker), buf)
            return buf.getvalue()
        return data
    _rewrite_zip(PT2, dst, edit)
    return dst


def pt2_symbolic_shape(dst: Path, marker, via: str = "call") -> Path:
    """A symbolic shape string, which torch parses with sympy.sympify (eval). ``via="string"``
    hides the code in a string argument, which sympy functions (Max, Abs, floor, ...) sympify."""
    code = f"__import__('os').system({('touch ' + shlex.quote(os.fspath(marker)))!r})"
    wrap = (lambda expr: f"Max({code!r}, {expr})") if via == "string" else \
        (lambda expr: f"Add({code} * 0, {expr})")

    def edit(name, data):
        if name.endswith(".json") and "/models/" in name:
            text = data.decode()
            first = text.index('"expr_str": "') + len('"expr_str": "')
            end = text.index('"', first)
            expr = json.loads('"' + text[first:end] + '"')
            evil = json.dumps(wrap(expr))[1:-1]
            return (text[:first] + evil + text[end:]).encode()
        return data
    _rewrite_zip(PT2, dst, edit)
    return dst


def pt2_guard(dst: Path, marker) -> Path:
    """A guard, which torch execs into the module that ExportedProgram.module() returns."""
    code = f"__import__('os').system({('touch ' + shlex.quote(os.fspath(marker)))!r}) == 0"

    def edit(name, data):
        if name.endswith(".json") and "/models/" in name:
            program = json.loads(data)
            program["guards_code"] = list(program.get("guards_code") or []) + [code]
            return json.dumps(program).encode()
        return data
    _rewrite_zip(PT2, dst, edit)
    return dst


def pt2_node_target(dst: Path) -> Path:
    """A node whose target resolves to os.system through the torch module."""
    def edit(name, data):
        if name.endswith(".json") and "/models/" in name:
            return data.replace(b'"torch.ops.aten.relu.default"', b'"torch.os.system"', 1)
        return data
    _rewrite_zip(PT2, dst, edit)
    return dst


def pt2_opaque_constant(dst: Path, marker) -> Path:
    """An opaque-object constant, which torch.export.load passes to pickle.loads."""
    prefix = _prefix(PT2)

    def edit(name, data):
        if name.endswith("data/constants/model_constants_config.json"):
            return json.dumps({"config": {"c": {"path_name": "opaque_obj_0", "is_param": False,
                                                "use_pickle": True, "tensor_meta": None}}}).encode()
        return data
    _rewrite_zip(PT2, dst, edit)
    with zipfile.ZipFile(dst, "a") as z:
        z.writestr(f"{prefix}/data/constants/opaque_obj_0", payload_pickle(marker))
    return dst


def state_dict(dst: Path, marker) -> Path:
    """A state_dict with one entry that is not a tensor."""
    torch.save({"weight": torch.zeros(2), "extra": _Payload(marker)}, dst)
    return dst


def torchscript_forward_writes(dst: Path, marker) -> Path:
    """A TorchScript module whose forward writes a file (aten::save)."""
    class Writer(torch.nn.Module):
        def __init__(self, path: str):
            super().__init__()
            self.path = path

        def forward(self, x):
            torch.save(x, self.path)
            return x

    torch.jit.save(torch.jit.script(Writer(os.fspath(marker))), os.fspath(dst),
                   _extra_files={"poolexport.json": '{"input_shape": [1, 3, 8, 8]}'})
    return dst


def torchscript_setstate_writes(dst: Path, marker) -> Path:
    """A TorchScript module whose __setstate__ writes a file when the archive is loaded."""
    class Writer(torch.nn.Module):
        def __init__(self, path: str):
            super().__init__()
            self.path = path

        def forward(self, x):
            return x

        @torch.jit.export
        def __getstate__(self):
            return (self.path, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[str, bool]):
            self.path = state[0]
            self.training = state[1]
            torch.save(torch.zeros(1), self.path)

    torch.jit.save(torch.jit.script(Writer(os.fspath(marker))), os.fspath(dst))
    return dst


def onnx_external_data(folder: Path, secret: Path, how: str) -> Path:
    """An ONNX file whose initializer's external data lies outside ``folder``."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    folder.mkdir(parents=True, exist_ok=True)
    secret.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    if how == "relative":
        location = os.path.relpath(secret, folder)
    elif how == "absolute":
        location = os.fspath(secret.resolve())
    elif how == "symlink":
        (folder / "link.bin").symlink_to(secret.resolve())
        location = "link.bin"
    else:
        raise ValueError(how)
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("Add", ["input", "w"], ["output"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def pt2_weight_bytes_like_a_pickle(dst: Path) -> Path:
    """A harmless archive whose first raw weight payload starts with a pickle's opening bytes
    (0x80 0x02: any float32 tensor can): raw payloads are not unpickled, so it must load."""
    def edit(name, data):
        return b"\x80\x02" + data[2:] if name.endswith("data/weights/weight_0") else data
    _rewrite_zip(PT2, dst, edit)
    return dst
