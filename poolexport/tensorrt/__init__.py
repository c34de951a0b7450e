"""TensorRT support: AOT plugins over the shared CUDA kernels, engine building, runner.

Importing this package needs neither TensorRT nor a GPU; the functions that do import
TensorRT lazily and fail with one line naming what is missing.
"""
from ._import import TensorRTUnavailable, import_tensorrt

__all__ = ["TensorRTUnavailable", "import_tensorrt", "kernel_args", "prepare_onnx", "register_plugins",
           "build_engine", "TensorRTRunner"]


def register_plugins() -> None:
    from .plugins import register_plugins as _register

    _register()


def build_engine(*args, **kwargs):
    from .engine import build_engine as _build

    return _build(*args, **kwargs)


def prepare_onnx(model):
    from .onnx_prep import prepare_onnx as _prepare

    return _prepare(model)


def __getattr__(name):
    if name == "kernel_args":  # imported on use: shapes.py imports torch (the CLI starts without it)
        from .shapes import kernel_args

        return kernel_args
    if name == "TensorRTRunner":
        from .runner import TensorRTRunner

        return TensorRTRunner
    raise AttributeError(name)
