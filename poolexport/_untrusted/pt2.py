"""Allow only the known layout of a torch.export archive (``.pt2``), entry by entry.

torch 2.13's ``torch.export.load`` (torch/export/__init__.py ``load``,
torch/export/pt2_archive/_package.py ``load_pt2``) reads, relative to the archive's root:

* ``archive_format`` ("pt2"), ``archive_version`` ("0"), ``byteorder``, ``.data/version``,
  ``.data/serialization_id``;
* every entry under ``models/`` as a program (whatever its suffix: ``_load_exported_programs``
  strips ``models/`` and ``.json`` by length), with ``data/sample_inputs/<model>.pt``
  (``torch.load``), ``data/weights/<model>_weights_config.json`` and
  ``data/constants/<model>_constants_config.json``;
* weights and constants by the configs' ``path_name``: raw storage when ``use_pickle`` is
  false; ``torch.load(weights_only=False)`` when true; for constants also ``pickle.loads``
  (``opaque_obj_*``) and ``torch._C._pickle_load_obj`` (``custom_obj_*``);
* ``extra/*`` as text; ``data/aotinductor/<model>/...`` by dlopen-ing the shared library
  there (``_load_aoti``);
* when no program loads, the pre-2.8 layout (``version`` and
  ``serialized_exported_program.json`` at the root) through Python's zipfile.

Accepted here: exactly one program, ``models/model.json`` (the one ``torch.export.load``
returns), validated against the serde schema (program.py); configs validated the same way,
naming only ``weight_N``/``tensor_N`` payloads that exist; pickled payloads and sample
inputs that load with ``weights_only=True``; ``extra/`` text. Everything else, the
AOTInductor, ExecuTorch, MTIA and XL-weights folders, opaque and custom objects, the legacy
layout and any unknown entry, is refused.
"""
from __future__ import annotations

import io
import json
import re

import torch

from .errors import TRUST_HINT, UntrustedFileError
from .program import ProgramError, check_payload_config, check_program
from .strict_zip import relative_to_root

MODEL = "model"
_FIXED = {
    "archive_format": re.compile(rb"\Apt2\Z"),
    "archive_version": re.compile(rb"\A0\Z"),
    "byteorder": re.compile(rb"\A(little|big)\Z"),
    ".data/version": re.compile(rb"\A[0-9]{1,4}\n?\Z"),
    ".data/serialization_id": re.compile(rb"\A[0-9]{1,64}\Z"),
}
PROGRAM = f"models/{MODEL}.json"
SAMPLE_INPUTS = f"data/sample_inputs/{MODEL}.pt"
WEIGHTS_CONFIG = f"data/weights/{MODEL}_weights_config.json"
CONSTANTS_CONFIG = f"data/constants/{MODEL}_constants_config.json"
_EXTRA = re.compile(r"\Aextra/[A-Za-z0-9_.-]{1,200}\Z")
# what an unknown entry most likely is, for the message
_KNOWN_REFUSALS = (
    ("data/aotinductor/", "AOTInductor native code, which torch dlopens when loading"),
    ("data/executorch/", "an ExecuTorch program"),
    ("data/mtia", "an MTIA program"),
    ("xl_model_weights/", "weights torch loads by pickle"),
    ("serialized_exported_program.json", "the pre-2.8 layout, which torch reads with a second, unchecked loader; "
                                         "re-save it with torch.export.save on torch >= 2.8"),
    ("models/", "a second program (only models/model.json is read)"),
)


def is_pt2(entries: dict[str, bytes]) -> bool:
    return any(n.split("/", 1)[-1] == "archive_format" and entries[n] == b"pt2" for n in entries)


def _refuse(path, text: str):
    raise UntrustedFileError(f"{path}: {text}; refusing to load it ({TRUST_HINT})")


def _relative(path, entries: dict[str, bytes]) -> dict[str, bytes]:
    rel = relative_to_root(entries)
    if rel is None:
        _refuse(path, "entries are not all under one root folder, as torch.export.save writes them")
    return rel


def _weights_only_loads(data: bytes) -> None:
    torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _payloads(path, rel: dict[str, bytes], config_name: str, folder: str, prefix: str) -> set[str]:
    """The entries a weights/constants config names, each checked; returns their names."""
    if config_name not in rel:
        _refuse(path, f"{config_name} is missing")
    try:
        config = json.loads(rel[config_name])
        check_payload_config(config)
    except (ValueError, ProgramError) as exc:
        _refuse(path, f"{config_name}: {str(exc)[:200]}")
    names = set()
    for fqn, meta in config.get("config", {}).items():
        file = meta.get("path_name", "")
        if not file.startswith(prefix):
            _refuse(path, f"{config_name}: {fqn} is stored as {file!r}; only {prefix}N payloads are accepted here")
        entry = folder + file
        if entry not in rel:
            _refuse(path, f"{config_name}: {fqn} names {entry}, which is not in the archive")
        if meta.get("use_pickle"):
            try:
                _weights_only_loads(rel[entry])
            except Exception:
                _refuse(path, f"{entry} holds pickled objects other than tensors, which loading would unpickle "
                              "(run code from the file)")
        elif meta.get("tensor_meta") is None:
            _refuse(path, f"{config_name}: {fqn} has no tensor_meta")
        names.add(entry)
    return names


def check_pt2_archive(path, entries: dict[str, bytes]) -> None:
    """UntrustedFileError (one line naming the rule) unless ``entries`` (name -> bytes, from
    the strict reader) is exactly a torch.export archive of the accepted layout."""
    rel = _relative(path, entries)
    known = set()
    for name, pattern in _FIXED.items():
        if name not in rel or not pattern.match(rel[name]):
            _refuse(path, f"{name} is missing or not what torch.export.save writes")
        known.add(name)
    if PROGRAM not in rel:
        _refuse(path, f"{PROGRAM} is missing")
    try:
        program = json.loads(rel[PROGRAM].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        _refuse(path, f"{PROGRAM} is not JSON")
    try:
        check_program(program)
    except ProgramError as exc:
        _refuse(path, f"{PROGRAM}: {str(exc)[:300]}")
    known.add(PROGRAM)
    if SAMPLE_INPUTS in rel:
        try:
            _weights_only_loads(rel[SAMPLE_INPUTS])
        except Exception:
            _refuse(path, f"{SAMPLE_INPUTS} holds pickled objects other than tensors, which loading would unpickle "
                          "(run code from the file)")
        known.add(SAMPLE_INPUTS)
    else:
        _refuse(path, f"{SAMPLE_INPUTS} is missing")
    known.add(WEIGHTS_CONFIG)
    known |= _payloads(path, rel, WEIGHTS_CONFIG, "data/weights/", "weight_")
    known.add(CONSTANTS_CONFIG)
    known |= _payloads(path, rel, CONSTANTS_CONFIG, "data/constants/", "tensor_")
    for name, data in rel.items():
        if name in known:
            continue
        if _EXTRA.match(name):
            try:
                data.decode("utf-8")  # torch reads extra files as text
            except UnicodeDecodeError:
                _refuse(path, f"{name} is not text")
            continue
        why = next((why for marker, why in _KNOWN_REFUSALS if marker in name), None)
        if why is None and ("custom_obj_" in name or "opaque_obj_" in name):
            why = "a pickled Python or TorchBind object, which loading unpickles"
        _refuse(path, f"{name} is {why}" if why else f"{name} is not an entry this layout has")
