"""poolexport: pooling and attention layers from PyTorch to ONNX Runtime and TensorRT."""
__version__ = "0.1.0"

import sys as _sys

from .ort import get_library_path  # noqa: E402,F401  (does not import onnxruntime)

# torch-side submodules, imported on first use so that the command line (``poolexport
# --help``, ``inspect``) starts without torch
_TORCH_MODULES = ("functional", "nn", "ops")


def __getattr__(name):
    if name in _TORCH_MODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _register_ops() -> None:
    """``torch.ops.poolexport.*`` and the ops' torch.onnx translations, which loading a
    TorchScript archive or a torch.export program that uses the ops needs."""
    from . import ops  # noqa: F401


def _register_safely() -> None:
    try:
        _register_ops()
    except Exception as exc:  # never break the import that got us here
        import warnings

        warnings.warn(f"poolexport: could not register its ops with torch ({exc})", RuntimeWarning, stacklevel=3)


def _initializing() -> bool:
    """Whether a poolexport module is half-loaded (registering now would import it again)."""
    return any(name.partition(".")[0] == __name__ and getattr(getattr(m, "__spec__", None), "_initializing", False)
               for name, m in list(_sys.modules.items()))


class _RegisterOnNextImport:
    """A meta-path finder that finds nothing: at the first import once no poolexport module
    is half-loaded, it registers the ops and removes itself."""

    def find_spec(self, fullname, path, target=None):
        if not _initializing():
            if self in _sys.meta_path:
                _sys.meta_path.remove(self)
            _register_safely()
        return None


def _after_torch_loads(_torch) -> None:
    if _initializing():  # a poolexport module imported torch: register after it has loaded
        _sys.meta_path.insert(0, _RegisterOnNextImport())
    else:
        _register_safely()


def _register_when_torch_loads() -> None:
    """``import poolexport`` registers the ops with torch as before, but without importing
    torch itself: now if torch is loaded, else right after torch finishes loading."""
    if "torch" in _sys.modules:
        _register_ops()
        return
    from ._import_hooks import after_import

    after_import("torch", _after_torch_loads)


_register_when_torch_loads()
