"""``poolexport build-engine``: argument definition and run function.

Registered by ``poolexport/cli.py`` (NAME, HELP, add_arguments, run); also runnable alone
as ``python -m poolexport.tensorrt.cli model.onnx -o model.plan``. Exit codes follow
poolexport's CLI: 0 success, 2 anything that stops the build (one line on stderr).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "build-engine"
HELP = "build a TensorRT engine (.plan) from a poolexport ONNX model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help="ONNX model (any poolexport export target)")
    p.add_argument("-o", "--output", type=Path, required=True, help="engine file to write (.plan)")
    p.add_argument("--fp16", action="store_true",
                   help="fp16 engine (TensorRT 11: requires a float16 ONNX graph; TensorRT 10: FP16 builder flag)")
    p.add_argument("--shapes", metavar="NAME:MIN/OPT/MAX[,...]",
                   help="optimization profile for dynamic inputs, e.g. x:1x3x32x32/8x3x64x64/16x3x128x128")
    p.add_argument("--workspace", metavar="SIZE", help="workspace memory pool limit, e.g. 1G")
    p.add_argument("--verbose", action="store_true", help="TensorRT verbose log")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ._import import TensorRTUnavailable, import_tensorrt
    from .engine import build_engine, parse_shapes, parse_size
    from .ptx import PTXUnavailable, load_ptx

    try:
        shapes, workspace = parse_shapes(args.shapes), parse_size(args.workspace)
    except ValueError as e:
        return _fail(e, 2)
    if not args.model.is_file():
        return _fail(f"{args.model}: no such file", 2)
    try:  # what is missing, in one line, before any progress display
        import_tensorrt(plugin=True)
        load_ptx()
    except (TensorRTUnavailable, PTXUnavailable) as e:
        return _fail(e, 2)
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as bar:
        tasks: dict[str, int] = {}

        def on_progress(event: str, phase: str, step: int, total: int) -> None:
            if event == "start":
                tasks[phase] = bar.add_task(phase, total=max(total, 1))
            elif phase in tasks:
                bar.update(tasks[phase], completed=step if event == "step" else max(total, 1))

        overall = bar.add_task(f"building {args.model.name}", total=None)
        try:
            report = build_engine(args.model, args.output, fp16=args.fp16, shapes=shapes, workspace=workspace,
                                  progress=on_progress, verbose=args.verbose)
        except (TensorRTUnavailable, PTXUnavailable, ValueError, RuntimeError, FileNotFoundError) as e:
            bar.stop()
            return _fail(e, 2)
        bar.update(overall, total=1, completed=1)
    mode = "strongly typed" if report.strongly_typed else ("FP16 flag" if report.fp16_flag else "float32")
    console.print(f"wrote {report.path} ({report.size_bytes / 1e6:.1f} MB, TensorRT {report.tensorrt_version}, {mode})")
    return 0


def _fail(message, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=f"poolexport {NAME}", description=HELP)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
