"""The ``poolexport`` command line.

``poolexport MODEL [-o OUT.onnx] [--target ort|portable|tensorrt] [--input-shape 1x3x224x224]
[--dynamic batch,spatial] [--fp16] [--json report.json]`` exports MODEL (a TorchScript
archive, a torch.export ``.pt2`` program, a state_dict with ``--arch NAME``, or a pickled
module with ``--trust-pickle``) to ONNX, checks it with ``onnx.checker``, runs the parity
check on every runtime present, prints a table and exits non-zero when a runtime fails.

Subcommands: ``poolexport NAME ...`` runs a registered command instead. Another module adds
one with::

    from poolexport.cli import register_command
    register_command("build-engine", add_arguments, run, help="...")

where ``add_arguments(parser)`` fills an ``argparse.ArgumentParser`` and ``run(args)``
returns the exit code. Commands of poolexport.tensorrt and the serve package are
registered here when importable (see ``_BUILTIN``). A first argument that is not a
registered name means export, so ``poolexport model.pt`` never needs a subcommand.

Exit codes: 0 success, 1 a runtime failed its tolerance, 2 bad input (one line on stderr,
never a traceback), 130 interrupted.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

PROG = "poolexport"


@dataclass
class Command:
    name: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    help: str = ""


_COMMANDS: dict[str, Command] = {}

# (module, how it registers): a module with NAME/HELP/add_arguments/run, or a register(fn) hook
_BUILTIN = ("poolexport.tensorrt.cli", "poolexport.serve.cli")


def register_command(name: str, add_arguments, run, help: str = "") -> None:
    """Register ``poolexport NAME``; a later registration of the same name replaces it."""
    if not name or name.startswith("-") or "." in name or "/" in name:
        raise ValueError(f"register_command: name must be a plain word, got {name!r}")
    _COMMANDS[name] = Command(name, add_arguments, run, help)


def _discover() -> None:
    for module_name in _BUILTIN:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, "register"):
            module.register(register_command)
        elif all(hasattr(module, a) for a in ("NAME", "add_arguments", "run")):
            register_command(module.NAME, module.add_arguments, module.run, getattr(module, "HELP", ""))


class UsageError(Exception):
    """Bad input: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise UsageError(message)


# ------------------------------------------------------------------ argument parsing
def parse_shape(text: str) -> tuple[int, ...]:
    parts = text.lower().replace(",", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise UsageError(f"--input-shape: expected sizes joined by 'x' such as 1x3x224x224, got {text!r}") from None
    if len(shape) < 3 or any(s <= 0 for s in shape):
        raise UsageError(f"--input-shape: expected N x C x spatial sizes (3 to 5 positive integers), got {text!r}")
    return shape


def parse_dynamic(text: str) -> tuple[str, ...]:
    from .onnx.export import DYNAMIC_CHOICES

    if text.strip().lower() in ("", "none"):
        return ()
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in parts if p not in DYNAMIC_CHOICES]
    if bad:
        raise UsageError(f"--dynamic: unknown axis group {bad[0]!r}; use batch, spatial, both (batch,spatial) or none")
    return parts


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    from .parity import RUNTIMES

    p.add_argument("model", type=Path, help="TorchScript archive, torch.export program (.pt2), state_dict "
                   "(with --arch) or pickled module (with --trust-pickle)")
    p.add_argument("-o", "--output", type=Path, help="ONNX file to write (default: MODEL with .onnx suffix)")
    p.add_argument("--target", choices=("ort", "portable", "tensorrt"), default="ort",
                   help="ort: custom nodes + local-function fallbacks (default); portable: standard ops only; "
                        "tensorrt: plugin nodes for TensorRT's ONNX parser")
    p.add_argument("--input-shape", metavar="NxCxHxW", help="example input shape, e.g. 1x3x224x224 (default: the "
                   "shape stored with the model, or the --arch model's default)")
    p.add_argument("--dynamic", default="batch,spatial", metavar="AXES",
                   help="dynamic axes: batch, spatial, batch,spatial (default) or none")
    p.add_argument("--fp16", action="store_true", help="export a float16-typed graph")
    p.add_argument("--json", type=Path, metavar="REPORT", help="write the export + parity report as JSON")
    p.add_argument("--arch", help="architecture of a state_dict (see poolexport.models.list_models())")
    p.add_argument("--trust-pickle", action="store_true",
                   help="trust the file: allow loading a pickled full module, and .pt2/TorchScript archives that carry "
                        "more than tensors and graph code (loading them runs code from the file)")
    p.add_argument("--runtimes", default=",".join(RUNTIMES), metavar="LIST",
                   help=f"parity runtimes, comma-separated (default: all of {', '.join(RUNTIMES)})")
    p.add_argument("--no-parity", action="store_true", help="export only")
    p.add_argument("--exporter", choices=("auto", "dynamo", "torchscript"), default="auto",
                   help="torch.onnx exporter (auto: dynamo, or TorchScript for TorchScript archives)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 18)")


