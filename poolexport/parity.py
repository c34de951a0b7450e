"""Parity harness: run an exported ONNX model on every runtime present and compare with PyTorch.

The reference is PyTorch in float64 on the same inputs and weights (for an fp16 export: the
fp16-rounded weights and inputs, evaluated in float64), so every runtime, PyTorch itself
included, is measured against one precise answer. A runtime passes when

    max |y - ref| <= atol + rtol * max |ref|        (TOLERANCES, per dtype, stated once)

i.e. a normwise relative error of rtol with a small absolute floor for outputs near zero.
Runtimes: ``torch``, ``onnxruntime`` (with poolexport's custom-op library),
``onnxruntime-fallback`` (plain session: the local functions run), ``reference``
(``onnx.reference.ReferenceEvaluator``), ``openvino`` (CPU plugin, f32 pinned; the file's
local functions inlined first), ``onnxruntime-cuda`` and ``tensorrt``; an absent one is
skipped with the reason.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import onnx
import onnx.inliner
import torch


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float


# fp32: 1e-5 relative to the output's largest magnitude, plus a 1e-6 floor for outputs
# near zero. fp16: 1e-3 (about one fp16 ulp at 1.0, 9.8e-4): an fp16 graph rounds every
# intermediate to fp16, so a few ulps of drift through a network is expected; the floor is
# 1e-4, below fp16's resolution near 1.
TOLERANCES = {
    "float32": Tolerance(rtol=1e-5, atol=1e-6),
    "float16": Tolerance(rtol=1e-3, atol=1e-4),
}

RUNTIMES = ("torch", "onnxruntime", "onnxruntime-fallback", "reference", "openvino", "onnxruntime-cuda", "tensorrt")

# the runtime each export target is made for: a target is verified only when it ran and passed
TARGET_RUNTIME = {"ort": "onnxruntime", "portable": "onnxruntime-fallback", "tensorrt": "tensorrt"}

# onnx.reference.ReferenceEvaluator runs every op in NumPy, one node at a time: a
# ResNet-18 (11.7M parameters) took 80 s per input in float16 on the 2-core dev machine,
# the examples (< 0.5M) take under a second. Above this size it is skipped unless asked for.
REFERENCE_MAX_PARAMS = 2_000_000


@dataclass
class RuntimeResult:
    runtime: str
    status: str  # "pass", "fail", "skip" or "error"
    shape: tuple = ()
    max_abs: Optional[float] = None
    max_rel: Optional[float] = None
    seconds: Optional[float] = None
    reason: str = ""
    note: str = ""  # what the user should know beyond pass/fail (openvino: its default precision's error)


@dataclass
class ParityReport:
    dtype: str
    tolerance: Tolerance
    input_shapes: list
    results: list = field(default_factory=list)
    # the reference's precision: "float64", or "float32 (why float64 could not run)"
    reference: str = "float64"

    @property
    def passed(self) -> bool:
        """No runtime failed or errored (skips are fine) and at least one ran."""
        ran = [r for r in self.results if r.status != "skip"]
        return bool(ran) and all(r.status == "pass" for r in ran)

    def verified_on(self, runtime: str) -> bool:
        """``runtime`` ran on every input shape and passed each time."""
        rows = [r for r in self.results if r.runtime == runtime]
        return len(rows) == len(self.input_shapes) and all(r.status == "pass" for r in rows)

    def summary(self) -> list[RuntimeResult]:
        """One row per runtime: the worst result over the input shapes."""
        order = {"error": 3, "fail": 2, "pass": 1, "skip": 0}
        rows: dict[str, RuntimeResult] = {}
        for r in self.results:
            best = rows.get(r.runtime)
            if best is None:
                rows[r.runtime] = copy.copy(r)
                continue
            if order[r.status] > order[best.status]:
                best.status, best.reason = r.status, r.reason
            for name in ("max_abs", "max_rel"):
                if getattr(r, name) is not None:
                    setattr(best, name, max(getattr(best, name) or 0.0, getattr(r, name)))
            if r.seconds is not None:
                best.seconds = (best.seconds or 0.0) + r.seconds
        return list(rows.values())

    def to_dict(self) -> dict:
        return {
            "dtype": self.dtype,
            "tolerance": asdict(self.tolerance),
            "input_shapes": [list(s) for s in self.input_shapes],
            "reference": self.reference,
            "passed": self.passed,
            "verified_on": sorted({r.runtime for r in self.results if self.verified_on(r.runtime)}),
            "results": [asdict(r) | {"shape": list(r.shape)} for r in self.results],
        }


# ------------------------------------------------------------------ runtimes
class Skip(Exception):
    """A runtime that is not present here; the message says what is missing."""


def custom_op_library() -> str:
    try:
        from poolexport.ort import get_library_path  # the ONNX Runtime custom-op library's locator
    except ImportError as exc:
        raise Skip(f"poolexport's ONNX Runtime custom-op library is not part of this install ({exc})") from None
    try:
        return str(get_library_path())
    except (RuntimeError, OSError) as exc:
        raise Skip(_one_line(exc).split(": ", 1)[-1]) from None


def _ort_session(model: onnx.ModelProto, providers, library: Optional[str] = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if library:
        options.register_custom_ops_library(library)
    return ort.InferenceSession(model.SerializeToString(), options, providers=providers)


def _has_custom_nodes(model: onnx.ModelProto) -> bool:
    return any(n.domain == "poolexport" for n in model.graph.node)


def _needs_functions(model: onnx.ModelProto, runtime: str) -> None:
    if _has_custom_nodes(model) and not any(f.domain == "poolexport" for f in model.functions):
        raise Skip("the file carries poolexport nodes without local functions (tensorrt target)")  # the table names the runtime


def _tensorrt_runner(model: onnx.ModelProto, input_shapes) -> Callable[[np.ndarray], np.ndarray]:
    """Build an engine whose optimization profile spans the parity shapes, then run it."""
    try:
        from poolexport.tensorrt.runner import tensorrt_available
    except ImportError as exc:
        raise Skip(f"poolexport's TensorRT support is not part of this install ({exc})") from None
    why = tensorrt_available()
    if why:
        raise Skip(why)
    import tempfile
    from pathlib import Path

    from poolexport.tensorrt import TensorRTRunner, build_engine
    from poolexport.tensorrt.engine import parse_shapes

    name = model.graph.input[0].name
    lo = [min(s[i] for s in input_shapes) for i in range(len(input_shapes[0]))]
    hi = [max(s[i] for s in input_shapes) for i in range(len(input_shapes[0]))]
    dims = lambda s: "x".join(str(v) for v in s)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        path, plan = Path(tmp) / "model.onnx", Path(tmp) / "model.plan"
        onnx.save(model, str(path))
        fp16 = model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
        build_engine(path, plan, fp16=fp16, shapes=parse_shapes(f"{name}:{dims(lo)}/{dims(input_shapes[0])}/{dims(hi)}"))
        runner = TensorRTRunner(plan.read_bytes())
    return lambda x: runner.run(None, {name: x})[0]


class _OpenVINORunner:
    """The model on OpenVINO's CPU plugin at f32, and the same model at OpenVINO's default
    precision for the note: on CPUs with bf16 (AVX-512 BF16, AMX) the default computes in
    bf16, about 1e-3 relative, which misses the fp32 tolerance ~100x."""

    def __init__(self, model: onnx.ModelProto):
        try:
            import openvino as ov
        except ImportError as exc:
            raise Skip(f"the openvino package is not installed ({exc}; pip install 'poolexport[openvino]')") from None
        if _has_custom_nodes(model):
            # OpenVINO's ONNX frontend ignores model-local functions of a custom domain ("No
            # conversion rule found for operations: poolexport.SoftPool"): inline them, which
            # is what the portable target does at export
            _needs_functions(model, "openvino")
            model = onnx.inliner.inline_local_functions(model)
            kept = [i for i in model.opset_import if i.domain != "poolexport"]
            del model.opset_import[:]
            model.opset_import.extend(kept)
        ml = sorted({n.op_type for n in _all_nodes(model.graph) if n.domain == "ai.onnx.ml"})
        if ml:
            raise Skip(f"OpenVINO's ONNX frontend does not convert ai.onnx.ml {', '.join(ml)} (in the decomposition "
                       "of StochasticPool mode='sample'; export in eval mode for expectation)")
        core = ov.Core()
        ov_model = core.read_model(model.SerializeToString())
        self.pinned = core.compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        self.default = core.compile_model(ov_model, "CPU")
        self.default_precision = self.default.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # "f32", "bf16"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.pinned(x)[0]

    def note(self, inputs, refs, tol: Tolerance) -> str:
        """The error at OpenVINO's default precision over ``inputs``, against the tolerance."""
        worst_rel = worst_ratio = 0.0
        for x, ref in zip(inputs, refs):
            if isinstance(ref, Exception):
                continue
            abs_err, rel_err = errors(self.default(x)[0], ref)
            bound = tol.atol + tol.rtol * float(np.max(np.abs(ref), initial=0.0))
            worst_rel = max(worst_rel, rel_err)
            worst_ratio = max(worst_ratio, abs_err / bound)
        text = f"OpenVINO's default precision on this CPU is {self.default_precision}: max rel err {worst_rel:.2e}"
        if worst_ratio <= 1:
            return text + ", within the tolerance"
        return text + f", {worst_ratio:.1f}x the tolerance; pin INFERENCE_PRECISION_HINT=f32 for these numbers"


