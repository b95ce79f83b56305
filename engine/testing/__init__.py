"""Test helpers for plugin authors: train a plugin in a tiny loop in a few lines.

::

    from engine.testing import train, assert_resumes_exactly

    def test_my_plugin_trains():
        result = train(["toy_data", "toy_model", "toy_sgd", "toy_ce", MyPlugin],
                       config={"my_plugin": {"strength": 0.5}}, steps=4)
        assert result.metrics[-1]["val/accuracy"] >= 0

    def test_my_plugin_resumes():
        assert_resumes_exactly(["toy_data", "toy_model", "toy_sgd", "toy_ce", MyPlugin], steps=6)

Plugins are given by name (installed entry points, or the toy plugins below) or as classes
(registered locally under their ``name``). Outputs go to ``memory://`` unless ``out`` is given.

Several ranks (:mod:`engine.testing.distributed`, exported here): ``assert_distributed_matches`` trains on 2 real
ranks and compares with one process; ``run_distributed`` runs several cases in one launch. Every name, the case
and result formats and how to choose a tolerance: docs/authoring.md, "The test kit".
"""

from __future__ import annotations

import io
import uuid
from typing import Any

import attrs
import torch

import engine
from engine import Plugin, Registry, Result, field, hookimpl

# --- toy plugins: a complete tiny classification setup without first-party plugins -----------


class _ToyData:
    """Two Gaussian blobs per class in 8 dimensions; all randomness from the generator."""

    def __init__(self, batch_size: int, num_classes: int = 3, dim: int = 8):
        g = torch.Generator().manual_seed(1234)
        self.centers = torch.randn(num_classes, dim, generator=g) * 2
        self.val_x, self.val_y = self._sample(64, g)
        self.batch_size = batch_size
        self.info = {"task": "classification", "num_classes": num_classes, "input_dim": dim}

    def _sample(self, n: int, g: torch.Generator):
        y = torch.randint(0, len(self.centers), (n,), generator=g)
        return self.centers[y] + torch.randn(n, self.centers.shape[1], generator=g), y

    def train_batch(self, generator):
        x, y = self._sample(self.batch_size, generator)
        return {"input": x, "target": y}

    def val_batches(self):
        yield {"input": self.val_x, "target": self.val_y}


@attrs.define
class ToyDataConfig:
    batch_size: int = field(16, "examples per batch")


class ToyData(Plugin):
    """Toy classification data for tests (Gaussian blobs)."""

    name = "toy_data"
    Config = ToyDataConfig

    @hookimpl
    def hookmix_data(self, state):
        return _ToyData(self.config.batch_size)


@attrs.define
class ToyModelConfig:
    hidden: int = field(16, "hidden width")


class ToyModel(Plugin):
    """Toy two-layer MLP for tests; the hidden activation is the submodule `features`."""

    name = "toy_model"
    Config = ToyModelConfig

    @hookimpl
    def hookmix_model(self, state):
        info = state.data.info
        h = self.config.hidden
        return torch.nn.Sequential(
            torch.nn.Sequential(torch.nn.Linear(info["input_dim"], h), torch.nn.ReLU()),
            torch.nn.Linear(h, info["num_classes"]),
        )


@attrs.define
class ToySGDConfig:
    lr: float = field(0.1, "learning rate")
    momentum: float = field(0.9, "momentum")


class ToySGD(Plugin):
    """Toy SGD optimizer for tests."""

    name = "toy_sgd"
    Config = ToySGDConfig

    @hookimpl
    def hookmix_optimizer(self, param_groups, state):
        groups = [{k: v for k, v in g.items() if k != "name"} for g in param_groups]
        return torch.optim.SGD(groups, lr=self.config.lr, momentum=self.config.momentum)


class ToyCE(Plugin):
    """Toy cross-entropy loss term `toy_ce` for tests."""

    name = "toy_ce"

    @hookimpl
    def hookmix_loss_terms(self, batch, outputs, state):
        logits = state.logits(outputs["logits"], role="student", consumer=self.name, kind="supervised")
        return {"toy_ce": torch.nn.functional.cross_entropy(logits, batch["target"])}


def nan_term_at(step: int) -> type[Plugin]:
    """A plugin class (``nan_at_<step>``) adding a loss term ``blowup``: NaN during step ``step`` only,
    0 otherwise. For tests of what a run does with a non-finite loss."""

    class NanTerm(Plugin):
        name = f"nan_at_{step}"

        @hookimpl
        def hookmix_loss_terms(self, batch, outputs, state):
            bad = state.step + 1 == step  # state.step counts completed steps
            return {"blowup": outputs["logits"].sum() * (float("nan") if bad else 0.0)}

    return NanTerm


