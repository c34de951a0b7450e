"""``python -m poolexport.selfcheck --gpu``: one JSON report; "no GPU" and exit 0 where
there is none (as here), every kernel check passing where there is one."""
import json
import subprocess
import sys

import pytest


@pytest.mark.gpu
def test_selfcheck_reports_and_exits(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "poolexport.selfcheck", "--gpu", "-o", str(out), "--iters", "2"],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    report = json.loads(out.read_text())
    assert report["status"] in ("no GPU", "pass", "fail")
    assert report["missing"] == sorted(set(report["missing"]), key=report["missing"].index)  # each named once
    if report["status"] == "no GPU":
        assert proc.returncode == 0, proc.stderr
        assert report["device"] is None and not report["checks"]
        assert "no GPU" in proc.stdout and any("CUDA driver" in m for m in report["missing"])
        pytest.skip("no GPU: the self-check reported it cleanly")
    assert proc.returncode == (1 if report["status"] == "fail" else 0)
    assert report["status"] == "pass", [c for c in report["checks"] if c["status"] != "pass"]
    assert report["checks"] and report["bandwidth"]
