"""ONNX files run no code, but their external data can point at any file."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import UntrustedFileError


def check_onnx_external_data(path) -> list[str]:
    """The external-data files of an ONNX file, each checked to be a plain file inside its
    folder (relative locations, as written in the model); UntrustedFileError otherwise."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    path = Path(path)
    model = onnx.load(os.fspath(path), load_external_data=False)
    base = path.resolve().parent
    locations = []
    for tensor in _get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (base / location).resolve()
        if not location or os.path.isabs(location) or (base / location).is_symlink() \
                or os.path.commonpath([str(base), str(target)]) != str(base):
            raise UntrustedFileError(
                f"{path}: tensor {tensor.name!r} keeps its data at {location!r}, outside the model's folder; "
                "refusing to read it")
        if location not in locations:
            locations.append(location)
    return locations
