"""Export a PyTorch model (module, TorchScript module or torch.export program) to ONNX.

``nn.Module`` and ``torch.export`` programs go through ``torch.onnx.export(dynamo=True)``
with our ``custom_translation_table``; TorchScript modules (which torch.export cannot
trace) go through the TorchScript exporter with ``register_custom_op_symbolic``. Both give
the same ``poolexport`` nodes. The target (``ort``/``portable``/``tensorrt``) is applied
after torch.onnx's optimizer, which would otherwise inline the local functions.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import sys
import tempfile
import warnings
from typing import Iterable

import onnx
import torch

from . import domain as D
from .targets import apply_target
from .translations import custom_translation_table, register_torchscript_symbolics

DYNAMIC_CHOICES = ("batch", "spatial")
INPUT_NAME, OUTPUT_NAME = "input", "output"


def dynamic_axes_for(rank: int, dynamic: Iterable[str]) -> dict[int, str]:
    """Axis index -> dim name for the requested dynamic groups (N, C, spatial... layout)."""
    dynamic = set(dynamic)
    bad = dynamic - set(DYNAMIC_CHOICES)
    if bad:
        raise ValueError(f"dynamic: unknown axis group(s) {sorted(bad)}; choose from {', '.join(DYNAMIC_CHOICES)}")
    axes = {}
    if "batch" in dynamic and rank >= 1:
        axes[0] = "batch"
    if "spatial" in dynamic:
        for i in range(2, rank):
            axes[i] = f"d{i - 1}"
    return axes


def program_static_axes(program) -> set[int]:
    """Axes of a torch.export program's first input that were exported with a fixed size."""
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in program.graph_signature.user_inputs:
            val = node.meta.get("val")
            if val is None:
                return set()
            return {i for i, s in enumerate(val.shape) if isinstance(s, int)}
    return set()


def prepare_module(model, fp16: bool):
    """An eval-mode module in the export dtype (programs become their unlifted module)."""
    if isinstance(model, torch.export.ExportedProgram):
        model = model.module()
    else:
        model.eval()
    if fp16:
        model = copy.deepcopy(model).half()  # never change the caller's module
    return model


@contextlib.contextmanager
def _quiet(verbose: bool):
    """Silence torch.onnx's progress lines, warnings and C++ graph dumps (file-descriptor
    level, since the TorchScript exporter prints from C++); on failure the captured text
    is dropped and the exception alone says what went wrong."""
    if verbose:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with tempfile.TemporaryFile() as sink, warnings.catch_warnings(), \
                contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for fd in saved:
            os.close(fd)


def _rename_dims(model: onnx.ModelProto, axes: dict[int, str]) -> None:
    """torch.export names dynamic dims s0, s1...; give the graph input/output readable names."""
    for vi in list(model.graph.input)[:1]:
        dims = vi.type.tensor_type.shape.dim
        for i, name in axes.items():
            if i < len(dims) and not dims[i].HasField("dim_value"):
                dims[i].dim_param = name


def export_model(
    model,
    example: torch.Tensor,
    target: str = "ort",
    dynamic: Iterable[str] = DYNAMIC_CHOICES,
    fp16: bool = False,
    opset: int = D.OPSET,
    exporter: str = "auto",
    verbose: bool = False,
) -> onnx.ModelProto:
    """Export ``model`` at ``example``'s shape; returns the ONNX model shaped for ``target``
    (``None``: as torch.onnx wrote it, for :func:`apply_target` on copies)."""
    if opset < D.OPSET:
        raise ValueError(f"opset: must be >= {D.OPSET}, got {opset}")
    x = example.to(torch.float16 if fp16 else torch.float32)
    axes = dynamic_axes_for(x.dim(), dynamic)
    if isinstance(model, torch.export.ExportedProgram):
        # a program's dynamism is fixed: its module asserts the static sizes
        static = program_static_axes(model)
        axes = {i: n for i, n in axes.items() if i not in static}
    module = prepare_module(model, fp16)
    if 0 in axes and x.shape[0] == 1:
        x = torch.cat([x, x])  # torch.export specializes size-1 dims: trace a dynamic batch at 2
    if exporter == "auto":
        exporter = "torchscript" if isinstance(module, torch.jit.ScriptModule) else "dynamo"
    with _quiet(verbose):
        if exporter == "dynamo":
            dyn = ({i: torch.export.Dim.AUTO for i in axes},) if axes else None
            program = torch.onnx.export(module, (x,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], dynamic_shapes=dyn,
                                        custom_translation_table=custom_translation_table(), verbose=False)
            proto = program.model_proto
        elif exporter == "torchscript":
            register_torchscript_symbolics(opset)
            buf = io.BytesIO()
            torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], custom_opsets={D.DOMAIN: D.VERSION},
                              dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: {0: "batch"} if 0 in axes else {}})
            proto = onnx.load_from_string(buf.getvalue())
        else:
            raise ValueError(f"exporter: must be auto, dynamo or torchscript, got {exporter!r}")
    _rename_dims(proto, axes)
    return proto if target is None else apply_target(proto, target)
