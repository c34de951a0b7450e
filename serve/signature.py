"""What a served model looks like from outside: tensor names, dtypes and dims.

Read once from the ONNX graph (or a TensorRT engine's bindings) and used by both the
embedded server and the Triton repository writer, so the two never disagree.
"""
from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

# Triton's data-type names (model_config.proto DataType without the TYPE_ prefix).
_NP_TO_TRITON = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "UINT8", np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32", np.dtype(np.uint64): "UINT64",
    np.dtype(np.int8): "INT8", np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32", np.dtype(np.int64): "INT64",
    np.dtype(np.float16): "FP16", np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
}


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: np.dtype
    dims: tuple[int, ...]  # full dims, -1 where dynamic (symbolic or unknown)
    # the graph's names for its dims ("batch", "height"; "" where none); for `--dim`
    dim_names: tuple[str, ...] = dataclasses.field(default=(), compare=False)

    @property
    def triton_dtype(self) -> str:
        try:
            return _NP_TO_TRITON[np.dtype(self.dtype)]
        except KeyError:
            raise ValueError(f"serve: tensor {self.name!r} has dtype {self.dtype}, "
                             "which Triton cannot carry") from None


@dataclasses.dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def batchable(self) -> bool:
        """Triton batching needs a dynamic leading dim on every input and output."""
        tensors = self.inputs + self.outputs
        return all(len(t.dims) >= 1 and t.dims[0] == -1 for t in tensors)

    def dims(self, spec: TensorSpec, max_batch_size: int) -> tuple[int, ...]:
        """Dims as Triton's config wants them: without the batch dim when batching."""
        return spec.dims[1:] if max_batch_size > 0 else spec.dims


def _onnx_dims(value_info) -> tuple[int, ...]:
    shape = value_info.type.tensor_type.shape
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in shape.dim)


def _onnx_dim_names(value_info) -> tuple[str, ...]:
    shape = value_info.type.tensor_type.shape
    return tuple(d.dim_param if d.HasField("dim_param") else "" for d in shape.dim)


def onnx_signature(path: str | os.PathLike) -> Signature:
    """Graph inputs (minus initializers) and outputs of an ONNX file."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    model = onnx.load(os.fspath(path), load_external_data=False)
    g = model.graph
    inits = {i.name for i in g.initializer}

    def spec(vi):
        if not vi.type.HasField("tensor_type"):
            raise ValueError(f"serve: graph value {vi.name!r} is not a tensor; only "
                             "tensor inputs and outputs can be served")
        dtype = np.dtype(tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
        return TensorSpec(vi.name, dtype, _onnx_dims(vi), _onnx_dim_names(vi))

    ins = tuple(spec(vi) for vi in g.input if vi.name not in inits)
    outs = tuple(spec(vi) for vi in g.output)
    if not ins or not outs:
        raise ValueError(f"serve: model {os.fspath(path)!r} has no inputs or no outputs")
    return Signature(ins, outs)


def default_model_name(path: str | os.PathLike) -> str:
    """File stem made safe for a URL path segment and a repository folder name."""
    stem = os.path.splitext(os.path.basename(os.fspath(path)))[0]
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", stem).strip(".") or "model"
    return name
