"""Second red-team round (tests/_attacks_round2.py) against plain torch and poolexport.

* ``test_payload_runs_under_plain_torch``: plain torch 2.13, doing what a user does with the
  file, runs the payload (creates the marker; for ``ts_cr_hidden_call_read`` the loaded
  module holds the bytes of a file of the user's).
* ``test_poolexport_refuses``: ``poolexport FILE -o out.onnx --no-parity`` refuses the file
  in its file checks: non-zero exit, the last stderr line is the one ``poolexport: error:``
  line, naming the file and saying it refuses it (a load that fails because the sandbox
  denied the payload is not a refusal by the checks), no out.onnx, no marker, no secret
  in any output.
* ``test_python_api_refuses``: ``poolexport._loading.load_model`` (layers 1 and 2, no
  sandbox, as the README says) refuses the file without running the payload.
* ``test_sandbox_contains_child``: for the parent/child attack, run with the test-only
  switch that loads unchecked inside the enforced sandbox: nothing of the child's choosing
  appears outside the scratch folder but ``out.onnx``.

Attacks that get through are kept as failing tests on purpose.
"""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

import _attacks
import _attacks_round2 as R2
from _attacks_round2 import ATTACKS, TRIGGERS

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 600
CHECKED = [n for n, a in ATTACKS.items() if a.group != "C"]
SANDBOX_ONLY = [n for n, a in ATTACKS.items() if a.group == "C"]

_API = ("import sys\nfrom poolexport._loading import load_model, LoadError\n"
        "try:\n    load_model(sys.argv[1])\nexcept LoadError as exc:\n    print('REFUSED', exc)\n"
        "else:\n    print('LOADED')\n")


@dataclass
class Run:
    file: Path
    marker: Path
    cmd: list
    returncode: int
    stdout: str
    stderr: str
    marker_existed: bool
    output: Path | None = None
    output_written: bool = False
    secret_leaked: bool = False

    def describe(self) -> str:
        tail = "\n".join(self.stderr.strip().splitlines()[-12:])
        return (f"$ {' '.join(map(str, self.cmd))}\nexit {self.returncode}; marker {self.marker_existed}; "
                f"output {self.output_written}; secret in output {self.secret_leaked}\n"
                f"stdout ends: {self.stdout.strip()[-300:]}\nstderr ends:\n{tail}")


def _job(kind: str, name: str, folder: Path) -> dict:
    attack = ATTACKS[name]
    marker = folder / "PWNED"
    file = attack.build(folder / f"evil{attack.suffix}", marker)
    assert not marker.exists(), f"{name}: building the file ran the payload"
    env = attack.env(marker)
    output = None
    if kind == "plain":
        cmd = [sys.executable, "-c", TRIGGERS[attack.trigger], str(file)]
    elif kind == "api":
        cmd = [sys.executable, "-c", _API, str(file)]
    else:
        output = folder / "out.onnx"
        cmd = [sys.executable, "-m", "poolexport.cli", str(file), "-o", str(output), "--no-parity", *attack.cli_args]
        if kind == "sandbox":
            env = {**env, **attack.cli_env}
    return {"file": file, "marker": marker, "cmd": cmd, "env": _attacks.cli_env(env), "output": output, "cwd": folder}


def _execute(job: dict) -> Run:
    try:
        p = subprocess.run(job["cmd"], env=job["env"], cwd=job["cwd"], capture_output=True, text=True, timeout=TIMEOUT)
        code, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as exc:
        code, out, err = -999, str(exc.stdout or ""), f"{exc.stderr or ''}\n(timed out)"
    output = job["output"]
    leaked = any(f.is_file() and R2.secret_floats() in f.read_bytes() for f in job["cwd"].iterdir()
                 if f.suffix in (".onnx", ".data", ".json"))
    return Run(job["file"], job["marker"], job["cmd"], code, out, err, job["marker"].exists(), output,
               bool(output and output.exists()), leaked)


def _keys(session) -> list[tuple]:
    kinds = {"test_payload_runs_under_plain_torch": "plain", "test_poolexport_refuses": "cli",
             "test_python_api_refuses": "api", "test_sandbox_contains_child": "sandbox"}
    keys = []
    for item in session.items:
        if Path(str(item.fspath)).resolve() != Path(__file__).resolve():
            continue  # the other attack file's tests (the two files share test names)
        kind = kinds.get(getattr(item, "originalname", None))
        if kind and item.module.__name__ == __name__:
            keys.append((kind, item.callspec.params["name"]))
    return list(dict.fromkeys(keys))


@pytest.fixture(scope="session")
def runs(request, tmp_path_factory) -> dict:
    import poolexport  # noqa: F401

    _attacks.use_scratch_folder(tmp_path_factory.mktemp("round2-scratch"))
    root = tmp_path_factory.mktemp("round2")
    jobs = {}
    for key in _keys(request.session):
        folder = root / "-".join(key)
        folder.mkdir()
        jobs[key] = _job(key[0], key[1], folder)
    with ThreadPoolExecutor(max_workers=max(2, min(8, os.cpu_count() or 2))) as pool:
        futures = {key: pool.submit(_execute, job) for key, job in jobs.items()}
        return {key: f.result() for key, f in futures.items()}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_payload_runs_under_plain_torch(name, runs):
    run = runs[("plain", name)]
    if name == "ts_cr_hidden_call_read":
        assert repr(R2.SECRET) in run.stdout, f"plain torch did not read the file\n{run.describe()}"
    else:
        assert run.marker_existed, f"{name}: plain torch did not run the payload\n{run.describe()}"


@pytest.mark.parametrize("name", CHECKED)
def test_poolexport_refuses(name, runs):
    run = runs[("cli", name)]
    assert not run.marker_existed, f"{name}: the payload ran under poolexport\n{run.describe()}"
    assert not run.secret_leaked, f"{name}: the user's file is in poolexport's output\n{run.describe()}"
    assert not run.output_written, f"{name}: poolexport wrote {run.output}\n{run.describe()}"
    assert run.returncode != 0, run.describe()
    assert "Traceback" not in run.stderr, run.describe()
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("poolexport: error:"), run.describe()
    assert str(run.file) in lines[-1], f"the error line does not name {run.file}\n{run.describe()}"
    assert sum(line.startswith("poolexport: error:") for line in lines) == 1, run.describe()
    assert "refusing" in lines[-1], f"{name}: not refused by the file checks (the load itself failed)\n{run.describe()}"


@pytest.mark.parametrize("name", CHECKED)
def test_python_api_refuses(name, runs):
    run = runs[("api", name)]
    assert not run.marker_existed, f"{name}: load_model ran the payload\n{run.describe()}"
    assert "REFUSED" in run.stdout and "refusing" in run.stdout, run.describe()


@pytest.mark.parametrize("name", SANDBOX_ONLY)
def test_sandbox_contains_child(name, runs):
    run = runs[("sandbox", name)]
    assert "sandbox: writes only under" in run.stdout + run.stderr, f"sandbox not enforced here\n{run.describe()}"
    assert not run.marker_existed, \
        f"{name}: the parent moved a file named by the contained child into the output folder\n{run.describe()}"
    # and the parent refuses the child's ONNX, which names external data its export never writes
    assert run.returncode != 0 and not run.output_written, run.describe()
    assert "external data" in run.stderr.strip().splitlines()[-1], run.describe()
