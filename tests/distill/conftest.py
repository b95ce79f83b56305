"""Shared setup for the distillation tests: single-threaded torch, repo root importable."""

import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

torch.set_num_threads(1)


@pytest.fixture
def gen():
    """A seeded CPU generator (fresh per test)."""
    return torch.Generator().manual_seed(1234)
