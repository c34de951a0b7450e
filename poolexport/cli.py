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
returns the exit code. ``inspect`` (inspect_cmd.py), ``bench`` (bench_cmd.py) and the
commands of poolexport.tensorrt and the serve package are registered here when importable
(see ``_BUILTIN``). Nothing heavy (torch, onnx, onnxruntime, rich) is imported until a
command needs it, so ``poolexport --help`` starts in well under a second. A first argument
that is not a registered name means export, so ``poolexport model.pt`` never needs a
subcommand.

Exit codes: 0 success, 1 a runtime failed its tolerance, 2 bad input (one line on stderr,
never a traceback), 3 the target's own runtime did not run (see --allow-unverified), 130
interrupted.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

PROG = "poolexport"
EXIT_UNVERIFIED = 3  # parity passed where it ran, but the target's own runtime did not run
CONTAINED_ENV = "POOLEXPORT_CONTAINED"  # child.CONTAINED_ENV, without importing it here
# the contained child's confinement (set by _untrusted/child.py); None in other processes
CONFINEMENT = None


@dataclass
class Command:
    name: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    help: str = ""


_COMMANDS: dict[str, Command] = {}

# modules with NAME/HELP/add_arguments/run, or a register(fn) hook. Discovery imports them
# all for every command line, --help included: their top level imports no torch, onnx,
# onnxruntime or rich (tests/test_cli_startup.py checks)
_BUILTIN = ("poolexport.inspect_cmd", "poolexport.bench_cmd", "poolexport.tensorrt.cli", "poolexport.serve.cli")
# poolexport.parity's RUNTIMES and REFERENCE_MAX_PARAMS, for the help text without importing
# parity (torch, onnx); tests/test_cli_startup.py checks that they agree
PARITY_RUNTIMES = ("torch", "onnxruntime", "onnxruntime-fallback", "reference", "openvino", "onnxruntime-cuda",
                   "tensorrt")
REFERENCE_MAX_PARAMS = 2_000_000
DYNAMIC_CHOICES = ("batch", "spatial")  # poolexport.onnx.export.DYNAMIC_CHOICES (that module imports torch)


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
    if text.strip().lower() in ("", "none"):
        return ()
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in parts if p not in DYNAMIC_CHOICES]
    if bad:
        raise UsageError(f"--dynamic: unknown axis group {bad[0]!r}; use batch, spatial, both (batch,spatial) or none")
    return parts


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help="TorchScript archive, torch.export program (.pt2), state_dict "
                   "(with --arch) or pickled module (with --trust-pickle)")
    p.add_argument("-o", "--output", type=Path, help="ONNX file to write (default: MODEL with .onnx suffix)")
    p.add_argument("--target", choices=("ort", "portable", "tensorrt"), default="ort",
                   help="which file for which runtime. ort (default): custom nodes + local-function fallbacks, for "
                        "ONNX Runtime with poolexport's library (plain ONNX Runtime runs the fallbacks); portable: "
                        "standard ops only, for OpenVINO, plain ONNX Runtime and any other ONNX runtime; tensorrt: "
                        "plugin nodes for TensorRT's ONNX parser")
    p.add_argument("--input-shape", metavar="NxCxHxW", help="example input shape, e.g. 1x3x224x224 (default: the "
                   "shape stored with the model, or the --arch model's default)")
    p.add_argument("--dynamic", default=None, metavar="AXES",
                   help="dynamic axes: batch, spatial, batch,spatial or none (default: batch,spatial; for a .pt2, "
                        "the axes the program was exported with)")
    p.add_argument("--fp16", action="store_true", help="export a float16-typed graph")
    p.add_argument("--json", type=Path, metavar="REPORT", help="write the export + parity report as JSON")
    p.add_argument("--arch", help="architecture of a state_dict (see poolexport.models.list_models())")
    p.add_argument("--trust-pickle", action="store_true",
                   help="trust the file: load it in this process with torch's own loaders, without the file checks "
                        "and the sandbox (needed for a pickled full module; loading it runs code from the file)")
    p.add_argument("--runtimes", default=None, metavar="LIST",
                   help=f"parity runtimes, comma-separated (default: all of {', '.join(PARITY_RUNTIMES)}; the "
                        f"reference evaluator is skipped for models above {REFERENCE_MAX_PARAMS / 1e6:g}M parameters "
                        "unless named here)")
    p.add_argument("--no-parity", action="store_true", help="export only")
    p.add_argument("--allow-unverified", action="store_true",
                   help=f"exit 0 when parity passed on the runtimes that ran but the target's own runtime did not "
                        f"run (e.g. --target tensorrt without TensorRT); without it that exits {EXIT_UNVERIFIED}")
    p.add_argument("--exporter", choices=("auto", "dynamo", "torchscript"), default="auto",
                   help="torch.onnx exporter (auto: dynamo, or TorchScript for TorchScript archives)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 18)")
    p.add_argument("--version", action=_VersionAction)