def _all_nodes(graph: onnx.GraphProto):
    """The graph's nodes and those of its subgraphs (If and Loop bodies)."""
    for node in graph.node:
        yield node
        for a in node.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _all_nodes(g)


def _runner(runtime: str, model: onnx.ModelProto, torch_model, input_shapes=()) -> Callable[[np.ndarray], np.ndarray]:
    """A function input -> output for ``runtime``, or Skip with the reason."""
    input_name = model.graph.input[0].name
    if runtime == "torch":
        def run(x):
            with torch.no_grad():
                return _first(torch_model(torch.from_numpy(x))).numpy()
        return run
    if runtime == "onnxruntime":
        session = _ort_session(model, ["CPUExecutionProvider"], custom_op_library())
        return lambda x: session.run(None, {input_name: x})[0]
    if runtime == "onnxruntime-fallback":
        _needs_functions(model, runtime)
        session = _ort_session(model, ["CPUExecutionProvider"])
        return lambda x: session.run(None, {input_name: x})[0]
    if runtime == "reference":
        _needs_functions(model, runtime)
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(model)
        return lambda x: evaluator.run(None, {input_name: x})[0]
    if runtime == "openvino":
        return _OpenVINORunner(model)
    if runtime == "onnxruntime-cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise Skip("no CUDAExecutionProvider in this onnxruntime build (or no GPU)")
        if not torch.cuda.is_available():
            raise Skip("no CUDA GPU on this machine")
        library = custom_op_library() if _has_custom_nodes(model) else None
        if library is None:
            _needs_functions(model, runtime)
        session = _ort_session(model, ["CUDAExecutionProvider", "CPUExecutionProvider"], library)
        if "CUDAExecutionProvider" not in session.get_providers():
            raise Skip("onnxruntime fell back to the CPU provider (no usable GPU)")
        return lambda x: session.run(None, {input_name: x})[0]
    if runtime == "tensorrt":
        return _tensorrt_runner(model, input_shapes)
    raise ValueError(f"runtime: unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")


