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
"""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import attrs
import torch

from engine.loop import Trainer
from engine.outputs import RunDir
from engine.plugin import Plugin, hookimpl
from engine.recipe import field, resolve
from engine.registry import Registry

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
            torch.nn.Linear(h, info["num_classes"]))


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


@attrs.define
class Result:
    """What a test run produced.

    ``summary`` (what summary.json holds), ``metrics`` (the metrics.jsonl records, in order),
    ``run_dir`` (its URL), ``state`` (the run's :class:`engine.State`), ``model``, and
    ``plugins`` (the enabled plugin instances by name, for tests that inspect their own plugin).
    """

    summary: dict
    metrics: list[dict]
    trainer: Trainer
    run_dir: str

    @property
    def state(self):
        return self.trainer.state

    @property
    def model(self) -> torch.nn.Module:
        return self.trainer.state.model

    @property
    def plugins(self) -> dict[str, Plugin]:
        return dict(self.trainer.manager.plugins)


def make_recipe(plugins: list[Any], config: dict | None = None, steps: int = 3, out: str | None = None,
                registry: Registry | None = None, **run: Any):
    """Build a resolved recipe and its registry from plugin names/classes and config tables."""
    local = dict(TOY_PLUGINS)
    names = []
    for p in plugins:
        if isinstance(p, type):
            local[p.name] = p
            names.append(p.name)
        else:
            names.append(p)
    registry = registry or Registry(local)
    raw = {"run": {"plugins": names, "steps": steps, "log_interval": 1,
                   "out": out or f"memory://hookmix-test-{uuid.uuid4().hex}", **run},
           "plugins": dict(config or {})}
    return resolve("test", raw, registry), registry


def train(plugins: list[Any], config: dict | None = None, steps: int = 3, out: str | None = None,
          resume: bool = False, stop_at: int | None = None, **run: Any) -> Result:
    """Train ``plugins`` for ``steps`` steps in memory and return the :class:`Result`.

    ``stop_at`` stops early with a checkpoint, as an interrupted run would.
    """
    recipe, registry = make_recipe(plugins, config, steps, out, **run)
    trainer = Trainer(recipe, registry, resume=resume, stream=io.StringIO())
    summary = trainer.run(stop_at=stop_at)
    run_dir = RunDir(recipe.run.out)
    metrics = [json.loads(line) for line in run_dir.read_text("metrics.jsonl").splitlines() if line.strip()]
    return Result(summary, without_timings(metrics), trainer, recipe.run.out)


def without_timings(records: list[dict]) -> list[dict]:
    """Metrics records without the ``perf/`` throughput keys: wall-clock rates differ between
    runs; everything else must reproduce bit for bit."""
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in records]


def assert_resumes_exactly(plugins: list[Any], config: dict | None = None, steps: int = 6,
                           split: int | None = None, **run: Any) -> None:
    """Train ``steps`` straight, and ``split`` + resume to ``steps``; weights and metrics must match."""
    split = split or steps // 2
    straight = train(plugins, config, steps, **run)
    out = f"memory://hookmix-test-{uuid.uuid4().hex}"
    train(plugins, config, steps, out=out, stop_at=split, **run)
    resumed = train(plugins, config, steps, out=out, resume=True, **run)
    for what, a, b in [("weight", straight.model.state_dict(), resumed.model.state_dict()),
                       ("plugin module weight", straight.state.modules.state_dict(), resumed.state.modules.state_dict())]:
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


# --- distributed: a plugin under several ranks (torch.distributed.run, gloo on CPU) -----------


class RankAgreement(Plugin):
    """Test plugin: after every optimizer step (after every other plugin's weight update), checks that
    the model, the plugin modules and (``with_plugin_states``) the plugin states are bit-identical on
    every rank. RL plugins keep per-rank rollout buffers and noise generators: check them without."""

    name = "rank_agreement"
    with_plugin_states = True
    checks = 0

    @hookimpl
    def hookmix_after_optimizer_step(self, model, state):
        from engine.distributed import digest

        with state.full_weights(write_back=False):  # run.strategy='fsdp': compare the full weights
            tree = [model.state_dict(), state.modules.state_dict()]
            if self.with_plugin_states:
                tree.append(state.plugin_states())
        hashes = state.group.gather(digest(tree)) if state.group is not None else [digest(tree)]
        if len(set(hashes)) != 1:
            from engine.errors import TrainingFailure

            raise TrainingFailure(f"step {state.step}: weights differ between ranks ({hashes})")
        RankAgreement.checks += 1


def _plugin_ref(p: Any) -> str:
    return p if isinstance(p, str) else f"{p.__module__}:{p.__qualname__}"


def write_cases(cases: list[dict]) -> str:
    """A work directory holding ``cases`` for the worker (see :func:`run_distributed`)."""
    import os
    import tempfile

    work = tempfile.mkdtemp(prefix="hookmix-dist-")
    spec = []
    for i, case in enumerate(cases):
        case = dict(case)
        case["plugins"] = [_plugin_ref(p) for p in case["plugins"]]
        case.setdefault("out", os.path.join(work, f"case{i}"))
        spec.append(case)
    with open(os.path.join(work, "spec.json"), "w") as f:
        json.dump(spec, f)
    return work


def launch_cases(work: str, launcher: list[str], **popen: Any):
    """Start ``python -m torch.distributed.run LAUNCHER -m engine.testing WORK`` (one thread per rank)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "engine.testing", work]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def read_results(work: str, n: int) -> list[dict]:
    import os

    return [torch.load(os.path.join(work, f"result{i}.pt"), weights_only=True) for i in range(n)]


def run_distributed(cases: list[dict], nproc: int = 2, timeout: float = 600.0, max_restarts: int = 0) -> list[dict]:
    """Run ``cases`` (dicts of :func:`train` arguments: ``plugins``, ``config``, ``steps``, ``out``,
    ``resume``, ``stop_at``, run fields) one after the other in ``nproc`` processes started by
    ``torch.distributed.run --standalone`` (one launch: startup is paid once). Each case also checks
    that the weights are bit-identical on every rank after every step. Returns, per case, rank 0's
    final ``model``/``modules`` state dicts, ``metrics`` records and the number of rank ``checks``."""
    work = write_cases(cases)
    proc = launch_cases(work, ["--standalone", "--nproc-per-node", str(nproc), "--max-restarts", str(max_restarts)])
    _, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0 and not _teardown_abort_only(work, len(cases), err):
        raise AssertionError(f"distributed run failed (exit {proc.returncode}):\n{err[-4000:]}")
    return read_results(work, len(cases))


def _teardown_abort_only(work: str, n: int, err: str) -> bool:
    """Every case finished and wrote its result, and the only failure is a worker aborting while the process
    group is torn down ("terminate called without an active exception": a rare gloo teardown race under
    load, after all training and checks are done). The results are complete; the abort is reported."""
    import os
    import sys

    done = all(os.path.exists(os.path.join(work, f"result{i}.pt")) for i in range(n))
    aborted = "terminate called without an active exception" in err and "Traceback (most recent call last)" not in \
        err.split("torch.distributed.elastic")[0]
    if done and aborted:
        print("hookmix.testing: a worker aborted while tearing down the process group after every case finished; "
              "results are complete", file=sys.stderr)
    return done and aborted


def assert_distributed_matches(plugins: list[Any], config: dict | None = None, steps: int = 4, nproc: int = 2,
                               atol: float = 1e-5, **run: Any) -> list[dict]:
    """Train ``plugins`` on ``nproc`` ranks and in this process (same recipe, same global batch): the
    weights agree on every rank after every step (bit-identical), and the final weights and every
    logged metric match the 1-process run within ``atol`` (floating-point reduction order differs:
    a gradient averaged over ranks is not rounded like one batch mean)."""
    run.setdefault("threads", 1)
    dist_result = run_distributed([dict(plugins=plugins, config=config, steps=steps, **run)], nproc)[0]
    single = train(plugins, config, steps, **run)
    assert dist_result["checks"] == steps, f"rank agreement checked {dist_result['checks']} of {steps} steps"
    assert_close_results(dist_result, {"model": single.model.state_dict(),
                                       "modules": single.state.modules.state_dict(), "metrics": single.metrics}, atol)
    return dist_result


def max_difference(a: dict, b: dict) -> tuple[float, str]:
    """The largest absolute weight difference (``model``, ``modules``) or metric difference (relative to
    max(1, |value|)) between two runs' results, and what it was; structural differences raise."""
    worst, what = 0.0, "nothing"
    for part in ("model", "modules"):
        assert a[part].keys() == b[part].keys(), f"{part} keys differ: {sorted(a[part])} vs {sorted(b[part])}"
        for key in a[part]:
            x, y = a[part][key], b[part][key]
            diff = (x.double() - y.double()).abs().max().item() if x.numel() else 0.0
            if diff > worst:
                worst, what = diff, f"{part} {key}"
    assert [m["step"] for m in a["metrics"]] == [m["step"] for m in b["metrics"]], "metrics records differ"
    for ra, rb in zip(a["metrics"], b["metrics"]):
        assert ra.keys() == rb.keys(), f"step {ra['step']}: metric names differ: {sorted(ra)} vs {sorted(rb)}"
        for key in ra:
            if isinstance(ra[key], float):
                diff = abs(ra[key] - rb[key]) / max(1.0, abs(rb[key]))
                if diff > worst:
                    worst, what = diff, f"step {ra['step']} {key} ({ra[key]} vs {rb[key]})"
    return worst, what


def assert_identical_results(a: dict, b: dict) -> None:
    """Model weights and metrics of two runs (results of :func:`run_distributed`) are bit-identical."""
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["metrics"] == b["metrics"]


def assert_close_results(a: dict, b: dict, atol: float) -> None:
    """Weights (``model``, ``modules``) and ``metrics`` of two runs agree within ``atol``."""
    worst, what = max_difference(a, b)
    assert worst <= atol, f"{what} differs by {worst:.3g} > atol {atol}"


def _worker(work: str) -> None:
    """One rank of :func:`run_distributed` (``python -m engine.testing WORK`` under torch.distributed.run)."""
    import importlib
    import os

    from engine import distributed
    from engine.errors import HookmixError

    group = distributed.Group(distributed.read_env(), "gloo", 120.0)  # shared by the cases; closed at the end
    try:
        with open(os.path.join(work, "spec.json")) as f:
            spec = json.load(f)
        for i, case in enumerate(spec):
            if os.path.exists(os.path.join(work, f"result{i}.pt")):
                continue  # finished before an elastic restart of the worker group
            plugins = []
            for ref in case.pop("plugins"):
                if ":" in ref:
                    module, qual = ref.split(":")
                    ref = getattr(importlib.import_module(module), qual)
                plugins.append(ref)
            after = tuple(p.name if isinstance(p, type) else p for p in plugins)  # check after every update
            checker = type("RankAgreement", (RankAgreement,),
                           {"after": after, "with_plugin_states": case.pop("agree_plugin_states", True)})
            RankAgreement.checks = 0
            resume, stop_at = case.pop("resume", False), case.pop("stop_at", None)
            recipe, registry = make_recipe([*plugins, checker], case.pop("config", None), case.pop("steps", 3),
                                           case.pop("out"), **case)
            resume, restart = distributed.elastic_resume(recipe.run.out, resume)  # as `hookmix train` does
            trainer = Trainer(recipe, registry, resume=resume, stream=io.StringIO(), restart=restart)
            try:
                trainer.run(stop_at=stop_at)
            except HookmixError as exc:  # name the case
                raise type(exc)(f"case {i} ({', '.join(after)}): {exc}") from None
            with trainer.state.full_weights(write_back=False):  # FSDP: full tensors, gathered on every rank
                weights = {part: {k: v.detach().clone() for k, v in m.state_dict().items()}
                           for part, m in (("model", trainer.state.model), ("modules", trainer.state.modules))}
            if group.rank == 0:
                run_dir = RunDir(recipe.run.out)
                metrics = without_timings([json.loads(line) for line in run_dir.read_text("metrics.jsonl").splitlines()
                                           if line])
                torch.save({**weights, "metrics": metrics, "checks": RankAgreement.checks},
                           os.path.join(work, f"result{i}.pt"))
    finally:
        group.close()


if __name__ == "__main__":
    import sys

    from engine.distributed import rank_prefix, report_crash
    from engine.errors import HookmixError

    try:
        _worker(sys.argv[1])
    except HookmixError as exc:  # as the command line reports it: one line naming the rank
        print(f"hookmix: error: {rank_prefix()}{str(exc).splitlines()[0]}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Exception as exc:
        sys.exit(report_crash(exc))
