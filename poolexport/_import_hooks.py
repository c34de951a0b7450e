"""Run a function right after a module finishes loading, without importing it ourselves.

``import poolexport`` registers its ops once torch loads, and ``poolexport.ops`` its ONNX
translations once torch.onnx's registry module loads; neither may import the module early
(``poolexport --help`` must start without torch).
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import Callable

_PENDING: set = set()  # module names with a hook installed


def after_import(name: str, callback: Callable[[object], None]) -> None:
    """``callback(module)`` now if ``name`` is loaded, else right after its first import
    finishes (once per name)."""
    if name in sys.modules:
        callback(sys.modules[name])
        return
    if name in _PENDING:
        return
    _PENDING.add(name)

    class _Loader(importlib.abc.Loader):
        def __init__(self, loader):
            self._loader = loader

        def create_module(self, spec):
            return self._loader.create_module(spec)

        def exec_module(self, module):
            self._loader.exec_module(module)
            callback(module)

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname != name:
                return None
            sys.meta_path.remove(self)
            _PENDING.discard(name)
            spec = importlib.util.find_spec(fullname)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader)
            return spec

    sys.meta_path.insert(0, _Finder())
