"""Load the model files the CLI accepts, with one-line errors for everything else.

* a TorchScript archive (``torch.jit.save``; its example input shape may ride along in the
  ``poolexport.json`` extra file),
* a ``torch.export`` program (``.pt2``, ``torch.export.save``),
* a state_dict (``torch.save(model.state_dict())``) together with ``--arch NAME`` naming a
  model of ``poolexport.models``,
* a pickled full module, only with ``trust_pickle``: unpickling runs arbitrary code.

Without ``trust_pickle`` a file is read once; a zip archive is parsed strictly, checked
against the allowlist of its format and handed to torch only as a canonical rebuild of the
checked entries; pickles load weights-only (see ``_untrusted/``). The CLI also runs all of
this in a contained child process (``_untrusted/child.py``).
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

from ._untrusted.errors import UntrustedFileError
from ._untrusted.pickles import weights_only_unpickling
from ._untrusted.pt2 import check_pt2_archive, is_pt2
from ._untrusted.strict_zip import canonical_bytes, read_archive
from ._untrusted.torchscript import check_torchscript_archive, is_torchscript

EXTRA_FILE = "poolexport.json"  # {"input_shape": [...]} stored beside a TorchScript archive's code


class LoadError(ValueError):
    """A model file that cannot be used; the message is one line for the user."""


@dataclass
class Loaded:
    model: object  # nn.Module, torch.jit.ScriptModule or torch.export.ExportedProgram
    kind: str  # "torchscript", "exported-program", "state_dict", "pickle"
    input_shape: Optional[tuple[int, ...]] = None


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) for k in obj) and all(
        isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap_state_dict(obj):
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and key in obj and _is_state_dict(obj[key]):
            return obj[key]
    return obj


# Test-only: set by the contained child (child.py) when POOLEXPORT_TEST_UNCHECKED_LOAD=1 and
# the sandbox is enforced, so a test can show that the sandbox alone stops a payload
UNCHECKED_LOAD_FOR_TESTS = False


def load_model(path, arch: Optional[str] = None, trust_pickle: bool = False) -> Loaded:
    import poolexport  # noqa: F401  (registers the poolexport:: ops that archives refer to)

    path = Path(path)
    if not path.exists():
        raise LoadError(f"{path}: no such file")
    if not path.is_file():
        raise LoadError(f"{path}: not a file")
    if trust_pickle or UNCHECKED_LOAD_FOR_TESTS:
        return _load_trusted(path, arch)
    data = path.read_bytes()  # the one read: checked, rebuilt and loaded from these bytes
    if data[:2] != b"PK":
        return _load_torch_save(path, io.BytesIO(data), arch, zipped=False)
    try:
        archive = read_archive(data, path)
        entries = archive.entries
        if is_pt2(entries):
            _no_arch(arch, "torch.export program")
            check_pt2_archive(path, entries)
            return _load_program(path, canonical_bytes(archive))
        if is_torchscript(list(entries)):
            _no_arch(arch, "TorchScript archive")
            check_torchscript_archive(path, entries)
            return _load_torchscript(path, canonical_bytes(archive))
        if any(n.rsplit("/", 1)[-1] == "serialized_exported_program.json" for n in entries):
            raise LoadError(f"{path}: a torch.export program in the pre-2.8 layout, which torch reads with a second, "
                            "unchecked loader; re-save it with torch.export.save on torch >= 2.8 (or pass "
                            "--trust-pickle only if you trust its source)")
        return _load_torch_save(path, io.BytesIO(canonical_bytes(archive)), arch, zipped=True)
    except UntrustedFileError as exc:
        raise LoadError(str(exc)) from None


def _load_torch_save(path: Path, source: io.BytesIO, arch, zipped: bool) -> Loaded:
    """torch.save output: a state_dict loads with torch's weights-only unpickler."""
    try:
        obj = torch.load(source, map_location="cpu", weights_only=True)
    except Exception:
        source.seek(0)
        if not zipped and not _looks_like_legacy_pickle(source.read(2)):
            raise LoadError(f"{path}: unknown format (not a TorchScript archive, a torch.export program "
                            "or a torch.save file)") from None
        raise LoadError(f"{path}: holds a pickled object other than a state_dict; loading it runs code from "
                        "the file (unpickling), so pass --trust-pickle only if you trust its source") from None
    obj = _unwrap_state_dict(obj)
    if _is_state_dict(obj):
        return _load_state_dict(path, obj, arch)
    raise LoadError(f"{path}: holds a {type(obj).__name__}, not a state_dict (a full module needs --trust-pickle)")


def _load_trusted(path: Path, arch) -> Loaded:
    """--trust-pickle: the file goes to torch as it is, in this process (torch's own loaders,
    full unpickling allowed)."""
    names = _zip_names(path)
    if any(n.split("/", 1)[-1] == "archive_format" for n in names) or any(
            n.endswith("serialized_exported_program.json") for n in names):
        _no_arch(arch, "torch.export program")
        return _load_program(path, path.read_bytes(), trusted=True)
    if any(n.endswith("/data.pkl") for n in names) and any("/code/" in n for n in names):
        _no_arch(arch, "TorchScript archive")
        return _load_torchscript(path, path.read_bytes())
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise LoadError(f"{path}: could not unpickle ({type(exc).__name__}: {_first_line(exc)})") from None
    obj = _unwrap_state_dict(obj)
    if isinstance(obj, torch.nn.Module):
        if arch:
            raise LoadError(f"--arch: {path} holds a full module; --arch is for a state_dict")
        return Loaded(obj, "pickle")
    if _is_state_dict(obj):
        return _load_state_dict(path, obj, arch)
    raise LoadError(f"{path}: holds a {type(obj).__name__}, not a module or a state_dict")


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def _looks_like_legacy_pickle(head: bytes) -> bool:
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


def _load_program(path: Path, data: bytes, trusted: bool = False) -> Loaded:
    guard = contextlib.nullcontext() if trusted else weights_only_unpickling()
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


def _load_torchscript(path: Path, data: bytes) -> Loaded:
    extra = {EXTRA_FILE: ""}
    try:
        module = torch.jit.load(io.BytesIO(data), map_location="cpu", _extra_files=extra)
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
