"""The sandbox alone: with the file checks switched off (a test-only switch that works only
inside an enforced sandbox), a payload that runs in the contained child still cannot write
outside its scratch folder, exec a program or open a socket.

Each payload is a pickle in a .pt2's sample inputs (torch.export.load unpickles it with a
full unpickler once the checks are off). It first writes a line to stderr, so the test
sees that it ran, then tries its action; the marker outside the scratch folder must not
appear, and the payload reports the error it got.
"""
import os
import pickle
import subprocess
import sys

import pytest

import _crafted

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is enforced on Linux only")


def _landlock_abi() -> int:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc.syscall(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)


class _Exec:
    """``exec(code)`` at unpickling time."""

    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


def _payload(action: str) -> bytes:
    code = ("import sys\nsys.stderr.write('PAYLOAD RAN\\n')\ntry:\n"
            + "".join(f"    {line}\n" for line in action.splitlines())
            + "except Exception as exc:\n    sys.stderr.write(f'PAYLOAD BLOCKED {type(exc).__name__}\\n')\n")
    return pickle.dumps(_Exec(code), protocol=2)


def _pt2_with(tmp_path, action: str):
    path = tmp_path / "evil.pt2"
    _crafted._rewrite_zip(_crafted.PT2, path,
                          lambda n, d: _payload(action) if n.endswith("data/sample_inputs/model.pt") else d)
    return path


def _run(tmp_path, path, unchecked: bool):
    env = {k: v for k, v in os.environ.items() if k not in ("POOLEXPORT_DEBUG", "POOLEXPORT_TEST_UNCHECKED_LOAD")}
    if unchecked:
        env["POOLEXPORT_TEST_UNCHECKED_LOAD"] = "1"
    return subprocess.run([sys.executable, "-m", "poolexport.cli", str(path), "-o", str(tmp_path / "out.onnx"),
                           "--no-parity"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(autouse=True)
def _needs_landlock():
    if _landlock_abi() < 1:
        pytest.skip("this kernel has no Landlock (needs Linux >= 5.13 with landlock in the LSM list)")


@pytest.mark.parametrize("action, marker_name", [
    ("open(MARKER, 'w').write('pwned')", "written"),
    ("import os\nos.system('touch ' + MARKER)", "executed"),
    ("import subprocess\nsubprocess.run(['/bin/sh', '-c', 'touch ' + MARKER])", "executed-subprocess"),
    ("import os\nos.rename(__import__('tempfile').mkstemp()[1], MARKER)", "renamed"),
    ("import shutil\nshutil.copy('/etc/hostname', MARKER)", "copied"),
], ids=["write", "os.system", "subprocess", "rename-out-of-scratch", "copy"])
def test_sandbox_alone_stops_the_payload(tmp_path, action, marker_name):
    marker = tmp_path / marker_name
    path = _pt2_with(tmp_path, action.replace("MARKER", repr(str(marker))))
    proc = _run(tmp_path, path, unchecked=True)
    assert "PAYLOAD RAN" in proc.stderr, proc.stderr[-2000:]  # the checks really were off
    assert "PAYLOAD BLOCKED" in proc.stderr or not marker.exists(), proc.stderr[-2000:]
    assert not marker.exists()


def test_sandbox_alone_blocks_sockets(tmp_path):
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(0.5)
        port = server.getsockname()[1]
        path = _pt2_with(tmp_path, f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)")
        proc = _run(tmp_path, path, unchecked=True)
        assert "PAYLOAD RAN" in proc.stderr
        assert "PAYLOAD BLOCKED PermissionError" in proc.stderr, proc.stderr[-2000:]
        with pytest.raises(socket.timeout):
            server.accept()


def test_the_switch_does_nothing_without_it(tmp_path):
    """Without the switch, the same file is refused by the checks before anything runs."""
    marker = tmp_path / "written"
    path = _pt2_with(tmp_path, f"open({str(marker)!r}, 'w').write('pwned')")
    proc = _run(tmp_path, path, unchecked=False)
    assert proc.returncode == 2
    assert "PAYLOAD RAN" not in proc.stderr
    assert "sample_inputs" in proc.stderr.strip().splitlines()[-1]


def test_the_switch_is_ignored_outside_the_sandbox(tmp_path):
    """The in-process loader (the Python API, --trust-pickle's path) never reads the switch."""
    env = dict(os.environ, POOLEXPORT_TEST_UNCHECKED_LOAD="1")
    marker = tmp_path / "written"
    path = _pt2_with(tmp_path, f"open({str(marker)!r}, 'w').write('pwned')")
    code = (f"from poolexport._loading import load_model, LoadError\n"
            f"try:\n    load_model({str(path)!r})\nexcept LoadError as e:\n    print('refused', e)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "refused" in proc.stdout, proc.stderr[-2000:]
    assert not marker.exists()


def test_cli_reports_the_sandbox(tmp_path):
    import json

    proc = subprocess.run([sys.executable, "-m", "poolexport.cli", str(_crafted.PT2), "-o", str(tmp_path / "o.onnx"),
                           "--no-parity", "--json", str(tmp_path / "r.json")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first = proc.stdout.splitlines()[0]
    assert first.startswith("sandbox: writes only under ") and "no exec, no sockets" in first
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["sandbox"]["enforced"] is True and report["sandbox"]["missing"] == []
    assert (tmp_path / "o.onnx").stat().st_size > 0
    assert not list(tmp_path.glob("poolexport-*"))
