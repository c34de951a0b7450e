"""Shared test configuration: tolerances and runtime availability."""
import pytest
import torch

torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield

# tests/mutation/ holds a development tool (run.py plants bugs and runs pytest itself)
collect_ignore = ["mutation"]
