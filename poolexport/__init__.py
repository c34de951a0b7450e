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


def _register_when_torch_loads() -> None:
    """``import poolexport`` registers the ops with torch as before, but without importing
    torch itself: now if torch is loaded, else right after torch finishes loading."""
    if "torch" in _sys.modules:
        _register_ops()
        return
    import importlib.abc
    import importlib.util

    class _Loader(importlib.abc.Loader):
        def __init__(self, loader):
            self._loader = loader

        def create_module(self, spec):
            return self._loader.create_module(spec)

        def exec_module(self, module):
            self._loader.exec_module(module)
            if _initializing():  # a poolexport module imported torch: register after it has loaded
                _sys.meta_path.insert(0, _RegisterOnNextImport())
            else:
                _register_safely()

    class _TorchFinder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname != "torch":
                return None
            _sys.meta_path.remove(self)
            spec = importlib.util.find_spec(fullname)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader)
            return spec

    if not any(isinstance(f, _TorchFinder) or type(f).__name__ == "_TorchFinder" for f in _sys.meta_path):
        _sys.meta_path.insert(0, _TorchFinder())


_register_when_torch_loads()