class _VersionAction(argparse.Action):
    """``--version``, with the text built only when asked for (it imports onnx)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="show the version and exit"):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        parser._print_message(version_text() + "\n", sys.stdout)
        parser.exit()


def version_text() -> str:
    """``poolexport --version``: the package and the ONNX domain version its files use."""
    from . import __version__
    from .onnx.domain import DOMAIN, VERSION

    return f"{PROG} {__version__} (ONNX domain {DOMAIN} version {VERSION})"


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
    # up to the contained child's start nothing heavy is imported: the parent only checks
    # the arguments, starts the child and copies its file
    shape = parse_shape(args.input_shape) if args.input_shape else None
    dynamic = parse_dynamic(args.dynamic) if args.dynamic is not None else None
    runtimes = tuple(r.strip() for r in (args.runtimes or ",".join(PARITY_RUNTIMES)).split(",") if r.strip())
    bad = [r for r in runtimes if r not in PARITY_RUNTIMES]
    if bad:
        raise UsageError(f"--runtimes: unknown runtime {bad[0]!r}; choose from {', '.join(PARITY_RUNTIMES)}")
    if args.opset < 18:
        raise UsageError(f"--opset: must be >= 18, got {args.opset}")
    if not args.model.exists():
        raise UsageError(f"{args.model}: no such file")
    output = args.output or args.model.with_suffix(".onnx")
    if output.resolve() == args.model.resolve():
        raise UsageError(f"-o: {output} would overwrite the input model")
    contained = os.environ.get(CONTAINED_ENV)
    if not contained:
        _check_writable(output, "-o")
        if args.json:
            _check_writable(args.json, "--json")
        if not args.trust_pickle:
            return _run_contained(args, output)
    from rich.console import Console

    from ._loading import LoadError, load_model
    from .parity import TARGET_RUNTIME

    # in the contained child: write into its scratch folder; the parent moves the files
    write_output = Path(contained) / "out" / output.name if contained else output
    write_json = (Path(contained) / "report.json" if contained else args.json) if args.json else None
    out = Console()
    if not out.is_terminal:
        out = Console(width=100)  # files and pipes: no terminal width to follow
    if CONFINEMENT is not None:
        out.print(CONFINEMENT.describe(), soft_wrap=True, markup=False, highlight=False)
    try:
        loaded = load_model(args.model, args.arch, args.trust_pickle)
    except LoadError as exc:
        raise UsageError(str(exc)) from None
    shape = shape or loaded.input_shape
    if shape is None:
        raise UsageError(f"{args.model}: the file stores no input shape; give --input-shape, e.g. 1x3x224x224")
    dynamic = _dynamic_for(loaded, shape, dynamic)

    # the progress display gets its own descriptor: export_model silences fds 1 and 2 while
    # torch.onnx runs (it prints from C++), and the spinner must keep turning meanwhile
    err = _terminal_console()
    report: dict = {"model": str(args.model), "format": loaded.kind, "output": str(output), "target": args.target,
                    "fp16": args.fp16, "input_shape": list(shape), "dynamic": list(dynamic)}
    if CONFINEMENT is not None:
        report["sandbox"] = {"enforced": CONFINEMENT.enforced(), "missing": list(CONFINEMENT.missing),
                             "landlock_abi": CONFINEMENT.landlock_abi, "seccomp": CONFINEMENT.seccomp}
    with _progress(err) as progress:
        task = progress.add_task(f"exporting {args.model.name} ({args.target}{', fp16' if args.fp16 else ''})")

        def step(text: str) -> None:  # each label is shown while exactly that step runs
            progress.update(task, description=text)

        proto, seconds = _export(loaded, shape, args, dynamic, step)
        report["export_seconds"] = seconds
        step(STEPS["check"])
        _check(proto)
        step(STEPS["save"].format(name=output.name))
        _save(proto, write_output)
        parity = None
        if not args.no_parity:
            from .parity import check_parity, parity_shapes

            shapes = parity_shapes(proto, shape)
            start = time.perf_counter()
            forced = args.runtimes is not None and "reference" in runtimes  # named: run it at any size
            # check_parity copies the model and runs it in float64 before the first runtime
            step(STEPS["reference"].format(count=len(shapes), s="" if len(shapes) == 1 else "s"))
            parity = check_parity(proto, loaded.model, shapes, fp16=args.fp16, runtimes=runtimes,
                                  on_runtime=lambda r: step(STEPS["parity"].format(runtime=r)),
                                  reference_max_params=None if forced else REFERENCE_MAX_PARAMS)
            report["parity_seconds"] = time.perf_counter() - start
            report["parity"] = parity.to_dict()
    out.print(f"wrote {output} ({write_output.stat().st_size / 1024:.0f} KiB, target {args.target}, "
              f"{'float16' if args.fp16 else 'float32'}, export {seconds:.1f} s)")
    passed, verified = True, False
    if parity is not None:
        for part in _table(parity):
            out.print(part, soft_wrap=isinstance(part, str))  # a note stays one line in logs
        passed = parity.passed
        runtime = TARGET_RUNTIME[args.target]
        verified = parity.verified_on(runtime)
        if not passed:
            out.print("[bold red]parity: FAIL[/]")
        elif verified:
            out.print(f"[bold green]parity: pass[/] (target {args.target} verified on {runtime})")
        else:
            why = next((r.reason for r in parity.summary() if r.runtime == runtime), "not run")
            out.print(f"[bold yellow]parity: pass on the runtimes that ran; target {args.target} not verified on "
                      f"{runtime}[/] ({why})", soft_wrap=True)
            if args.allow_unverified:
                out.print("exit 0: --allow-unverified given", soft_wrap=True)
            else:
                out.print(f"exit {EXIT_UNVERIFIED}: the target was not verified (pass --allow-unverified to accept a "
                          "file checked only on the runtimes that ran)", soft_wrap=True)
    report["passed"] = passed
    report["target_verified"] = verified
    if write_json:
        write_json.write_text(json.dumps(report, indent=2) + "\n")
    if not passed:
        return 1
    if parity is not None and not verified and not args.allow_unverified:
        return EXIT_UNVERIFIED
    return 0


def _run_contained(args: argparse.Namespace, output: Path) -> int:
    """Run this same command in a child process confined by the OS (``_untrusted/sandbox.py``:
    writes only under a scratch folder, no exec, no sockets), then copy its ONNX file and
    report to where the user asked.

    What the child leaves is treated as untrusted too: its process group is killed before
    the scratch folder is read (no grandchild can swap files meanwhile); only the two
    expected names are read, through descriptors opened without following links; a file
    with external data is refused (the export writes none), so the child cannot name a
    file that would land beside the output."""
    import shutil
    import signal
    import subprocess
    import tempfile

    from ._untrusted import child

    scratch = Path(tempfile.mkdtemp(prefix="poolexport-"))
    try:
        (scratch / "out").mkdir()
        env = {k: v for k, v in os.environ.items() if k != CONTAINED_ENV}
        # no stdin and a session of its own (no terminal to type into); fds other than
        # 0-2 are closed (an inherited socket could still send)
        proc = subprocess.Popen([sys.executable, "-c", child.BOOTSTRAP, str(Path(child.__file__).resolve()),
                                 str(scratch), *args.argv], env=env, stdin=subprocess.DEVNULL, close_fds=True,
                                start_new_session=True)
        try:
            proc.wait()
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the child and anything it forked
            except ProcessLookupError:
                pass
            proc.wait()
        if proc.returncode < 0 and proc.returncode != -signal.SIGKILL:
            raise UsageError(f"{args.model}: the contained export process died (signal {-proc.returncode})")
        if proc.returncode not in (0, 1, EXIT_UNVERIFIED):
            return proc.returncode  # it printed its one-line error
        with _progress(_terminal_console()) as progress:
            progress.add_task(STEPS["copy"].format(name=output.name))
            _take_outputs(args, output, scratch)
        return proc.returncode
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _terminal_console():
    """A rich console on a duplicate of fd 2 when it is a terminal (export_model silences
    fds 1 and 2 while torch.onnx runs, and the spinner must keep turning); None otherwise."""
    if not sys.stderr.isatty():
        return None
    from rich.console import Console

    return Console(file=os.fdopen(os.dup(2), "w", buffering=1))


def _take_outputs(args: argparse.Namespace, output: Path, scratch: Path) -> None:
    """Copy the contained child's ONNX file (and report) from ``scratch`` to where the user
    asked, after checking that it names no external data."""
    from ._untrusted import check_onnx_external_data

    onnx_bytes = _read_plain(scratch / "out", output.name)
    if onnx_bytes is None:
        raise UsageError(f"{args.model}: the contained export process wrote no {output.name}")
    staged = scratch / "checked.onnx"
    staged.write_bytes(onnx_bytes)
    try:
        external = check_onnx_external_data(staged)
    except Exception:
        external = True
    if external:
        raise UsageError(f"{args.model}: the contained export wrote a file with external data, which "
                         "poolexport's export never does; refusing it")
    output.write_bytes(onnx_bytes)
    if args.json:
        report = _read_plain(scratch, "report.json")
        if report is not None:
            args.json.write_bytes(report)


def _read_plain(folder: Path, name: str) -> Optional[bytes]:
    """The bytes of ``folder/name`` when it is a regular file, opened without following a
    link at either step; None otherwise."""
    import stat

    nofollow = getattr(os, "O_NOFOLLOW", 0)
    try:
        dir_fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | nofollow)
    except OSError:
        return None
    try:
        fd = os.open(name, os.O_RDONLY | nofollow, dir_fd=dir_fd)
    except OSError:
        return None
    finally:
        os.close(dir_fd)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        return f.read()


def _dynamic_for(loaded, shape, requested):
    """The dynamic axis groups to export. A torch.export program's dynamism is fixed when it
    is exported (its graph and guards assume the static sizes), so asking for more is an
    error rather than silently ignored; by default a program keeps its own."""
    from .onnx.export import DYNAMIC_CHOICES, dynamic_axes_for, program_static_axes

    if loaded.kind != "exported-program":
        return DYNAMIC_CHOICES if requested is None else requested
    static = program_static_axes(loaded.model)
    if requested is None:
        return tuple(g for g in DYNAMIC_CHOICES if any(i not in static for i in dynamic_axes_for(len(shape), (g,))))
    for i, name in sorted(dynamic_axes_for(len(shape), requested).items()):
        if i in static:
            raise UsageError(
                f"--dynamic: axis {i} ({name}) of the program was exported with a fixed size ({shape[i]}); "
                "export it again with torch.export.Dim for that axis, or leave it out of --dynamic")
    return requested


# the export's progress labels after export_model's own (poolexport.onnx.export.STEPS)
STEPS = {
    "check": "check: onnx.checker (full_check)",
    "save": "save: {name}",
    "reference": "reference: PyTorch float64 forward ({count} shape{s})",
    "parity": "parity: {runtime}",
    "copy": "copy: {name} from the sandbox",
}


def _progress(console):
    """A spinner on a terminal; plain timestamped lines on stderr otherwise (CI logs, pipes)."""
    if console is None:
        return _LineProgress()
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                    transient=True)


class _LineProgress:
    def __init__(self):
        self.start = time.perf_counter()
        self.fd = None

    def __enter__(self):
        # a duplicate of fd 2: export_model points fds 1 and 2 elsewhere while torch.onnx
        # runs, and the steps inside it (export, optimize) must still be shown
        self.fd = os.dup(2)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)
        self.fd = None
        return False

    def _line(self, text):
        os.write(2 if self.fd is None else self.fd,
                 f"{PROG}: [{time.perf_counter() - self.start:6.1f} s] {text}\n".encode())

    def add_task(self, description):
        self._line(description)
        return 0

    def update(self, task, description):
        self._line(description)


def _export(loaded, shape, args, dynamic, step=None):
    import torch

    from .onnx import export_model

    example = torch.randn(*shape)
    start = time.perf_counter()
    try:
        proto = export_model(loaded.model, example, target=args.target, dynamic=dynamic, fp16=args.fp16,
                             opset=args.opset, exporter=args.exporter, progress=step)
    except Exception as exc:
        if os.environ.get("POOLEXPORT_DEBUG"):
            raise
        raise UsageError(f"export failed: {describe_export_error(exc)}") from None
    return proto, time.perf_counter() - start


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_NO_ONNX_FUNCTION = re.compile(r"No ONNX function found for <OpOverload\(op='([^']+)', overload='([^']+)'\)>\.?"
                               r"(?: Failure message: ([^\n]*))?")


def describe_export_error(exc: BaseException) -> str:
    """What went wrong in torch.export / torch.onnx, in a few lines: the unsupported
    operator's name when there is one, no ANSI colour codes, no advice boilerplate."""
    texts = []
    e: Optional[BaseException] = exc
    while e is not None and len(texts) < 8:  # the cause chain holds the dispatch error
        texts.append(_ANSI.sub("", str(e)))
        e = e.__cause__ or e.__context__
    text = "\n".join(texts)
    m = _NO_ONNX_FUNCTION.search(text)
    if m:
        op = m.group(1).replace(".", "::", 1) + "." + m.group(2)
        detail = f" ({m.group(3).strip()})" if m.group(3) else ""
        return (f"unsupported operator {op}: torch.onnx has no ONNX translation for it{detail}; replace it in "
                "the model or register a translation (torch.onnx.export custom_translation_table)")
    body = texts[0]
    if "## Exception summary" in body:
        body = body.split("## Exception summary", 1)[1]
    lines = [ln.strip() for ln in body.splitlines()]
    lines = [ln for ln in lines if ln and ln != "⬆️" and not ln.startswith("(Refer to")]
    head = f"{type(exc).__name__}: " if type(exc).__name__ not in ("ValueError", "UsageError") else ""
    return head + "\n  ".join(ln[:300] for ln in lines[:6]) if lines else type(exc).__name__



