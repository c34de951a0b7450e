"""Shared test configuration: tolerances, runtime availability, the GPU switch.

``POOLEXPORT_REQUIRE_GPU=1`` (a GPU CI runner) turns every skip of a test marked ``gpu``
(CUDA device, CuPy, onnxruntime-gpu, TensorRT, a library built with nvcc) into a failure,
so a machine that lacks part of the GPU stack cannot pass by skipping. Every GPU test
skips through this marker: ``pytestmark = [pytest.mark.gpu, pytest.mark.skipif(...)]``,
never a module-level ``pytest.skip`` (tests/test_gpu_discipline.py checks). A test that
needs more devices says so, ``pytest.mark.gpu(devices=2)``: its skip stays a skip unless
``POOLEXPORT_REQUIRE_GPU`` names at least that many (``=2`` on a two-GPU runner).
"""
import os

import pytest
import torch

torch.manual_seed(0)

def _required_devices() -> int:
    """POOLEXPORT_REQUIRE_GPU: unset or 0, none; 1 (or any other truthy text), one; N, N."""
    value = os.environ.get("POOLEXPORT_REQUIRE_GPU", "").strip()
    if not value:
        return 0
    return int(value) if value.isdigit() else 1


REQUIRE_GPU = _required_devices()


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu(devices=1): needs a CUDA GPU (that many), CuPy, onnxruntime-gpu or "
                                       "TensorRT; POOLEXPORT_REQUIRE_GPU=N makes its skips failures")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    marker = item.get_closest_marker("gpu")
    # a test for more devices than required skips on a smaller machine, never on one without a GPU
    if REQUIRE_GPU and report.skipped and marker is not None and (
            marker.kwargs.get("devices", 1) <= REQUIRE_GPU or torch.cuda.device_count() == 0):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"POOLEXPORT_REQUIRE_GPU={REQUIRE_GPU} but this GPU test skipped: {reason}"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield

# tests/mutation/ holds a development tool (run.py plants bugs and runs pytest itself)
collect_ignore = ["mutation"]
