"""Shared test configuration: tolerances and runtime availability."""
import pytest
import torch

torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
