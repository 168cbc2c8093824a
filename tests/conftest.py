"""Test-wide settings: fixed thread count, deterministic seeds, float64 helpers."""

from __future__ import annotations

import os

import pytest
import torch

# Two pytest-xdist workers on two cores: one intra-op thread each.
torch.set_num_threads(int(os.environ.get("SHARPSCAPE_TEST_THREADS", "1")))
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
