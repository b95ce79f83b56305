"""Distributed tests: real processes through torch.distributed.run (gloo, one thread per rank).

The worker processes import the test plugins of ``dist_plugins.py`` and contrib's ``hookmix_ema``,
so their directories go on ``sys.path`` (passed on to the workers as PYTHONPATH).
"""

import os
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
for path in (ROOT, HERE, os.path.join(ROOT, "contrib", "hookmix-ema")):
    if path not in sys.path:
        sys.path.insert(0, path)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private HOOKMIX_CACHE for a test module (the MNIST-1D cache is built once per module)."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("hookmix_cache")
        mp.setenv("HOOKMIX_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, cache):
    """A trained MNIST-1D CNN teacher run (20 steps) for the distillation cases of a test module."""
    from dist_plugins import MNIST1D_DATA

    from engine.testing import train

    out = str(tmp_path_factory.mktemp("teacher") / "run")
    train(
        ["mnist1d", "cnn1d", "adamw", "cross_entropy"],
        steps=20,
        out=out,
        threads=1,
        config={"mnist1d": MNIST1D_DATA, "cnn1d": {"channels": 8}, "adamw": {"lr": 1e-2}},
    )
    return out
