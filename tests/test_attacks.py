"""The review's crafted model files (tests/_attacks.py) against plain torch and against
``poolexport FILE -o out.onnx``.

* ``test_payload_runs_under_plain_torch``: each file is a real attack: plain torch 2.13,
  doing what a user does with the file (``_attacks.TRIGGERS``), runs its payload, which
  creates a marker file.
* ``test_poolexport_refuses``: ``poolexport FILE -o out.onnx`` (``--no-parity``; a few also
  with the parity check) refuses each file without ``--trust-pickle``: non-zero exit, the
  last line of stderr is one ``poolexport: error:`` line naming the file, no traceback, no
  marker, no ONNX file.
* ``test_ordinary_files_still_export``: ordinary ``torch.export.save`` and ``torch.jit.save``
  files of the example networks, the shipped examples, and a harmless TorchScript archive
  named ``x.pt2``, export with exit 0 without ``--trust-pickle``.

Every command runs in its own process (its own folder, its own marker). A command costs
seconds (importing torch), so the first test that needs results builds every selected
file and runs every selected command at once, in parallel, and the tests read the results.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import _attacks
from _attacks import ATTACKS, TRIGGERS

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TIMEOUT = 600

# the attacks whose refusal is also checked with the parity check on (it runs the torch model)
PARITY_CASES = ("guard_message_breakout", "buffer_name_codegen")
REFUSE_CASES = [(name, False) for name in ATTACKS] + [(name, True) for name in PARITY_CASES]

# ordinary files: (how the file is made, whether the parity check runs)
ORDINARY = {
    "example:resnet_softpool.pt2": False,
    "example:newcbam.ts": False,
    "export:eca.pt2": True,
    "export:se_effnet.pt2": False,
    "jit:eca.pt": False,
    "jit:se_effnet.pt": False,
    "torchscript_named:x.pt2": False,
}


@pytest.fixture(scope="session", autouse=True)
def _scratch_in_pytest_tmp(tmp_path_factory):
    _attacks.use_scratch_folder(tmp_path_factory.mktemp("attack-scratch"))


@dataclass
class Run:
    file: Path
    cmd: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    marker: Path | None = None
    marker_existed: bool = False
    output: Path | None = None
    output_written: bool = False

    def describe(self) -> str:
        tail = "\n".join(self.stderr.strip().splitlines()[-15:])
        return f"$ {' '.join(self.cmd)}\nexit {self.returncode} after {self.seconds:.1f} s; stderr ends:\n{tail}"


def _cli(file: Path, output: Path, parity: bool) -> list[str]:
    cmd = [sys.executable, "-m", "poolexport.cli", str(file), "-o", str(output)]
    return cmd if parity else cmd + ["--no-parity"]


# ------------------------------------------------------------------ preparing each command (in this process)
def _build_attack(folder: Path, name: str) -> tuple[Path, Path]:
    attack = ATTACKS[name]
    marker = folder / "PWNED"
    file = attack.build(folder / f"evil{attack.suffix}", marker)
    assert not marker.exists(), f"{name}: building the file ran the payload"
    return file, marker


def _prepare_plain(folder: Path, name: str) -> dict:
    file, marker = _build_attack(folder, name)
    return {"file": file, "cmd": [sys.executable, "-c", TRIGGERS[ATTACKS[name].trigger], str(file)], "marker": marker}


def _prepare_cli(folder: Path, name: str, parity: bool) -> dict:
    file, marker = _build_attack(folder, name)
    output = folder / "out.onnx"
    return {"file": file, "cmd": _cli(file, output, parity), "marker": marker, "output": output}


def _ordinary_file(folder: Path, case: str) -> Path:
    how, name = case.split(":", 1)
    if how == "example":
        return Path(shutil.copyfile(EXAMPLES / name, folder / name))
    if how == "torchscript_named":
        return _attacks.build_torchscript_named_pt2(folder / name)
    from poolexport.models import create_model, default_input_shape

    arch = name.split(".")[0]
    torch.manual_seed(0)
    model = create_model(arch).eval()
    shape = list(default_input_shape(arch))
    shape[0] = 2  # torch.export specializes a size-1 dimension
    x = torch.randn(*shape)
    path = folder / name
    if how == "export":
        program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
        torch.export.save(program, str(path))
    elif how == "jit":
        with torch.no_grad():
            traced = torch.jit.trace(model, (x,), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={"poolexport.json": json.dumps({"input_shape": shape})})
    else:
        raise ValueError(case)
    return path


def _prepare_ordinary(folder: Path, case: str, parity: bool) -> dict:
    file = _ordinary_file(folder, case)
    output = folder / "out.onnx"
    return {"file": file, "cmd": _cli(file, output, parity), "output": output}


# ------------------------------------------------------------------ running them all at once
def _execute(job: dict, cwd: Path) -> Run:
    start = time.perf_counter()
    try:
        proc = subprocess.run(job["cmd"], cwd=cwd, env=_attacks.cli_env(), capture_output=True, text=True,
                              timeout=TIMEOUT)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, out, err = -999, str(exc.stdout or ""), f"{exc.stderr or ''}\n(timed out after {TIMEOUT} s)"
    run = Run(job["file"], job["cmd"], code, out, err, time.perf_counter() - start,
              marker=job.get("marker"), output=job.get("output"))
    run.marker_existed = bool(run.marker and run.marker.exists())
    run.output_written = bool(run.output and run.output.exists())
    return run


# Plain torch, many files per process: the parent imports torch and poolexport once, then
# forks one child per file; the child runs the file's trigger (exactly what `python -c
# TRIGGER FILE` runs) with its output in a log beside the file, and exits.
_PLAIN_BATCH = """
import json, os, signal, sys, traceback
import torch, poolexport
for trigger, file, log, timeout in json.loads(sys.argv[1]):
    pid = os.fork()
    if pid == 0:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        signal.alarm(timeout)
        code = 0
        try:
            sys.argv = ["-c", file]
            exec(compile(trigger, "<trigger>", "exec"), {"__name__": "__main__"})
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps([file, os.waitstatus_to_exitcode(status)]), flush=True)
"""


def _execute_plain_batch(batch: list[tuple[tuple, dict, Path]]) -> dict[tuple, Run]:
    start = time.perf_counter()
    work = [[TRIGGERS[ATTACKS[key[1]].trigger], str(job["file"]), str(folder / "plain.log"), TIMEOUT]
            for key, job, folder in batch]
    proc = subprocess.run([sys.executable, "-c", _PLAIN_BATCH, json.dumps(work)], env=_attacks.cli_env(),
                          cwd=batch[0][2], capture_output=True, text=True, timeout=TIMEOUT * len(batch))
    codes = dict(json.loads(line) for line in proc.stdout.splitlines() if line.startswith("["))
    results = {}
    for key, job, folder in batch:
        log = folder / "plain.log"
        err = log.read_text(errors="replace") if log.exists() else proc.stderr
        run = Run(job["file"], job["cmd"], codes.get(str(job["file"]), -998), "", err,
                  time.perf_counter() - start, marker=job["marker"])
        run.marker_existed = run.marker.exists()
        results[key] = run
    return results


def _selected_keys(session) -> list[tuple]:
    keys = []
    for item in session.items:
        if Path(str(item.fspath)).resolve() != Path(__file__).resolve():
            continue  # the other attack file's tests (the two files share test names)
        params = getattr(getattr(item, "callspec", None), "params", {})
        name = getattr(item, "originalname", None)
        if name == "test_payload_runs_under_plain_torch":
            keys.append(("plain", params["name"]))
        elif name == "test_poolexport_refuses":
            keys.append(("cli", params["name"], params["parity"]))
        elif name == "test_ordinary_files_still_export":
            keys.append(("ordinary", params["case"], ORDINARY[params["case"]]))
    return list(dict.fromkeys(keys))


def _slowest_first(key: tuple) -> int:
    """Exports that succeed first, then parity checks, then the rest, so that the short
    commands fill in around the long ones."""
    if key[0] == "ordinary":
        return 0
    return 1 if key[2] else 2


@pytest.fixture(scope="session")
def runs(request, tmp_path_factory) -> dict:
    """Every selected command's :class:`Run`, keyed ``("plain", name)``, ``("cli", name,
    parity)``, ``("ordinary", case, parity)``. Files are built here, one after another; the
    commands then run in parallel."""
    import poolexport  # noqa: F401  (the poolexport:: operators the base networks use)

    root = tmp_path_factory.mktemp("attacks")
    jobs: dict[tuple, tuple[dict, Path]] = {}
    for key in _selected_keys(request.session):
        folder = root / "-".join(str(k) for k in key).replace(":", "_")
        folder.mkdir(parents=True)
        if key[0] == "plain":
            job = _prepare_plain(folder, key[1])
        elif key[0] == "cli":
            job = _prepare_cli(folder, key[1], key[2])
        else:
            job = _prepare_ordinary(folder, key[1], key[2])
        jobs[key] = (job, folder)
    workers = max(2, os.cpu_count() or 2)
    plain = [(key, *jobs[key]) for key in jobs if key[0] == "plain"]
    batches = [plain[i::workers] for i in range(min(workers, len(plain)))]
    order = sorted((k for k in jobs if k[0] != "plain"), key=_slowest_first)
    results: dict[tuple, Run] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_execute_plain_batch, batch) for batch in batches]
        singles = {key: pool.submit(_execute, *jobs[key]) for key in order}
        for future in futures:
            results.update(future.result())
        results.update({key: future.result() for key, future in singles.items()})
    return results


# ------------------------------------------------------------------ the tests
@pytest.mark.parametrize("name", list(ATTACKS))
def test_payload_runs_under_plain_torch(name, runs):
    """Without poolexport, torch 2.13 itself runs the payload: the file is a real attack."""
    run = runs[("plain", name)]
    assert run.marker_existed, f"{name}: plain torch did not run the payload\n{run.describe()}"


@pytest.mark.parametrize("name,parity", REFUSE_CASES,
                         ids=[f"{n}-{'parity' if p else 'no-parity'}" for n, p in REFUSE_CASES])
def test_poolexport_refuses(name, parity, runs):
    run = runs[("cli", name, parity)]
    assert not run.marker_existed, f"{name}: the payload ran under poolexport\n{run.describe()}"
    assert not run.output_written, f"{name}: poolexport wrote {run.output}\n{run.describe()}"
    assert run.returncode != 0, run.describe()
    assert "Traceback" not in run.stderr, run.describe()
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("poolexport: error:"), run.describe()
    assert str(run.file) in lines[-1] or str(run.file.resolve()) in lines[-1], \
        f"the error line does not name {run.file}\n{run.describe()}"
    assert sum(line.startswith("poolexport: error:") for line in lines) == 1, run.describe()


@pytest.mark.parametrize("case", list(ORDINARY))
def test_ordinary_files_still_export(case, runs):
    run = runs[("ordinary", case, ORDINARY[case])]
    assert run.returncode == 0, run.describe()
    assert run.output_written, run.describe()


# ------------------------------------------------------------------ the fixtures themselves (in this process, fast)
@pytest.mark.parametrize("name", ["dual_directory_pt2", "dual_directory_torchscript"])
def test_dual_directory_files_are_two_archives(name, tmp_path):
    """Python's zipfile reads the clean base archive, torch's reader a different one, from
    the same bytes (so a check that reads with zipfile judges an archive torch never loads)."""
    attack = ATTACKS[name]
    path = attack.build(tmp_path / f"evil{attack.suffix}", tmp_path / "PWNED")
    base = _attacks.base_pt2() if attack.suffix == ".pt2" else _attacks.base_ts()
    with zipfile.ZipFile(path) as seen_by_python, zipfile.ZipFile(base) as clean:
        assert seen_by_python.testzip() is None
        assert {n: seen_by_python.read(n) for n in seen_by_python.namelist()} == \
            {n: clean.read(n) for n in clean.namelist()}
    reader = torch._C.PyTorchFileReader(io.BytesIO(path.read_bytes()))
    with zipfile.ZipFile(base) as clean:
        prefix = clean.namelist()[0].split("/", 1)[0]
        differing = [n for n in reader.get_all_records()
                     if f"{prefix}/{n}" not in clean.namelist() or reader.get_record(n) != clean.read(f"{prefix}/{n}")]
    assert differing, "torch's reader sees the same archive as Python's zipfile"
    assert not (tmp_path / "PWNED").exists()