def _first(y):
    if isinstance(y, (tuple, list)):
        y = y[0]
    return y.detach().float().cpu() if y.dtype == torch.bfloat16 else y.detach().cpu()


# ------------------------------------------------------------------ reference and metrics
def reference_outputs(torch_model, inputs: Sequence[np.ndarray], info: Optional[dict] = None) -> list:
    """PyTorch in float64 on the same weights (fp16 ones upcast) and inputs; an entry is
    the exception instead when PyTorch itself cannot run that input. ``info["reference"]``
    (when given) says which precision the reference ran in, and why not float64."""
    try:
        ref_model = copy.deepcopy(torch_model).double()
        with torch.no_grad():
            ref_model(torch.from_numpy(inputs[0]).double())
        cast = torch.float64
        precision = "float64"
    except Exception as exc:
        # a model that cannot run in float64 (a dtype baked into a trace or an exported
        # program): float32 instead, said in the report, since the torch row then compares
        # the model with itself
        ref_model, cast = copy.deepcopy(torch_model).float(), torch.float32
        precision = f"float32 (the model cannot run in float64: {_one_line(exc)})"
    if info is not None:
        info["reference"] = precision
    refs = []
    for x in inputs:
        try:
            with torch.no_grad():
                refs.append(_first(ref_model(torch.from_numpy(x).to(cast))).numpy().astype(np.float64))
        except Exception as exc:
            refs.append(exc)
    return refs


