"""Import TensorRT (and its Python plugin API) or fail with one line naming what is missing."""
from __future__ import annotations

MIN_VERSION = (10, 9)  # ONNX parser support for ahead-of-time Python plugins


class TensorRTUnavailable(ImportError):
    """TensorRT (or a part of it this feature needs) cannot be used here."""


def tensorrt_version(trt) -> tuple[int, int]:
    major, minor = (int(v) for v in trt.__version__.split(".")[:2])
    return major, minor


def import_tensorrt(plugin: bool = False):
    """``tensorrt`` (and ``tensorrt.plugin`` when ``plugin``), checked for version >= 10.9."""
    try:
        import tensorrt as trt
    except Exception as e:  # ImportError, or OSError from missing libnvinfer
        raise TensorRTUnavailable(f"TensorRT Python package not importable: {type(e).__name__}: {e}") from None
    if tensorrt_version(trt) < MIN_VERSION:
        raise TensorRTUnavailable(
            f"TensorRT {trt.__version__} is too old: poolexport's AOT plugins need TensorRT >= 10.9"
        )
    if not plugin:
        return trt
    try:
        import tensorrt.plugin as trtp
    except Exception as e:
        raise TensorRTUnavailable(f"tensorrt.plugin not importable: {type(e).__name__}: {e}") from None
    if not hasattr(trtp, "aot_impl") or not hasattr(trtp, "KernelLaunchParams"):
        raise TensorRTUnavailable(f"TensorRT {trt.__version__} has no ahead-of-time plugin support (tensorrt.plugin.aot_impl)")
    return trt, trtp
