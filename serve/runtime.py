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
                 allow_spinning: bool = True, busy_intra_op_threads: int = 0):
        """busy_intra_op_threads > 0 (CPU only): a second session of the model with that many
        threads for `run_busy` (the weights are held twice)."""
        import onnxruntime as ort

        from poolexport._untrusted import check_onnx_external_data

        self.path = os.fspath(path)
        check_onnx_external_data(self.path)  # ONNX Runtime would read data from outside its folder
        self.library = custom_op_library()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                         if p in ort.get_available_providers()]

        def session(threads):
            so = ort.SessionOptions()
            if threads:
                so.intra_op_num_threads = threads
            if not allow_spinning:
                # Spinning worker threads burn the cores the server's own threads need.
                so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            if self.library:
                so.register_custom_ops_library(self.library)
            return ort.InferenceSession(self.path, so, providers=providers)

        self.session = session(intra_op_threads)
        self.busy_session = None
        if (busy_intra_op_threads > 0 and busy_intra_op_threads != intra_op_threads
                and self.session.get_providers()[0] == "CPUExecutionProvider"):
            self.busy_session = session(busy_intra_op_threads)
        self.signature = onnx_signature(self.path)
        self._out_names = [o.name for o in self.signature.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(self._out_names, feeds)
        return dict(zip(self._out_names, outs))

    def run_busy(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A run while other requests wait: on the busy session when there is one. Its
        fewer threads cost less CPU per row (no hand-offs between ONNX Runtime's threads:
        mobilenet_se 224 at batch 8, about 2.0 ms of CPU per image on one thread against
        2.45 on two) and leave the other cores to the front ends receiving the next batch."""
        session = self.busy_session or self.session
        outs = session.run(self._out_names, feeds)
        return dict(zip(self._out_names, outs))


class TensorRTBackend:
    """A serialized TensorRT engine through poolexport.tensorrt's TensorRTRunner.

    Engines built from poolexport's AOT plugins carry their kernels, so nothing is
    registered here. Needs TensorRT >= 10.9 and a CUDA device.
    """

    name = "tensorrt"

    def __init__(self, path: str | os.PathLike):
        try:
            from poolexport.tensorrt import TensorRTUnavailable
            from poolexport.tensorrt._import import import_tensorrt
            from poolexport.tensorrt.runner import TensorRTRunner
        except ImportError as e:
            raise BackendUnavailable(f"serve: --backend tensorrt needs poolexport.tensorrt ({e})") from None
        try:
            trt = import_tensorrt()
            self.runner = TensorRTRunner(os.fspath(path))
        except TensorRTUnavailable as e:
            raise BackendUnavailable(f"serve: --backend tensorrt needs TensorRT: {e}") from None
        self.path = os.fspath(path)
        engine = self.runner.engine

        def spec(name):
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            return TensorSpec(name, dtype, tuple(int(d) for d in engine.get_tensor_shape(name)))

        self.signature = Signature(tuple(spec(n) for n in self.runner.input_names),
                                   tuple(spec(n) for n in self.runner.output_names))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runner(feeds)


def load_backend(path: str | os.PathLike, backend: str = "onnxruntime", **kwargs):
    if backend == "onnxruntime":
        return OrtBackend(path, **kwargs)
    if backend == "tensorrt":
        return TensorRTBackend(path)
    raise ValueError(f"serve: backend must be 'onnxruntime' or 'tensorrt', got {backend!r}")