def errors(y: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(max abs error, max abs error / max |ref|): normwise relative, defined near zero."""
    y = np.asarray(y, dtype=np.float64)
    if y.shape != ref.shape:
        raise ValueError(f"output shape {y.shape} differs from PyTorch's {ref.shape}")
    if y.size == 0:
        return 0.0, 0.0
    if not np.all(np.isfinite(y)):
        return float("inf"), float("inf")
    abs_err = float(np.max(np.abs(y - ref)))
    scale = float(np.max(np.abs(ref)))
    return abs_err, abs_err / scale if scale > 0 else (0.0 if abs_err == 0 else float("inf"))


def check_parity(
    model: onnx.ModelProto,
    torch_model,
    input_shapes: Sequence[Sequence[int]],
    fp16: bool = False,
    runtimes: Sequence[str] = RUNTIMES,
    seed: int = 0,
    on_runtime: Optional[Callable[[str], None]] = None,
    reference_max_params: Optional[int] = None,
) -> ParityReport:
    """Compare ``model`` (ONNX) with ``torch_model`` on random inputs of each shape.

    ``reference_max_params``: skip the reference evaluator above this many parameters
    (None: always run it)."""
    dtype = "float16" if fp16 else "float32"
    tol = TOLERANCES[dtype]
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal(tuple(s)).astype(np.float16 if fp16 else np.float32) for s in input_shapes]
    torch_model = copy.deepcopy(torch_model)
    if isinstance(torch_model, torch.export.ExportedProgram):
        torch_model = torch_model.module()
    else:
        torch_model.eval()
    torch_model = torch_model.half() if fp16 else torch_model.float()
    info: dict = {}
    refs = reference_outputs(torch_model, inputs, info)
    report = ParityReport(dtype, tol, [tuple(s) for s in input_shapes], reference=info["reference"])
    params = _parameter_count(model)
    for runtime in runtimes:
        if on_runtime:
            on_runtime(runtime)
        try:
            if runtime == "reference" and reference_max_params is not None and params > reference_max_params:
                raise Skip(f"{params / 1e6:.1f}M parameters, above {reference_max_params / 1e6:g}M: the NumPy "
                           "evaluator would take minutes (name it in --runtimes to run it anyway)")
            run = _runner(runtime, model, torch_model, [tuple(s) for s in input_shapes])
        except Skip as why:
            report.results.append(RuntimeResult(runtime, "skip", reason=str(why)))
            continue
        except Exception as exc:  # a runtime that cannot even load the model fails the check
            report.results.append(RuntimeResult(runtime, "error", reason=_one_line(exc)))
            continue
        for x, ref in zip(inputs, refs):
            if isinstance(ref, Exception):
                report.results.append(RuntimeResult(runtime, "error", tuple(x.shape),
                                                    reason=f"PyTorch cannot run this shape: {_one_line(ref)}"))
                continue
            start = time.perf_counter()
            try:
                y = run(x)
                seconds = time.perf_counter() - start
                abs_err, rel_err = errors(y, ref)
            except Exception as exc:
                report.results.append(RuntimeResult(runtime, "error", tuple(x.shape), reason=_one_line(exc)))
                continue
            ok = abs_err <= tol.atol + tol.rtol * float(np.max(np.abs(ref), initial=0.0))
            report.results.append(RuntimeResult(runtime, "pass" if ok else "fail", tuple(x.shape), abs_err, rel_err,
                                                seconds))
        if hasattr(run, "note"):
            try:
                note = run.note(inputs, refs, tol)
            except Exception as exc:
                note = f"not measured: {_one_line(exc)}"
            for r in report.results:
                if r.runtime == runtime:
                    r.note = note
    return report


def _parameter_count(model: onnx.ModelProto) -> int:
    count = 0
    for t in model.graph.initializer:
        n = 1
        for d in t.dims:
            n *= d
        count += n
    return count


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


# ------------------------------------------------------------------ shapes
def dynamic_axes_of(model: onnx.ModelProto) -> set[int]:
    """Axes of the first graph input that have no fixed size."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return {i for i, d in enumerate(dims) if not d.HasField("dim_value")}


def other_shape(shape: Sequence[int], dynamic: set[int]) -> tuple[int, ...]:
    """A shape that differs from ``shape`` on every dynamic axis (batch + 1, spatial + a
    multiple of 8 so that networks downsampling by 8 still line up)."""
    out = list(shape)
    for i in dynamic:
        if i == 0:
            out[i] = shape[i] + 1
        elif i >= 2:
            out[i] = shape[i] + 8 * max(1, shape[i] // 32)
    return tuple(out)


def parity_shapes(model: onnx.ModelProto, export_shape: Sequence[int]) -> list[tuple[int, ...]]:
    """The export's own shape and, when the graph has dynamic axes, another one."""
    shapes = [tuple(export_shape)]
    other = other_shape(export_shape, dynamic_axes_of(model))
    if other != shapes[0]:
        shapes.append(other)
    return shapes
