"""Load the model files the CLI accepts, with one-line errors for everything else.

* a TorchScript archive (``torch.jit.save``; its example input shape may ride along in the
  ``poolexport.json`` extra file),
* a ``torch.export`` program (``.pt2``, ``torch.export.save``),
* a state_dict (``torch.save(model.state_dict())``) together with ``--arch NAME`` naming a
  model of ``poolexport.models``,
* a pickled full module, only with ``trust_pickle``: unpickling runs arbitrary code.

Without ``trust_pickle`` nothing in a file runs as code: ``.pt2`` and TorchScript archives
are read as data first and refused when they carry more (see ``_untrusted.py``).
"""
from __future__ import annotations

import contextlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ._untrusted import UntrustedFileError, check_pt2, check_torchscript, weights_only_unpickling

EXTRA_FILE = "poolexport.json"  # {"input_shape": [...]} stored beside a TorchScript archive's code


class LoadError(ValueError):
    """A model file that cannot be used; the message is one line for the user."""


@dataclass
class Loaded:
    model: object  # nn.Module, torch.jit.ScriptModule or torch.export.ExportedProgram
    kind: str  # "torchscript", "exported-program", "state_dict", "pickle"
    input_shape: Optional[tuple[int, ...]] = None


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) for k in obj) and all(
        isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap_state_dict(obj):
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and key in obj and _is_state_dict(obj[key]):
            return obj[key]
    return obj


def load_model(path, arch: Optional[str] = None, trust_pickle: bool = False) -> Loaded:
    import poolexport  # noqa: F401  (registers the poolexport:: ops that archives refer to)

    path = Path(path)
    if not path.exists():
        raise LoadError(f"{path}: no such file")
    if not path.is_file():
        raise LoadError(f"{path}: not a file")
    names = _zip_names(path)
    if any(n.endswith("serialized_exported_program.json") or "/models/" in n and n.endswith(".json") for n in names) \
            or (path.suffix == ".pt2" and names):
        return _load_program(path, arch, trust_pickle)
    if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
        return _load_torchscript(path, arch, trust_pickle)
    # torch.save: a state_dict loads with weights_only; anything else needs real unpickling
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if not names and not _looks_like_legacy_pickle(path):
            raise LoadError(f"{path}: unknown format (not a TorchScript archive, a torch.export program "
                            "or a torch.save file)") from None
        if not trust_pickle:
            raise LoadError(f"{path}: holds a pickled object other than a state_dict; loading it runs code from "
                            "the file (unpickling), so pass --trust-pickle only if you trust its source") from exc
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:
            raise LoadError(f"{path}: could not unpickle ({type(exc2).__name__}: {_first_line(exc2)})") from None
    obj = _unwrap_state_dict(obj)
    if isinstance(obj, torch.nn.Module):
        if arch:
            raise LoadError(f"--arch: {path} holds a full module; --arch is for a state_dict")
        return Loaded(obj, "pickle")
    if _is_state_dict(obj):
        return _load_state_dict(path, obj, arch)
    raise LoadError(f"{path}: holds a {type(obj).__name__}, not a module or a state_dict")


def _looks_like_legacy_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80 and head[1] <= 5  # pickle protocol opcode


def _state_dict_mismatch(exc: BaseException, width: int = 300) -> str:
    """torch's load_state_dict report (missing keys, unexpected keys, size mismatches), one
    indented line each, long key lists cut with a count of what was left out."""
    lines = []
    for line in str(exc).splitlines()[1:] or str(exc).splitlines():
        line = line.strip()
        if not line:
            continue
        if len(line) > width:
            rest = line[width:].count(",")
            line = line[:width].rsplit(",", 1)[0] + f", ... ({rest} more)"
        lines.append("  " + line)
    return "\n".join(lines[:12])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""


def _no_arch(arch, kind):
    if arch:
        raise LoadError(f"--arch: the file is a {kind}, which carries its own architecture; --arch is for a state_dict")


def _load_program(path: Path, arch, trust_pickle: bool) -> Loaded:
    _no_arch(arch, "torch.export program")
    data = path.read_bytes()  # checked and loaded from the same bytes
    guard = contextlib.nullcontext()
    if not trust_pickle:
        try:
            check_pt2(path, data)
        except UntrustedFileError as exc:
            raise LoadError(str(exc)) from None
        guard = weights_only_unpickling()
    try:
        with guard:
            program = torch.export.load(io.BytesIO(data))
    except Exception as exc:
        raise LoadError(f"{path}: could not load the torch.export program ({type(exc).__name__}: "
                        f"{_first_line(exc)})") from None
    shape = None
    try:
        args = program.example_inputs[0] if program.example_inputs else ()
        if args and isinstance(args[0], torch.Tensor):
            shape = tuple(args[0].shape)
    except Exception:
        shape = None
    if shape is None:
        placeholders = [n for n in program.graph.nodes if n.op == "placeholder"
                        and n.name in program.graph_signature.user_inputs]
        if placeholders and "val" in placeholders[0].meta:
            try:
                shape = tuple(int(s) for s in placeholders[0].meta["val"].shape)
            except Exception:
                shape = None
    return Loaded(program, "exported-program", shape)


def _load_torchscript(path: Path, arch, trust_pickle: bool) -> Loaded:
    _no_arch(arch, "TorchScript archive")
    if not trust_pickle:
        try:
            with zipfile.ZipFile(path) as archive:
                check_torchscript(path, archive)
        except UntrustedFileError as exc:
            raise LoadError(str(exc)) from None
    extra = {EXTRA_FILE: ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:
        raise LoadError(f"{path}: could not load the TorchScript archive ({type(exc).__name__}: "
                        f"{_first_line(exc)})") from None
    shape = None
    if extra[EXTRA_FILE]:
        try:
            shape = tuple(int(v) for v in json.loads(extra[EXTRA_FILE])["input_shape"])
        except Exception:
            shape = None
    return Loaded(module, "torchscript", shape)


def _load_state_dict(path: Path, state, arch) -> Loaded:
    try:
        from poolexport import models
    except ImportError:
        raise LoadError("--arch: poolexport.models is not available in this install") from None
    if not arch:
        raise LoadError(f"{path}: is a state_dict; name its architecture with --arch "
                        f"(one of: {', '.join(models.list_models())})")
    if arch not in models.list_models():
        raise LoadError(f"--arch: unknown architecture {arch!r}; choose from {', '.join(models.list_models())}")
    model = models.create_model(arch)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise LoadError(f"{path}: does not fit --arch {arch}:\n{_state_dict_mismatch(exc)}") from None
    return Loaded(model, "state_dict", tuple(models.default_input_shape(arch)))
