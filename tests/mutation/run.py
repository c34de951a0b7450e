"""Plant listed bugs one at a time in a copy of the repository; report those no test catches.

    python tests/mutation/run.py                  # every entry of tests/mutation/mutations.toml
    python tests/mutation/run.py NAME [NAME ...]  # only these entries
    python tests/mutation/run.py --list           # print the entries and exit

A development tool, not part of ``pytest -q``. It copies the working tree (git's tracked
and untracked, not ignored, files) to a temporary directory, builds the CPU-only ONNX
Runtime library there (CMake, ``POOLEXPORT_CUDA=OFF``), runs the union of the entries'
tests once unmutated (they must pass), then for each entry: replaces its ``original``
text with ``mutated``, rebuilds the library when the file is C/C++/CUDA, runs the entry's
tests with ``pytest -x`` (``PYTHONPATH`` = the copy, ``POOLEXPORT_ORT_LIBRARY`` = the
copy's library), and restores the file. Exit status 0 when every mutation was caught.
Needs the package's dependencies and test extra installed (non-editable, or editable in
a mode that PYTHONPATH can override); the script checks that poolexport is imported from
the copy.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
LIST = Path(__file__).with_name("mutations.toml")
FIELDS = ("name", "file", "original", "mutated", "tests", "description")
NATIVE = {".h", ".hpp", ".cc", ".cpp", ".cu", ".cuh", ".inc"}  # a mutation here rebuilds the library


def load(path: Path) -> list[dict]:
    entries = tomllib.loads(path.read_text())["mutation"]
    seen = set()
    for m in entries:
        missing = [f for f in FIELDS if f not in m]
        if missing:
            sys.exit(f"{path}: entry {m.get('name', '?')!r} lacks {', '.join(missing)}")
        if m["name"] in seen:
            sys.exit(f"{path}: duplicate name {m['name']!r}")
        if m["original"] == m["mutated"]:
            sys.exit(f"{path}: {m['name']!r} does not change anything")
        seen.add(m["name"])
    return entries


def copy_tree(dst: Path) -> None:
    """The working tree as git sees it (tracked and untracked, ignored files left out),
    with the installed layout's poolexport.models and poolexport.serve (pyproject's
    wheel.packages) as links to the top-level folders, so a mutation there is imported."""
    _copy_files(dst)
    for sub in ("models", "serve"):
        if (dst / sub).is_dir() and not (dst / "poolexport" / sub).exists():
            (dst / "poolexport" / sub).symlink_to(Path("..") / sub)


def _copy_files(dst: Path) -> None:
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True).stdout
        files = [f for f in out.decode().split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(ROOT, dst, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".git", "build", "__pycache__", "*.so", "*.egg-info"))
        return
    for f in files:
        src = ROOT / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)


def known_headers() -> str | None:
    """ONNX Runtime headers a previous build of this checkout found (saves the download)."""
    if os.environ.get("ONNXRUNTIME_INCLUDE_DIR"):
        return os.environ["ONNXRUNTIME_INCLUDE_DIR"]
    for cache in sorted(ROOT.glob("build/*/CMakeCache.txt")):
        m = re.search(r"^ONNXRUNTIME_INCLUDE_DIR:PATH=(.+)$", cache.read_text(), re.M)
        if m and Path(m.group(1), "onnxruntime_lite_custom_op.h").exists():
            return m.group(1)
    return None


class Library:
    """The copy's CPU-only custom-op library, in <copy>/build/mutation (where the tests'
    own build helpers look for the headers it found)."""

    def __init__(self, tree: Path, jobs: int):
        self.tree, self.build_dir, self.jobs = tree, tree / "build" / "mutation", jobs
        cmd = ["cmake", "-S", str(tree), "-B", str(self.build_dir), "-DPOOLEXPORT_CUDA=OFF", "-DCMAKE_BUILD_TYPE=Release"]
        headers = known_headers()
        if headers:
            cmd.append(f"-DONNXRUNTIME_INCLUDE_DIR={headers}")
        self._run(cmd)

    def _run(self, cmd) -> None:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")

    def build(self) -> Path:
        self._run(["cmake", "--build", str(self.build_dir), "-j", str(self.jobs), "--target", "poolexport_ort"])
        return next(self.build_dir.rglob("libpoolexport_ort.so"))


def pytest_env(tree: Path, library: Path) -> dict:
    env = dict(os.environ, POOLEXPORT_ORT_LIBRARY=str(library), PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def run_tests(tree: Path, env: dict, tests: list[str], timeout: float) -> tuple[str, str, float]:
    """(status, detail, seconds): status "pass", "fail", "error" or "timeout"."""
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", f"no result after {timeout:.0f} s", time.monotonic() - start
    seconds = time.monotonic() - start
    lines = proc.stdout.splitlines()
    if proc.returncode == 0:
        return "pass", lines[-1] if lines else "", seconds
    failed = [ln for ln in lines if ln.startswith(("FAILED ", "ERROR "))]
    detail = failed[0] if failed else (lines[-1] if lines else proc.stderr.strip()[-300:])
    return ("fail" if proc.returncode == 1 else "error"), detail[:300], seconds


def plant(tree: Path, m: dict) -> str | None:
    """Write the mutation into the copy; returns the original file text (None if the
    entry no longer matches the code)."""
    path = tree / m["file"]
    if not path.is_file():
        return None
    text = path.read_text()
    count = text.count(m["original"])
    which = m.get("occurrence")
    if count == 0 or (which is None and count > 1) or (which is not None and not 1 <= which <= count):
        return None
    at = -1
    for _ in range(which or 1):
        at = text.index(m["original"], at + 1)
    path.write_text(text[:at] + m["mutated"] + text[at + len(m["original"]):])
    return text


class Worker:
    """One copy of the tree with its own library build: mutants run on several at once."""

    def __init__(self, root: Path, jobs: int):
        self.tree = root / "repo"
        copy_tree(self.tree)
        self.lib = Library(self.tree, jobs)
        self.env = pytest_env(self.tree, self.lib.build())
        self.dirty = False  # the library was built from a mutated file

    def check_import(self) -> None:
        where = subprocess.run([sys.executable, "-c", "import poolexport; print(poolexport.__file__)"], cwd=self.tree,
                               env=self.env, capture_output=True, text=True)
        if where.returncode or not Path(where.stdout.strip()).resolve().is_relative_to(self.tree.resolve()):
            sys.exit(f"poolexport is imported from {where.stdout.strip() or where.stderr.strip()[-300:]}, not from the "
                     "copy: an editable install shadows PYTHONPATH; use `pip install .` (non-editable) to run this")

    def run(self, m: dict, timeout: float) -> tuple[str, str, float]:
        original = plant(self.tree, m)
        if original is None:
            return "stale", "the original text is not in the file (once); update the entry", 0.0
        native = Path(m["file"]).suffix in NATIVE
        try:
            if native or self.dirty:
                self.env = pytest_env(self.tree, self.lib.build())
            status, detail, seconds = run_tests(self.tree, self.env, m["tests"], timeout)
        except RuntimeError as exc:
            # a mutant that does not compile is caught by the compiler, not by a test
            status, detail, seconds = "build-error", str(exc).strip().splitlines()[-1][:300], 0.0
        finally:
            (self.tree / m["file"]).write_text(original)
        self.dirty = native
        verdict = {"pass": "SURVIVED", "fail": "killed", "timeout": "killed", "error": "error"}.get(status, status)
        return verdict, detail, seconds


def per_file_table(results) -> str:
    """Kill rate per file: killed / (killed + survived); build errors and stale entries apart."""
    rows = {}
    for m, verdict, _, _ in results:
        r = rows.setdefault(m["file"], {"killed": 0, "SURVIVED": 0, "other": 0})
        r[verdict if verdict in ("killed", "SURVIVED") else "other"] += 1
    lines = [f"{'file':52} killed survived  other  kill rate"]
    for f in sorted(rows):
        r = rows[f]
        n = r["killed"] + r["SURVIVED"]
        rate = f"{100 * r['killed'] / n:5.1f}%" if n else "    -"
        lines.append(f"{f:52} {r['killed']:6} {r['SURVIVED']:8} {r['other']:6}  {rate}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="entries to run (default: all)")
    ap.add_argument("--file", type=Path, default=LIST, help="the mutation list (default: %(default)s)")
    ap.add_argument("--list", action="store_true", help="print the entries and exit")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copies and print their path")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the tests")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per test run (default: %(default)s)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="build jobs (default: %(default)s)")
    ap.add_argument("--workers", type=int, default=1, help="mutants run at once, each in its own copy (default: 1)")
    ap.add_argument("--report", type=Path, help="write every result (name, file, verdict, detail) as JSON")
    args = ap.parse_args(argv)

    entries = load(args.file)
    if args.names:
        unknown = set(args.names) - {m["name"] for m in entries}
        if unknown:
            sys.exit(f"unknown mutation(s): {', '.join(sorted(unknown))}")
        entries = [m for m in entries if m["name"] in args.names]
    if args.list:
        for m in entries:
            print(f"{m['name']:28} {m['file']}\n{'':28} {m['description']}")
        return 0

    import concurrent.futures
    import json
    import queue

    tmp = Path(tempfile.mkdtemp(prefix="poolexport-mutation-"))
    results = []
    try:
        print(f"copies under {tmp}; building the CPU library in {args.workers} ...", flush=True)
        workers = [Worker(tmp / f"w{i}", args.jobs) for i in range(args.workers)]
        workers[0].check_import()
        if not args.no_baseline:
            tests = list(dict.fromkeys(t for m in entries for t in m["tests"]))
            status, detail, seconds = run_tests(workers[0].tree, workers[0].env, tests, args.timeout * 2)
            print(f"baseline (no mutation): {status} in {seconds:.0f} s: {detail}", flush=True)
            if status != "pass":
                print("the unmutated tests must pass before mutations mean anything")
                return 2
        idle: queue.Queue = queue.Queue()
        for w in workers:
            idle.put(w)

        def one(m):
            w = idle.get()
            try:
                return m, *w.run(m, args.timeout)
            finally:
                idle.put(w)

        with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
            for m, verdict, detail, seconds in pool.map(one, entries):
                results.append((m, verdict, detail, seconds))
                print(f"[{verdict}] {' ' * max(0, 8 - len(verdict))}{m['name']} ({seconds:.0f} s): {detail}", flush=True)
    finally:
        if args.keep:
            print(f"kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    if args.report:
        args.report.write_text(json.dumps([{"name": m["name"], "file": m["file"], "verdict": v, "detail": d,
                                            "seconds": round(s, 1), "description": m["description"]}
                                           for m, v, d, s in results], indent=1))
    survived = [m["name"] for m, v, _, _ in results if v == "SURVIVED"]
    other = [f"{m['name']} ({v})" for m, v, _, _ in results if v not in ("killed", "SURVIVED")]
    killed = sum(v == "killed" for _, v, _, _ in results)
    print(f"\n{per_file_table(results)}")
    print(f"\n{len(results)} mutations: {killed} killed, {len(survived)} survived"
          + (f": {', '.join(survived)}" if survived else "") + (f"; not run cleanly: {', '.join(other)}" if other else ""))
    return 0 if not survived and not other else 1


if __name__ == "__main__":
    sys.exit(main())
