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
from typing import Callable, Iterable, Optional

import numpy as np
import onnx
import torch

from . import domain as D
from .targets import apply_target
from .translations import custom_translation_table, register_torchscript_symbolics

DYNAMIC_CHOICES = ("batch", "spatial")
INPUT_NAME, OUTPUT_NAME = "input", "output"
# what export_model's progress callback is told as each step starts
STEPS = {
    "export": "export: torch.onnx ({exporter} exporter)",
    "optimize": "optimize: onnxscript optimizer",
    "target": "target {target}: poolexport nodes, node names, metadata",
}


SPATIAL_NAMES = {1: ("length",), 2: ("height", "width"), 3: ("depth", "height", "width")}


def dynamic_axes_for(rank: int, dynamic: Iterable[str]) -> dict[int, str]:
    """Axis index -> dim name for the requested dynamic groups (N, C, spatial... layout):
    ``batch``, then ``length`` (1-D), ``height``/``width`` (2-D) or ``depth``/``height``/``width``."""
    dynamic = set(dynamic)
    bad = dynamic - set(DYNAMIC_CHOICES)
    if bad:
        raise ValueError(f"dynamic: unknown axis group(s) {sorted(bad)}; choose from {', '.join(DYNAMIC_CHOICES)}")
    axes = {}
    if "batch" in dynamic and rank >= 1:
        axes[0] = "batch"
    if "spatial" in dynamic:
        names = SPATIAL_NAMES.get(rank - 2) or tuple(f"d{i}" for i in range(1, rank - 1))
        for i in range(2, rank):
            axes[i] = names[i - 2]
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


def training_flags(model) -> list:
    """(module, training) of every submodule, for :func:`restore_training`."""
    modules = getattr(model, "modules", None)
    return [(m, m.training) for m in modules()] if callable(modules) else []


def restore_training(flags: list) -> None:
    for m, training in flags:
        m.training = training


def prepare_module(model, fp16: bool):
    """An eval-mode module in the export dtype (programs become their unlifted module).
    This puts the caller's module in eval mode: :func:`export_model` restores it."""
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


def _flatten_reshapes(model: onnx.ModelProto) -> None:
    """Reshape(x, [-1, K]) of an x shaped (N, ...) with prod(...) == K is Flatten(x, axis=1).

    torch.export writes a classifier's flatten this way (the batch size folded into -1);
    ONNX shape inference cannot carry a symbolic batch through -1, Flatten carries it, so
    tools that re-infer shapes (onnxsim, strict checkers) keep the ``batch`` dim. Same
    values, same order: both are row-major."""
    from onnx import numpy_helper

    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.data_type == onnx.TensorProto.INT64}
    try:
        shapes = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return
    known = {vi.name: vi.type.tensor_type.shape.dim for vi in
             list(shapes.graph.value_info) + list(shapes.graph.input) + list(shapes.graph.output)}
    for i, node in enumerate(graph.node):
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            continue
        target = consts.get(node.input[1])
        dims = known.get(node.input[0])
        if target is None or target.shape != (2,) or target[0] != -1 or dims is None or len(dims) < 2:
            continue
        rest = [d.dim_value if d.HasField("dim_value") else None for d in dims[1:]]
        if None in rest or int(np.prod(rest)) != int(target[1]):
            continue  # (allowzero only changes what a 0 in the target means; K > 0 here)
        flat = onnx.helper.make_node("Flatten", [node.input[0]], list(node.output), name=node.name, axis=1)
        graph.node.remove(node)
        graph.node.insert(i, flat)


