"""Run a serialized TensorRT engine: the parity harness's ``tensorrt`` runtime.

Engines built from poolexport's AOT plugins carry the kernels as PTX and need neither
Python nor our plugin registration at run time; buffers are torch CUDA tensors.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from ._import import TensorRTUnavailable, import_tensorrt


class TensorRTRunner:
    """``runner(feeds) -> {output name: np.ndarray}``, with ``input_names``/``output_names``."""

    name = "tensorrt"

    def __init__(self, engine, verbose: bool = False):
        trt = import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise TensorRTUnavailable("no CUDA device: the tensorrt runtime needs a GPU")
        self._trt, self._torch = trt, torch
        data = Path(engine).read_bytes() if isinstance(engine, (str, Path)) else bytes(engine)
        self._logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine (built by another TensorRT version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = [self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names]
        self.input_names = [n for n, i in zip(names, is_input) if i]
        self.output_names = [n for n, i in zip(names, is_input) if not i]

    def _dtype(self, name: str):
        return self._torch.from_numpy(np.empty(0, dtype=self._trt.nptype(self.engine.get_tensor_dtype(name)))).dtype

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        missing = set(self.input_names) - set(feeds)
        if missing:
            raise ValueError(f"tensorrt: missing inputs {sorted(missing)}")
        keep = []
        for name in self.input_names:
            x = torch.as_tensor(np.ascontiguousarray(feeds[name])).to("cuda", self._dtype(name)).contiguous()
            keep.append(x)
            self.context.set_input_shape(name, tuple(x.shape))
            self.context.set_tensor_address(name, x.data_ptr())
        outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            y = torch.empty(shape, dtype=self._dtype(name), device="cuda")
            outputs[name] = y
            self.context.set_tensor_address(name, y.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("tensorrt: execute_async_v3 failed")
        stream.synchronize()
        return {n: y.cpu().numpy() for n, y in outputs.items()}

    def run(self, output_names, feeds):
        """onnxruntime.InferenceSession-style call: list of outputs (all when None)."""
        out = self(feeds)
        return [out[n] for n in (output_names or self.output_names)]


def tensorrt_available() -> str | None:
    """None when the ``tensorrt`` runtime can run here, else the reason it cannot."""
    try:
        import_tensorrt(plugin=True)
    except TensorRTUnavailable as e:
        return str(e)
    try:
        import torch
    except ImportError as e:
        return f"torch not importable: {e}"
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None
