"""Shared setup for the GKD tests: single-threaded torch, the repo root and this folder importable (the 2-rank
workers import the test plugins of ``gkd_test_plugins.py`` by module name), and a small trained teacher policy."""

import os
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
for path in (ROOT, HERE):
    if path not in sys.path:
        sys.path.insert(0, path)

torch.set_num_threads(1)

#: Countdown as the tests use it: the shipped recipes' task, small batches, a few held-out traces.
TASK = {"n_numbers": [3], "number_max": 20, "min_solutions": 1, "val_problems": 8}
STUDENT = {"d_model": 32, "n_layers": 1, "n_heads": 2}
TEACHER = {"d_model": 48, "n_layers": 1, "n_heads": 2}


@pytest.fixture(scope="session")
def teacher_run(tmp_path_factory):
    """A teacher policy SFT'd for 30 steps on gold traces (a larger tiny_policy than the students here)."""
    from engine.testing import train

    out = str(tmp_path_factory.mktemp("gkd_teacher") / "run")
    train(
        ["countdown", "tiny_policy", "adamw", "cross_entropy"],
        config={"countdown": {**TASK, "mode": "sft", "batch_size": 16}, "tiny_policy": TEACHER, "adamw": {"lr": 3e-3}},
        steps=30,
        out=out,
        threads=1,
    )
    return out


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
