"""Read model files that someone else wrote without running code from them.

One parse (strict_zip: the archive is read once, strictly, and torch is handed a canonical
rebuild of exactly the validated entries), an allowlist per format (pt2 + program +
operators + grammar for torch.export archives, torchscript for TorchScript archives,
onnx_data for ONNX external data), a weights-only unpickler under both (pickles), and a
contained child process around the load and export (sandbox, child).

Names are imported lazily: the sandbox's bootstrap (child.py) loads this package's
stdlib-only modules before torch is imported.
"""
import importlib

_EXPORTS = {
    "TRUST_HINT": ".errors", "UntrustedFileError": ".errors",
    "check_onnx_external_data": ".onnx_data",
    "weights_only_unpickling": ".pickles",
    "StrictArchive": ".strict_zip", "read_archive": ".strict_zip", "canonical_bytes": ".strict_zip",
    "check_pt2_archive": ".pt2", "is_pt2": ".pt2",
    "check_torchscript_archive": ".torchscript", "is_torchscript": ".torchscript",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(name)
