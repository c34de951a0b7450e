"""Back ends behind the server: an ONNX Runtime session or a TensorRT engine.

Both expose the same tiny surface, `signature` and `run(feeds) -> dict`, so the server
and the benchmark do not care which one they hold.
"""
from __future__ import annotations

import os

import numpy as np

from .signature import Signature, TensorSpec, onnx_signature


class BackendUnavailable(RuntimeError):
    """The requested back end cannot run here; the message is one line for the CLI."""


def custom_op_library() -> str | None:
    """Path of poolexport's ONNX Runtime custom-op library, or None if it is not built."""
    try:
        import poolexport
        get = getattr(poolexport, "get_library_path", None)
        path = get() if get is not None else None
    except (ImportError, OSError, RuntimeError, FileNotFoundError):
        return None
    return os.fspath(path) if path and os.path.exists(os.fspath(path)) else None


class OrtBackend:
    """An ONNX Runtime CPU (or CUDA when available) session with our library registered.

    Without the library a model still loads when its custom nodes carry model-local
    function fallbacks (ONNX Runtime inlines them).
    """

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, providers=None, intra_op_threads: int = 0,
                 allow_spinning: bool = True):
        import onnxruntime as ort

        self.path = os.fspath(path)
        so = ort.SessionOptions()
        if intra_op_threads:
            so.intra_op_num_threads = intra_op_threads
        if not allow_spinning:
            # Spinning worker threads burn the cores the server's own threads need.
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.library = custom_op_library()
        if self.library:
            so.register_custom_ops_library(self.library)
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                         if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(self.path, so, providers=providers)
        self.signature = onnx_signature(self.path)
        self._out_names = [o.name for o in self.signature.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(self._out_names, feeds)
        return dict(zip(self._out_names, outs))


class TensorRTBackend:
    """A serialized TensorRT engine, run through poolexport.tensorrt's runner.

    Expected runner interface (poolexport.tensorrt.runner.Runner): constructed from the
    plan path, loads our plugins itself, has `inputs`/`outputs` as sequences of
    (name, numpy dtype, dims with -1 for dynamic) and `run(feeds) -> dict`.
    """

    name = "tensorrt"

    def __init__(self, path: str | os.PathLike):
        try:
            import tensorrt  # noqa: F401
        except Exception as e:  # ImportError, or an OSError from missing libraries
            raise BackendUnavailable(
                f"serve: --backend tensorrt needs TensorRT, which is not importable here ({e})"
            ) from None
        try:
            from poolexport.tensorrt.runner import Runner
        except ImportError:
            raise BackendUnavailable(
                "serve: --backend tensorrt needs poolexport.tensorrt.runner.Runner, "
                "which this poolexport does not provide") from None
        self.path = os.fspath(path)
        self.runner = Runner(self.path)
        specs = lambda seq: tuple(TensorSpec(n, np.dtype(d), tuple(s)) for n, d, s in seq)  # noqa: E731
        self.signature = Signature(specs(self.runner.inputs), specs(self.runner.outputs))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runner.run(feeds)


def load_backend(path: str | os.PathLike, backend: str = "onnxruntime", **kwargs):
    if backend == "onnxruntime":
        return OrtBackend(path, **kwargs)
    if backend == "tensorrt":
        return TensorRTBackend(path)
    raise ValueError(f"serve: backend must be 'onnxruntime' or 'tensorrt', got {backend!r}")