TOY_PLUGINS = {cls.name: cls for cls in (ToyData, ToyModel, ToySGD, ToyCE)}
TOY = ["toy_data", "toy_model", "toy_sgd", "toy_ce"]


# --- running ---------------------------------------------------------------------------------


def make_recipe(
    plugins: list[Any],
    config: dict | None = None,
    steps: int = 3,
    out: str | None = None,
    registry: Registry | None = None,
    **run: Any,
):
    """Build a resolved recipe and its registry from plugin names/classes and config tables."""
    names, registry = _plugin_set(plugins, registry)
    return engine.load_recipe(_recipe_tables(names, config, steps, out, run), registry=registry), registry


def train(
    plugins: list[Any],
    config: dict | None = None,
    steps: int = 3,
    out: str | None = None,
    resume: bool = False,
    stop_at: int | None = None,
    **run: Any,
) -> Result:
    """Train ``plugins`` for ``steps`` steps in memory and return the :class:`Result` (:func:`engine.train`'s,
    with ``metrics`` :func:`without_timings`).

    ``stop_at`` stops early with a checkpoint, as an interrupted run would.
    """
    names, registry = _plugin_set(plugins, None)
    result = engine.train(
        _recipe_tables(names, config, steps, out, run),
        registry=registry,
        resume=resume,
        stream=io.StringIO(),
        stop_at=stop_at,
    )
    result.metrics = without_timings(result.metrics)
    return result


def _plugin_set(plugins: list[Any], registry: Registry | None) -> tuple[list[str], Registry]:
    """The names a test's ``run.plugins`` lists, and the registry they resolve in: ``registry``, or the
    installed plugins plus the toy plugins and the classes among ``plugins`` (registered under their ``name``)."""
    local = dict(TOY_PLUGINS)
    names = []
    for p in plugins:
        if isinstance(p, type):
            local[p.name] = p
            names.append(p.name)
        else:
            names.append(p)
    return names, registry or Registry(local)


def _recipe_tables(names: list[str], config: dict | None, steps: int, out: str | None, run: dict) -> dict:
    """The recipe of a test run: ``log_interval=1``, outputs in ``memory://`` unless ``out`` is given."""
    return {
        "name": "test",
        "run": {
            "plugins": names,
            "steps": steps,
            "log_interval": 1,
            "out": out or f"memory://hookmix-test-{uuid.uuid4().hex}",
            **run,
        },
        "plugins": dict(config or {}),
    }


def without_timings(records: list[dict]) -> list[dict]:
    """Metrics records without the ``perf/`` throughput keys: wall-clock rates differ between
    runs; everything else must reproduce bit for bit."""
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in records]


def assert_resumes_exactly(
    plugins: list[Any], config: dict | None = None, steps: int = 6, split: int | None = None, **run: Any
) -> None:
    """Train ``steps`` straight, and ``split`` + resume to ``steps``; weights and metrics must match."""
    split = split or steps // 2
    straight = train(plugins, config, steps, **run)
    out = f"memory://hookmix-test-{uuid.uuid4().hex}"
    train(plugins, config, steps, out=out, stop_at=split, **run)
    resumed = train(plugins, config, steps, out=out, resume=True, **run)
    for what, a, b in [
        ("weight", straight.model.state_dict(), resumed.model.state_dict()),
        ("plugin module weight", straight.state.modules.state_dict(), resumed.state.modules.state_dict()),
    ]:
        assert a.keys() == b.keys(), f"{what}s differ after resume: {sorted(a)} vs {sorted(b)}"
        for key in a:
            assert torch.equal(a[key], b[key]), f"{what} {key} differs after resume"
    opt_a, opt_b = straight.state.optimizer.state_dict(), resumed.state.optimizer.state_dict()
    assert _tree_equal(opt_a, opt_b), "optimizer state differs after resume"
    assert straight.metrics == resumed.metrics, "metrics differ after resume"


def _tree_equal(a: Any, b: Any) -> bool:
    """Exact equality of nested dicts/lists of tensors and plain values."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_tree_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_tree_equal(x, y) for x, y in zip(a, b))
    return a == b


# the distributed harness (engine/testing/distributed.py), part of the kit's public surface
from engine.testing.distributed import (  # noqa: E402 - it builds on make_recipe and train above
    RankAgreement,
    assert_close_results,
    assert_distributed_matches,
    assert_identical_results,
    max_difference,
    run_distributed,
)

__all__ = [
    "TOY",
    "TOY_PLUGINS",
    "RankAgreement",
    "Result",
    "ToyCE",
    "ToyData",
    "ToyModel",
    "ToySGD",
    "assert_close_results",
    "assert_distributed_matches",
    "assert_identical_results",
    "assert_resumes_exactly",
    "make_recipe",
    "max_difference",
    "nan_term_at",
    "run_distributed",
    "train",
    "without_timings",
]
