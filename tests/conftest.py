"""Shared test configuration: tolerances, runtime availability, the GPU switch.

``POOLEXPORT_REQUIRE_GPU=1`` (a GPU CI runner) turns every skip of a test marked ``gpu``
(CUDA device, CuPy, onnxruntime-gpu, TensorRT) into a failure, so a machine that lacks
part of the GPU stack cannot pass by skipping.
"""
import os

import pytest
import torch

torch.manual_seed(0)

REQUIRE_GPU = os.environ.get("POOLEXPORT_REQUIRE_GPU", "") == "1"


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU, CuPy, onnxruntime-gpu or TensorRT; "
                                       "POOLEXPORT_REQUIRE_GPU=1 makes its skips failures")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_GPU and report.skipped and item.get_closest_marker("gpu") is not None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"POOLEXPORT_REQUIRE_GPU=1 but this GPU/TensorRT test skipped: {reason}"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield

# tests/mutation/ holds a development tool (run.py plants bugs and runs pytest itself)
collect_ignore = ["mutation"]