def _check(proto) -> None:
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise UsageError(f"onnx.checker rejected the export: {_one_line(exc)}") from None


def _save(proto, output: Path) -> None:
    import onnx

    try:
        onnx.save(proto, str(output))
    except OSError as exc:
        raise UsageError(f"-o: cannot write {output}: {exc.strerror or exc}") from None


def _fmt(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2e}"


def _table(report) -> list:
    """The parity table (fits 80 columns) and, below it, one line per note (skip reasons, and what
    a runtime reports beyond pass/fail, such as OpenVINO's error at its default precision)."""
    from rich.table import Table

    precision = getattr(report, "reference", "float64")
    table = Table(title=f"parity vs PyTorch {precision.split(' ')[0]}\n{report.dtype}: rtol {report.tolerance.rtol:g}, "
                        f"atol {report.tolerance.atol:g}; shapes "
                        + ", ".join("x".join(map(str, s)) for s in report.input_shapes))
    for col in ("runtime", "max abs err", "max rel err", "result", "time"):
        table.add_column(col, justify="left" if col in ("runtime", "result") else "right", no_wrap=True)
    style = {"pass": "green", "fail": "bold red", "error": "bold red", "skip": "dim"}
    notes = []
    if precision != "float64":  # the torch row then compares the model with itself
        notes.append(f"[{len(notes) + 1}] reference: PyTorch in {precision}")
    for r in report.summary():
        status = f"[{style[r.status]}]{r.status}[/]"
        for text in (r.reason, r.note):
            if text:
                notes.append(f"[{len(notes) + 1}] {r.runtime}: {text}")
                status += f" [{len(notes)}]"
        table.add_row(r.runtime, _fmt(r.max_abs), _fmt(r.max_rel), status,
                      "-" if r.seconds is None else f"{r.seconds * 1000:.1f} ms")
    from rich.markup import escape

    return [table] + [escape(n) for n in notes]


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
        if argv[:1] == ["--version"]:
            print(version_text())
            return 0
        _discover()
        if argv and argv[0] in _COMMANDS:
            cmd = _COMMANDS[argv[0]]
            p = _Parser(prog=f"{PROG} {cmd.name}", description=cmd.help or None)
            cmd.add_arguments(p)
            return int(cmd.run(p.parse_args(argv[1:])) or 0)
        args = _export_parser().parse_args(argv)
        args.argv = argv  # the contained child runs the same command
        return run_export(args)
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
    # ``python -m poolexport.cli``: run the module under its package name, so that the
    # subcommands' ``from poolexport.cli import UsageError`` is this class, not a copy
    from poolexport.cli import main as _main

    sys.exit(_main())