def _name_dims(model: onnx.ModelProto, axes: dict[int, str]) -> None:
    """Readable dim names everywhere, and fixed dims where they are fixed.

    torch.export names dynamic dims s0, s77...; the TorchScript exporter invents names such
    as ``Gemmoutput_dim_1`` for sizes it did not propagate. The input's dynamic dims get the
    names of ``axes``, every other use of the same symbol follows, and an output dim whose
    symbol is not an input's is replaced by what ONNX shape inference proves (e.g. a
    classifier's 1000), so a Triton config gets exact dims.
    """
    graph = model.graph
    rename = {}
    for vi in list(graph.input)[:1]:
        dims = vi.type.tensor_type.shape.dim
        for i, name in axes.items():
            if i < len(dims) and not dims[i].HasField("dim_value"):
                if dims[i].dim_param:
                    rename[dims[i].dim_param] = name
                dims[i].dim_param = name
    values = list(graph.input) + list(graph.output) + list(graph.value_info)
    for vi in values:
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in rename:
                d.dim_param = rename[d.dim_param]
    known = set(rename.values()) | set(axes.values())
    loose = [(i, j) for i, vi in enumerate(graph.output) for j, d in enumerate(vi.type.tensor_type.shape.dim)
             if not d.HasField("dim_value") and d.dim_param not in known]
    if not loose:
        return
    # infer without the exporter's names: shape inference keeps a name already written
    # (the TorchScript exporter's ``SoftPooloutput_dim_2`` on the output and on every value
    # before it) over the one it proves (``height``), so those are cleared for the probe
    # and restored where inference proves nothing better
    kept_info = onnx.GraphProto()
    kept_info.value_info.extend(graph.value_info)
    names = {(i, j): graph.output[i].type.tensor_type.shape.dim[j].dim_param for i, j in loose}
    del graph.value_info[:]
    for i, j in loose:
        graph.output[i].type.tensor_type.shape.dim[j].ClearField("dim_param")
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:
        inferred = None  # names stay as the exporter wrote them
    finally:
        graph.value_info.extend(kept_info.value_info)
        for (i, j), name in names.items():
            if name:
                graph.output[i].type.tensor_type.shape.dim[j].dim_param = name
    if inferred is None:
        return
    for i, j in loose:
        dims = inferred.graph.output[i].type.tensor_type.shape.dim
        if j < len(dims):
            d, src = graph.output[i].type.tensor_type.shape.dim[j], dims[j]
            if src.HasField("dim_value"):
                d.dim_value = src.dim_value
            elif src.dim_param in known:
                d.dim_param = src.dim_param


def export_model(
    model,
    example: torch.Tensor,
    target: str = "ort",
    dynamic: Iterable[str] = DYNAMIC_CHOICES,
    fp16: bool = False,
    opset: int = D.OPSET,
    exporter: str = "auto",
    verbose: bool = False,
    progress: Optional[Callable[[str], None]] = None,
) -> onnx.ModelProto:
    """Export ``model`` at ``example``'s shape; returns the ONNX model shaped for ``target``
    (``None``: as torch.onnx wrote it, for :func:`apply_target` on copies). The model is
    exported in eval mode; the caller's module gets its own train/eval flags back.
    ``progress(step)`` is called as each step starts (:data:`STEPS` names them)."""
    step = progress or (lambda _text: None)
    if opset < D.OPSET:
        raise ValueError(f"opset: must be >= {D.OPSET}, got {opset}")
    x = example.to(torch.float16 if fp16 else torch.float32)
    axes = dynamic_axes_for(x.dim(), dynamic)
    if isinstance(model, torch.export.ExportedProgram):
        # a program's dynamism is fixed: its module asserts the static sizes
        static = program_static_axes(model)
        axes = {i: n for i, n in axes.items() if i not in static}
    flags = training_flags(model)  # the caller's module leaves as it came
    try:
        proto = _export(model, x, axes, fp16, opset, exporter, verbose, step)
    finally:
        restore_training(flags)
    _flatten_reshapes(proto)
    _name_dims(proto, axes)
    if target is None:
        return proto
    step(STEPS["target"].format(target=target))
    return apply_target(proto, target)


def _export(model, x, axes, fp16, opset, exporter, verbose, step) -> onnx.ModelProto:
    module = prepare_module(model, fp16)
    if 0 in axes and x.shape[0] == 1:
        x = torch.cat([x, x])  # torch.export specializes size-1 dims: trace a dynamic batch at 2
    if exporter == "auto":
        exporter = "torchscript" if isinstance(module, torch.jit.ScriptModule) else "dynamo"
    with _quiet(verbose):
        if exporter == "dynamo":
            step(STEPS["export"].format(exporter=exporter))
            dyn = ({i: torch.export.Dim.AUTO for i in axes},) if axes else None
            program = torch.onnx.export(module, (x,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], dynamic_shapes=dyn, optimize=False,
                                        custom_translation_table=custom_translation_table(), verbose=False)
            step(STEPS["optimize"])
            program.optimize()  # what optimize=True runs, as a step of its own (same file)
            proto = program.model_proto
        elif exporter == "torchscript":
            step(STEPS["export"].format(exporter=exporter))
            register_torchscript_symbolics(opset)
            buf = io.BytesIO()
            torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], custom_opsets={D.DOMAIN: D.VERSION},
                              dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: {0: "batch"} if 0 in axes else {}})
            proto = onnx.load_from_string(buf.getvalue())
        else:
            raise ValueError(f"exporter: must be auto, dynamo or torchscript, got {exporter!r}")
    return proto
