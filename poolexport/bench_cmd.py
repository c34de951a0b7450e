"""``poolexport bench FILE.onnx``: latency and throughput on each runtime present.

Runtimes, each skipped with its reason when it cannot run the file here:

* ``onnxruntime+poolexport``: ONNX Runtime on the CPU with poolexport's custom-op library
  (the file's poolexport nodes run the library's kernels);
* ``onnxruntime``: plain ONNX Runtime, no library: a file without poolexport nodes (the
  portable target), or an ``ort``-target file through its fallback functions;
* ``onnxruntime-cuda``: ONNX Runtime's CUDA provider (with the library for poolexport
  nodes) when this onnxruntime build has it and a GPU is there;
* ``openvino``: OpenVINO's CPU plugin at f32 (the precision parity checks), for a file
  with standard ops only.

Inputs are random, of each input's element type. A dynamic first dim is the batch, set from
``--batch``; other dynamic dims come from ``--dim NAME=SIZE``. A fixed batch refuses other
``--batch`` values. Each (runtime, batch) runs ``--warmup`` untimed then ``--iters`` timed
calls: latency median and p90, throughput = batch / median latency.

Exit codes: 0 every runtime that was tried ran, 1 one of them failed to load or run the
file (its row says why), 2 bad input.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

NAME = "bench"
HELP = "measure latency and throughput of an ONNX file on each runtime present (ONNX Runtime, OpenVINO)"

RUNTIMES = ("onnxruntime+poolexport", "onnxruntime", "onnxruntime-cuda", "openvino")
DEFAULT_BATCHES = (1, 8)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, metavar="FILE.onnx", help="ONNX file to run")
    p.add_argument("--batch", metavar="N[,N...]", default=None,
                   help="batch sizes for a dynamic first dim (default: 1,8; a fixed batch: that size only)")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE", dest="dims",
                   help="size of another dynamic dim, by its name in the file (height=224); repeatable, or "
                        "comma-separated (height=224,width=224)")
    p.add_argument("--warmup", type=int, default=10, metavar="N", help="untimed runs first (default 10)")
    p.add_argument("--iters", type=int, default=50, metavar="N", help="timed runs per runtime and batch (default 50)")
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="intra-op threads for ONNX Runtime and OpenVINO (default 0: the runtime's own choice)")
    p.add_argument("--runtimes", default=None, metavar="LIST",
                   help=f"only these, comma-separated (default: all of {', '.join(RUNTIMES)})")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON to OUT")


# ------------------------------------------------------------------ arguments
def parse_batches(text: Optional[str]) -> Optional[tuple[int, ...]]:
    from .cli import UsageError

    if text is None:
        return None
    try:
        sizes = tuple(int(p) for p in text.replace(" ", "").split(",") if p)
    except ValueError:
        raise UsageError(f"--batch: expected sizes such as 1,8, got {text!r}") from None
    if not sizes or any(s <= 0 for s in sizes):
        raise UsageError(f"--batch: expected positive sizes such as 1,8, got {text!r}")
    return tuple(dict.fromkeys(sizes))


def parse_dims(items: list) -> dict:
    from .cli import UsageError

    dims = {}
    for item in items:
        for part in (p.strip() for p in item.split(",")):
            if not part:
                continue
            name, sep, size = part.partition("=")
            try:
                value = int(size)
            except ValueError:
                value = 0
            if not sep or not name or value <= 0:
                raise UsageError(f"--dim: expected NAME=SIZE with a positive size, such as height=224, got {part!r}")
            dims[name.strip()] = value
    return dims


@dataclass
class InputSpec:
    name: str
    dtype: str  # numpy dtype name
    dims: list  # ints, dim names (str) or None (no name)


def input_specs(model) -> list:
    from .inspect_cmd import _value

    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        v = _value(vi)
        specs.append(InputSpec(v["name"], v["dtype"], v["dims"]))
    return specs


def shapes_for(specs: list, batches, dims: dict) -> tuple[list, list]:
    """(batch sizes, [{input name: shape} per batch]); UsageError when a batch does not fit
    a fixed batch dim or a dynamic dim has no size."""
    from .cli import UsageError

    fixed = {s.dims[0] for s in specs if s.dims and isinstance(s.dims[0], int)}
    dynamic_batch = any(s.dims and not isinstance(s.dims[0], int) for s in specs)
    if fixed and (dynamic_batch or len(fixed) > 1):
        fixed = set()  # inputs disagree on the first dim: it is not a shared batch
    if fixed:
        (size,) = fixed
        if batches is not None and set(batches) != {size}:
            others = ", ".join(str(b) for b in batches if b != size)
            raise UsageError(f"--batch: the file's inputs have a fixed batch of {size}; it cannot run batch {others} "
                             "(export with --dynamic batch for other sizes)")
        batches = (size,)
    elif batches is None:
        batches = DEFAULT_BATCHES
    unused = set(dims)
    per_batch = []
    for b in batches:
        shapes = {}
        for s in specs:
            if s.dims is None:
                raise UsageError(f"input {s.name!r}: the file does not give its rank; cannot make an input for it")
            shape = []
            for axis, d in enumerate(s.dims):
                if isinstance(d, int):
                    shape.append(d)
                elif axis == 0 and dynamic_batch:
                    shape.append(b)
                elif d is not None and d in dims:
                    unused.discard(d)
                    shape.append(dims[d])
                else:
                    label = repr(d) if d else f"{axis} (no name)"
                    hint = f"--dim {d}=SIZE" if d else "a named dim (the file gives this one no name)"
                    raise UsageError(f"input {s.name!r}: dim {label} is dynamic; give its size with {hint}")
            shapes[s.name] = tuple(shape)
        per_batch.append(shapes)
    if unused:
        raise UsageError(f"--dim: the file's inputs have no dynamic dim named {sorted(unused)[0]!r}")
    return list(batches), per_batch


def random_inputs(specs: list, shapes: dict, seed: int = 0) -> dict:
    import numpy as np

    rng = np.random.default_rng(seed)
    feeds = {}
    for s in specs:
        shape = shapes[s.name]
        dtype = np.dtype(s.dtype) if s.dtype not in ("bfloat16",) else None
        if dtype is None:
            raise ValueError(f"input {s.name!r}: element type {s.dtype} has no NumPy random generator here")
        if dtype.kind == "f":
            feeds[s.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            feeds[s.name] = rng.integers(0, 10, size=shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[s.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise ValueError(f"input {s.name!r}: element type {s.dtype} is not supported by bench")
    return feeds


# ------------------------------------------------------------------ runtimes
class Skip(Exception):
    """This runtime cannot run the file here; the message says why."""


def _ort_options(threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    return so


def _ort_runner(path: Path, providers: list, library: bool, threads: int):
    import onnxruntime as ort

    so = _ort_options(threads)
    if library:
        from .ort import get_library_path

        try:
            so.register_custom_ops_library(get_library_path())
        except RuntimeError as exc:
            raise Skip(str(exc).splitlines()[0]) from None
    session = ort.InferenceSession(os.fspath(path), sess_options=so, providers=providers)
    if providers[0] != "CPUExecutionProvider" and providers[0] not in session.get_providers():
        raise Skip(f"onnxruntime fell back from {providers[0]} to the CPU")
    return lambda feeds: session.run(None, feeds)


def _openvino_runner(path: Path, threads: int):
    try:
        import openvino as ov
    except ImportError:
        raise Skip("the openvino package is not installed (pip install 'poolexport[openvino]')") from None
    core = ov.Core()
    model = core.read_model(os.fspath(path))
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled: dict = {}

    def run(feeds):
        key = tuple((k, v.shape) for k, v in feeds.items())
        if key not in compiled:  # a static shape per batch, as a deployment would compile it
            m = model.clone()
            m.reshape({k: list(v.shape) for k, v in feeds.items()})
            compiled.clear()
            compiled[key] = core.compile_model(m, "CPU", config)
        return compiled[key](feeds)

    return run


def make_runner(runtime: str, path: Path, facts: dict, threads: int) -> Callable:
    """A function feeds -> outputs for ``runtime``, or Skip with the reason."""
    has_custom, fallbacks, plugin_form, other_custom = (facts["poolexport_nodes"], facts["fallbacks"],
                                                        facts["plugin_form"], facts["other_custom"])
    if plugin_form and runtime != "openvino":
        raise Skip("a tensorrt-target file (plugin nodes): build an engine with poolexport build-engine")
    if runtime == "onnxruntime+poolexport":
        if not has_custom:
            raise Skip("no poolexport nodes in the file: plain onnxruntime runs it the same way")
        return _ort_runner(path, ["CPUExecutionProvider"], True, threads)
    if runtime == "onnxruntime":
        if has_custom and not fallbacks:
            raise Skip("the file's poolexport nodes have no fallback functions: it needs the library")
        return _ort_runner(path, ["CPUExecutionProvider"], False, threads)
    if runtime == "onnxruntime-cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise Skip("no CUDAExecutionProvider in this onnxruntime build (pip install onnxruntime-gpu)")
        return _ort_runner(path, ["CUDAExecutionProvider", "CPUExecutionProvider"], has_custom, threads)
    if runtime == "openvino":
        if has_custom or other_custom:
            raise Skip("the file has custom-domain nodes: export with --target portable for OpenVINO")
        return _openvino_runner(path, threads)
    raise ValueError(runtime)


def file_facts(model) -> dict:
    from .inspect_cmd import PLUGIN_ATTRIBUTE, POOLEXPORT_DOMAIN, STANDARD_DOMAINS, _all_nodes

    nodes = list(_all_nodes(model.graph))
    ours = {n.op_type for n in nodes if n.domain == POOLEXPORT_DOMAIN}
    functions = {(f.domain, f.name) for f in model.functions}
    return {
        "poolexport_nodes": bool(ours),
        "fallbacks": all((POOLEXPORT_DOMAIN, op) in functions for op in ours),
        "plugin_form": any(a.name == PLUGIN_ATTRIBUTE for n in nodes if n.domain == POOLEXPORT_DOMAIN
                           for a in n.attribute),
        "other_custom": sorted({n.domain for n in nodes if n.domain not in STANDARD_DOMAINS + (POOLEXPORT_DOMAIN,)}),
    }


# ------------------------------------------------------------------ measuring
@dataclass
class Result:
    runtime: str
    batch: Optional[int] = None
    status: str = "ok"  # ok, skip, error
    reason: str = ""
    median_ms: Optional[float] = None
    p90_ms: Optional[float] = None
    mean_ms: Optional[float] = None
    min_ms: Optional[float] = None
    throughput_per_s: Optional[float] = None  # batch / median latency
    iters: int = 0
    shapes: dict = field(default_factory=dict)


def percentile(sorted_values: list, q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks (NumPy's
    default), of values already sorted."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(result: Result, seconds: list) -> Result:
    ms = sorted(s * 1000.0 for s in seconds)
    result.iters = len(ms)
    result.median_ms = percentile(ms, 50)
    result.p90_ms = percentile(ms, 90)
    result.mean_ms = sum(ms) / len(ms)
    result.min_ms = ms[0]
    result.throughput_per_s = result.batch / (result.median_ms / 1000.0) if result.median_ms > 0 else None
    return result


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (f"{type(exc).__name__}: " + text.splitlines()[0] if text else type(exc).__name__)[:300]


def run(args: argparse.Namespace) -> int:
    from .cli import UsageError
    from .inspect_cmd import read_model

    if args.warmup < 0 or args.iters < 1:
        raise UsageError("--warmup must be >= 0 and --iters >= 1")
    if args.threads < 0:
        raise UsageError("--threads must be >= 0")
    runtimes = RUNTIMES if args.runtimes is None else tuple(r.strip() for r in args.runtimes.split(",") if r.strip())
    bad = [r for r in runtimes if r not in RUNTIMES]
    if bad or not runtimes:
        raise UsageError(f"--runtimes: unknown runtime {bad[0] if bad else ''!r}; choose from {', '.join(RUNTIMES)}")
    if args.json:
        from .cli import _check_writable

        _check_writable(args.json, "--json")
    model = read_model(args.model)
    from ._untrusted import UntrustedFileError, check_onnx_external_data

    try:
        check_onnx_external_data(args.model)  # the runtimes load external data: only from the model's folder
    except UntrustedFileError as exc:
        raise UsageError(str(exc)) from None
    specs = input_specs(model)
    batches, shapes = shapes_for(specs, parse_batches(args.batch), parse_dims(args.dims))
    facts = file_facts(model)
    del model
    feeds = []
    for s in shapes:
        try:
            feeds.append(random_inputs(specs, s))
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    results = measure(args.model, runtimes, batches, shapes, feeds, facts, args.warmup, args.iters, args.threads)
    _print(args.model, results, args)
    if args.json:
        args.json.write_text(json.dumps(report(args, results, specs), indent=2) + "\n")
    return 1 if any(r.status == "error" for r in results) else 0


def measure(path, runtimes, batches, shapes, feeds, facts, warmup, iters, threads, progress=None) -> list:
    """One Result per (runtime, batch) that ran or failed, and one per skipped runtime."""
    results = []
    with (progress or _progress()) as bar:
        total = len(runtimes) * len(batches) * (warmup + iters)
        task = bar.add_task("loading", total=total)
        for runtime in runtimes:
            bar.update(task, description=f"{runtime}: loading the file")
            try:
                runner = make_runner(runtime, path, facts, threads)
            except Skip as why:
                results.append(Result(runtime, status="skip", reason=str(why)))
                bar.advance(task, len(batches) * (warmup + iters))
                continue
            except Exception as exc:
                results.append(Result(runtime, status="error", reason=_one_line(exc)))
                bar.advance(task, len(batches) * (warmup + iters))
                continue
            for b, shape, feed in zip(batches, shapes, feeds):
                result = Result(runtime, b, shapes={k: list(v) for k, v in shape.items()})
                try:
                    bar.update(task, description=f"{runtime} batch {b}: warm-up")
                    for _ in range(warmup):
                        runner(feed)
                        bar.advance(task)
                    bar.update(task, description=f"{runtime} batch {b}: timing")
                    seconds = []
                    for _ in range(iters):
                        start = time.perf_counter()
                        runner(feed)
                        seconds.append(time.perf_counter() - start)
                        bar.advance(task)
                    results.append(summarize(result, seconds))
                except Exception as exc:
                    result.status, result.reason = "error", _one_line(exc)
                    results.append(result)
            del runner
    return results


class _LineProgress:
    """Without a terminal: one stderr line per step (CI logs), no bar."""

    def __init__(self):
        self.start = time.perf_counter()
        self.last = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, description, total=None):
        return 0

    def update(self, task, description=None, **kwargs):
        if description and description != self.last:
            self.last = description
            print(f"poolexport bench: [{time.perf_counter() - self.start:6.1f} s] {description}", file=sys.stderr,
                  flush=True)

    def advance(self, task, amount=1):
        pass


def _progress():
    if not sys.stderr.isatty():
        return _LineProgress()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), transient=True)


# ------------------------------------------------------------------ output
def report(args, results: list, specs: list) -> dict:
    import platform

    versions = {}
    for name in ("onnxruntime", "openvino"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:
            pass
    from . import __version__

    return {
        "file": str(args.model),
        "warmup": args.warmup, "iters": args.iters, "threads": args.threads,
        "inputs": [asdict(s) for s in specs],
        "results": [asdict(r) for r in results],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "poolexport": __version__, **versions},
        "throughput": "batch / median latency",
    }


def _fmt(v, digits=2):
    return "-" if v is None else f"{v:.{digits}f}"


def _print(path, results: list, args) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    out = Console() if sys.stdout.isatty() else Console(width=100)
    threads = f"{args.threads} thread{'s' if args.threads > 1 else ''}" if args.threads else "default threads"
    table = Table(title=f"{path.name}: {args.iters} timed runs after {args.warmup} warm-up, {threads}")
    for col in ("runtime", "batch", "median ms", "p90 ms", "items/s"):
        table.add_column(col, justify="left" if col == "runtime" else "right", no_wrap=True)
    notes = []
    for r in results:
        if r.status == "ok":
            table.add_row(r.runtime, str(r.batch), _fmt(r.median_ms, 3), _fmt(r.p90_ms, 3),
                          _fmt(r.throughput_per_s, 1))
        else:
            notes.append(f"{r.runtime}: {r.status}: {r.reason}")
            style = "dim" if r.status == "skip" else "bold red"
            table.add_row(r.runtime, "-" if r.batch is None else str(r.batch), "-", "-",
                          f"[{style}]{r.status} [{len(notes)}][/]")
    out.print(table)
    for i, n in enumerate(notes, 1):
        out.print(escape(f"[{i}] {n}"), soft_wrap=True)
