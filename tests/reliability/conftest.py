"""Fixtures of the reliability tests; the helpers they share live in reliability_helpers.py."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # test modules import reliability_helpers
from reliability_helpers import GPT6, TINY_GPT, FaultyFS  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def faulty(monkeypatch):
    """The FaultyFS class, reset after the test (its settings are class attributes)."""
    yield FaultyFS
    FaultyFS.fail = staticmethod(lambda path: False)
    FaultyFS.code = errno.ENOSPC
    FaultyFS.read_only = False


@pytest.fixture(scope="session")
def straight_run(tmp_path_factory) -> str:
    """Directory of one uninterrupted `hookmix train shakespeare-gpt <GPT6>` (do not modify it)."""
    from engine.cli.main import main

    out = str(tmp_path_factory.mktemp("straight") / "run")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "shakespeare-gpt", *GPT6, "--quiet", "--out", out]) == 0
    return out


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> str:
    """A 2-step `shakespeare-gpt` run to resume (copy it per case; `run.steps=3` resumes it one more step)."""
    from engine.cli.main import main

    out = str(tmp_path_factory.mktemp("finished") / "run")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "shakespeare-gpt", *TINY_GPT, "run.steps=2", "--quiet", "--out", out]) == 0
    return out
