"""Build a TensorRT engine from a poolexport ONNX model (``poolexport build-engine``).

TensorRT 10.x (>= 10.9) and 11.x: the network is parsed by TensorRT's ONNX parser after
our plugins are registered and the model's poolexport nodes are shaped for it
(``onnx_prep.prepare_onnx``). Precision:

* TensorRT 11 builds strongly typed networks only: an fp16 engine comes from an
  fp16-typed graph (export the model in float16); ``fp16=True`` on a float32 graph is an
  error rather than a silent float32 engine.
* TensorRT 10: a float16 graph is built strongly typed as well; ``fp16=True`` on a
  float32 graph sets ``BuilderFlag.FP16`` (weakly typed; TensorRT picks per layer, our
  plugins offer both precisions).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import onnx

from ._import import import_tensorrt, tensorrt_version
from .onnx_prep import prepare_onnx

ShapeRange = tuple[Sequence[int], Sequence[int], Sequence[int]]


def parse_shapes(spec: str | None) -> dict[str, ShapeRange]:
    """``name:1x3x32x32/4x3x64x64/8x3x64x64,other:...`` -> {name: (min, opt, max)}.

    One shape instead of three means min = opt = max.
    """
    out: dict[str, ShapeRange] = {}
    if not spec:
        return out
    for item in spec.split(","):
        name, sep, dims = item.strip().rpartition(":")
        if not sep or not name:
            raise ValueError(f"--shapes: expected NAME:MIN/OPT/MAX, got {item!r}")
        try:
            parts = [tuple(int(d) for d in p.split("x")) for p in dims.split("/")]
        except ValueError:
            raise ValueError(f"--shapes: dimensions must be integers joined by 'x', got {dims!r}") from None
        if len(parts) == 1:
            parts = parts * 3
        if len(parts) != 3 or len({len(p) for p in parts}) != 1:
            raise ValueError(f"--shapes: {name} needs 1 or 3 shapes of equal rank, got {dims!r}")
        if any(not (a <= b <= c) for a, b, c in zip(*parts)):
            raise ValueError(f"--shapes: {name} needs min <= opt <= max on every axis, got {dims!r}")
        out[name] = tuple(parts)  # type: ignore[assignment]
    return out


def parse_size(text: str | int | None) -> int | None:
    """``4G``, ``512M``, ``1048576`` -> bytes."""
    if text is None or isinstance(text, int):
        return text
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().rstrip("B") or "0"
    try:
        return int(float(t[:-1]) * units[t[-1]]) if t[-1] in units else int(t)
    except ValueError:
        raise ValueError(f"--workspace: expected a size such as 512M or 4G, got {text!r}") from None


def graph_is_fp16(model: onnx.ModelProto) -> bool:
    floats = [vi.type.tensor_type.elem_type for vi in model.graph.input
              if vi.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    return bool(floats) and all(t == onnx.TensorProto.FLOAT16 for t in floats)


@dataclass
class BuildReport:
    path: Path
    tensorrt_version: str
    strongly_typed: bool
    fp16_flag: bool
    size_bytes: int


def _progress_monitor(trt, callback: Callable[[str, str, int, int], None]):
    """An ``IProgressMonitor`` forwarding (event, phase, step, total) to ``callback``."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.totals: dict[str, int] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.totals[phase_name] = num_steps
            callback("start", phase_name, 0, num_steps)

        def step_complete(self, phase_name, step):
            callback("step", phase_name, step + 1, self.totals.get(phase_name, 0))
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            callback("finish", phase_name, self.totals.get(phase_name, 0), self.totals.get(phase_name, 0))

    return Monitor()


def build_engine(onnx_path, output, fp16: bool = False, shapes: Mapping[str, ShapeRange] | None = None,
                 workspace: int | None = None, progress: Callable | None = None, verbose: bool = False) -> BuildReport:
    """Parse ``onnx_path`` with our plugins registered and write a serialized engine."""
    from .._untrusted import check_onnx_external_data

    check_onnx_external_data(onnx_path)  # the parser would read data from outside its folder
    trt = import_tensorrt()
    from .plugins import register_plugins

    register_plugins()
    model = prepare_onnx(onnx.load(str(onnx_path)))
    half_graph = graph_is_fp16(model)
    major, _ = tensorrt_version(trt)
    if fp16 and major >= 11 and not half_graph:
        raise ValueError(
            "--fp16: TensorRT 11 builds strongly typed networks, so an fp16 engine needs a float16 ONNX graph; "
            "export the model in float16"
        )
    strongly_typed = major >= 11 or half_graph or not fp16
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    st_flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed and st_flag is not None:
        flags |= 1 << int(st_flag)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.SerializeToString(), str(Path(onnx_path).resolve())):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if workspace:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    fp16_flag = bool(fp16 and not strongly_typed)
    if fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    shapes = dict(shapes or {})
    profile = None
    for i in range(network.num_inputs):
        t = network.get_input(i)
        dims = tuple(t.shape)
        if t.name in shapes:
            lo, opt, hi = shapes.pop(t.name)
            if len(lo) != len(dims) or any(d >= 0 and d != v for d, v in zip(dims, lo)):
                raise ValueError(f"--shapes: {t.name} has shape {list(dims)} in the model, got {list(lo)}")
            profile = profile or builder.create_optimization_profile()
            profile.set_shape(t.name, lo, opt, hi)
        elif any(d < 0 for d in dims):
            raise ValueError(f"--shapes: input {t.name} has dynamic shape {list(dims)}; give NAME:MIN/OPT/MAX")
    if shapes:
        raise ValueError(f"--shapes: no input named {', '.join(shapes)} in the model")
    if profile is not None:
        config.add_optimization_profile(profile)
    if progress is not None and hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = monitor = _progress_monitor(trt, progress)  # noqa: F841 (kept alive)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (rerun with --verbose)")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    data = bytes(serialized)
    output.write_bytes(data)
    return BuildReport(output, trt.__version__, strongly_typed, fp16_flag, len(data))