def _check_writable(path: Path, flag: str) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UsageError(f"{flag}: {path} is a directory")
    if not parent.is_dir():
        raise UsageError(f"{flag}: cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"{flag}: cannot write {path}: permission denied")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first[:400]


# ------------------------------------------------------------------ the export command
def run_export(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ._loading import LoadError, load_model
    from .parity import RUNTIMES

    shape = parse_shape(args.input_shape) if args.input_shape else None
    dynamic = parse_dynamic(args.dynamic)
    runtimes = tuple(r.strip() for r in args.runtimes.split(",") if r.strip())
    bad = [r for r in runtimes if r not in RUNTIMES]
    if bad:
        raise UsageError(f"--runtimes: unknown runtime {bad[0]!r}; choose from {', '.join(RUNTIMES)}")
    if args.opset < 18:
        raise UsageError(f"--opset: must be >= 18, got {args.opset}")
    if not args.model.exists():
        raise UsageError(f"{args.model}: no such file")
    output = args.output or args.model.with_suffix(".onnx")
    if output.resolve() == args.model.resolve():
        raise UsageError(f"-o: {output} would overwrite the input model")
    _check_writable(output, "-o")
    if args.json:
        _check_writable(args.json, "--json")
    try:
        loaded = load_model(args.model, args.arch, args.trust_pickle)
    except LoadError as exc:
        raise UsageError(str(exc)) from None
    shape = shape or loaded.input_shape
    if shape is None:
        raise UsageError(f"{args.model}: the file stores no input shape; give --input-shape, e.g. 1x3x224x224")

    # the progress display gets its own descriptor: export_model silences fds 1 and 2 while
    # torch.onnx runs (it prints from C++), and the spinner must keep turning meanwhile
    err = Console(file=os.fdopen(os.dup(2), "w", buffering=1)) if sys.stderr.isatty() else Console(stderr=True)
    out = Console()
    if not out.is_terminal:
        out = Console(width=160)  # files and pipes: keep each table row on one line
    report: dict = {"model": str(args.model), "format": loaded.kind, "output": str(output), "target": args.target,
                    "fp16": args.fp16, "input_shape": list(shape), "dynamic": list(dynamic)}
    with _progress(err) as progress:
        task = progress.add_task(f"exporting {args.model.name} ({args.target}{', fp16' if args.fp16 else ''})")
        proto, seconds = _export(loaded, shape, args, dynamic)
        report["export_seconds"] = seconds
        progress.update(task, description="onnx.checker (full_check)")
        _check_and_save(proto, output)
        parity = None
        if not args.no_parity:
            from .parity import check_parity, parity_shapes

            shapes = parity_shapes(proto, shape)
            start = time.perf_counter()
            parity = check_parity(proto, loaded.model, shapes, fp16=args.fp16, runtimes=runtimes,
                                  on_runtime=lambda r: progress.update(task, description=f"parity: {r}"))
            report["parity_seconds"] = time.perf_counter() - start
            report["parity"] = parity.to_dict()
    out.print(f"wrote {output} ({output.stat().st_size / 1024:.0f} KiB, target {args.target}, "
              f"{'float16' if args.fp16 else 'float32'}, export {seconds:.1f} s)")
    passed = True
    if parity is not None:
        out.print(_table(parity))
        passed = parity.passed
        out.print("[bold green]parity: pass[/]" if passed else "[bold red]parity: FAIL[/]")
    report["passed"] = passed
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if passed else 1


def _progress(console):
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                    transient=True)


def _export(loaded, shape, args, dynamic):
    import torch

    from .onnx import export_model

    example = torch.randn(*shape)
    start = time.perf_counter()
    try:
        proto = export_model(loaded.model, example, target=args.target, dynamic=dynamic, fp16=args.fp16,
                             opset=args.opset, exporter=args.exporter)
    except ValueError as exc:
        raise UsageError(f"export failed: {_one_line(exc)}") from None
    except Exception as exc:
        raise UsageError(f"export failed ({type(exc).__name__}): {_one_line(exc)}") from None
    return proto, time.perf_counter() - start


def _check_and_save(proto, output: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise UsageError(f"onnx.checker rejected the export: {_one_line(exc)}") from None
    try:
        onnx.save(proto, str(output))
    except OSError as exc:
        raise UsageError(f"-o: cannot write {output}: {exc.strerror or exc}") from None


def _fmt(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2e}"


def _table(report):
    from rich.table import Table

    table = Table(title=f"parity vs PyTorch float64 ({report.dtype}: rtol {report.tolerance.rtol:g}, "
                        f"atol {report.tolerance.atol:g}; shapes "
                        + ", ".join("x".join(map(str, s)) for s in report.input_shapes) + ")")
    for col in ("runtime", "max abs err", "max rel err", "result", "time"):
        table.add_column(col, justify="right" if col in ("max abs err", "max rel err", "time") else "left",
                         no_wrap=True)
    table.add_column("note", overflow="fold")
    style = {"pass": "green", "fail": "bold red", "error": "bold red", "skip": "dim"}
    for r in report.summary():
        table.add_row(r.runtime, _fmt(r.max_abs), _fmt(r.max_rel), f"[{style[r.status]}]{r.status}[/]",
                      "-" if r.seconds is None else f"{r.seconds * 1000:.1f} ms", r.reason)
    return table


# ------------------------------------------------------------------ dispatch
def _export_parser() -> argparse.ArgumentParser:
    names = ", ".join(sorted(_COMMANDS)) or "none registered"
    p = _Parser(prog=PROG, description="Export a PyTorch model with poolexport layers to ONNX and prove parity.",
                epilog=f"subcommands: {PROG} NAME --help for NAME in: {names}")
    add_export_arguments(p)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("torch").setLevel(logging.ERROR)
    try:
        _discover()
        if argv and argv[0] in _COMMANDS:
            cmd = _COMMANDS[argv[0]]
            p = _Parser(prog=f"{PROG} {cmd.name}", description=cmd.help or None)
            cmd.add_arguments(p)
            return int(cmd.run(p.parse_args(argv[1:])) or 0)
        return run_export(_export_parser().parse_args(argv))
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an internal error: still one line; POOLEXPORT_DEBUG=1 shows the traceback
        if os.environ.get("POOLEXPORT_DEBUG"):
            raise
        print(f"{PROG}: error: {type(exc).__name__}: {_one_line(exc)} (POOLEXPORT_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
