"""The distributed harness of the test kit: plugins trained under several ranks (torch.distributed.run,
gloo on CPU), and the comparison of their results with a one-process run.

``run_distributed`` starts ``python -m torch.distributed.run ... -m engine.testing.distributed WORK``; each
rank runs :func:`_worker` over the cases written to WORK.
"""

from __future__ import annotations

import io
import json
from typing import Any

import torch

from engine import Plugin, Trainer, hookimpl
from engine.api import read_metrics
from engine.testing import _plugin_set, _recipe_tables, train, without_timings

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
        from engine.distributed.group import digest

        with state.full_weights(write_back=False):  # run.strategy='fsdp': compare the full weights
            tree = [model.state_dict(), state.modules.state_dict()]
            if self.with_plugin_states:
                tree.append(state.plugin_states())
        hashes = state._group.gather(digest(tree)) if state._group is not None else [digest(tree)]
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
    """Start ``python -m torch.distributed.run LAUNCHER -m engine.testing.distributed WORK`` (one thread per rank)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "engine.testing.distributed", work]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def read_results(work: str, n: int) -> list[dict]:
    import os

    return [torch.load(os.path.join(work, f"result{i}.pt"), weights_only=True) for i in range(n)]


def run_distributed(cases: list[dict], nproc: int = 2, timeout: float = 600.0, max_restarts: int = 0) -> list[dict]:
    """Run ``cases`` one after the other in ``nproc`` processes started by ``torch.distributed.run --standalone``
    (one launch: startup is paid once); docs/authoring.md, "The test kit", section "Several ranks".

    A case is a dict of :func:`train` arguments: ``plugins`` (names, or classes the workers import by
    ``module:qualname``: a module on ``sys.path``, which is passed on as ``PYTHONPATH``), ``config``, ``steps``,
    ``out`` (default: a fresh folder per case; a later case with the same ``out`` and ``resume=True``
    continues it), ``resume``, ``stop_at``, ``agree_plugin_states`` (default ``True``; ``False`` leaves the
    plugin states out of the rank check) and any ``[run]`` key. Each case also checks (:class:`RankAgreement`)
    that the weights are bit-identical on every rank after every step.

    Returns, per case, a dict from rank 0: ``model`` and ``modules`` (the final state dicts; full tensors
    under FSDP), ``metrics`` (the ``metrics.jsonl`` records without ``perf/`` keys) and ``checks`` (the steps
    this case ran, each checked). A failed launch raises ``AssertionError`` with the end of the workers' output."""
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
    aborted = (
        "terminate called without an active exception" in err
        and "Traceback (most recent call last)" not in err.split("torch.distributed.elastic")[0]
    )
    if done and aborted:
        print(
            "hookmix.testing: a worker aborted while tearing down the process group after every case finished; "
            "results are complete",
            file=sys.stderr,
        )
    return done and aborted


def assert_distributed_matches(
    plugins: list[Any], config: dict | None = None, steps: int = 4, nproc: int = 2, atol: float = 1e-5, **run: Any
) -> list[dict]:
    """Train ``plugins`` on ``nproc`` ranks and in this process (same recipe, same global batch): the
    weights agree on every rank after every step (bit-identical), and the final weights and every
    logged metric match the 1-process run within ``atol`` (floating-point reduction order differs:
    a gradient averaged over ranks is not rounded like one batch mean)."""
    run.setdefault("threads", 1)
    dist_result = run_distributed([dict(plugins=plugins, config=config, steps=steps, **run)], nproc)[0]
    single = train(plugins, config, steps, **run)
    assert dist_result["checks"] == steps, f"rank agreement checked {dist_result['checks']} of {steps} steps"
    assert_close_results(
        dist_result,
        {"model": single.model.state_dict(), "modules": single.state.modules.state_dict(), "metrics": single.metrics},
        atol,
    )
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
    """One rank of :func:`run_distributed` (``python -m engine.testing.distributed WORK`` under torchrun)."""
    import importlib
    import os

    from engine.distributed.env import read_env
    from engine.distributed.group import Group
    from engine.errors import HookmixError

    group = Group(read_env(), "gloo", 120.0)  # shared by the cases; closed at the end
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
            checker = type(
                "RankAgreement",
                (RankAgreement,),
                {"after": after, "with_plugin_states": case.pop("agree_plugin_states", True)},
            )
            RankAgreement.checks = 0
            resume, stop_at = case.pop("resume", False), case.pop("stop_at", None)
            names, registry = _plugin_set([*plugins, checker], None)
            tables = _recipe_tables(names, case.pop("config", None), case.pop("steps", 3), case.pop("out"), case)
            # an elastic restart continues from the run directory, as `hookmix train` does
            trainer = Trainer.from_recipe(tables, registry=registry, resume=resume, stream=io.StringIO())
            try:
                trainer.run(stop_at=stop_at)
            except HookmixError as exc:  # name the case
                raise type(exc)(f"case {i} ({', '.join(after)}): {exc}") from None
            with trainer.state.full_weights(write_back=False):  # FSDP: full tensors, gathered on every rank
                weights = {
                    part: {k: v.detach().clone() for k, v in m.state_dict().items()}
                    for part, m in (("model", trainer.state.model), ("modules", trainer.state.modules))
                }
            if group.rank == 0:
                metrics = without_timings(read_metrics(trainer.state.run_dir.read_text("metrics.jsonl")))
                torch.save(
                    {**weights, "metrics": metrics, "checks": RankAgreement.checks}, os.path.join(work, f"result{i}.pt")
                )
    finally:
        group.close()


if __name__ == "__main__":
    import sys

    from engine.distributed.env import rank_prefix
    from engine.distributed.launch import report_crash
    from engine.errors import HookmixError

    try:
        _worker(sys.argv[1])
    except HookmixError as exc:  # as the command line reports it: one line naming the rank
        print(f"hookmix: error: {rank_prefix()}{str(exc).splitlines()[0]}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Exception as exc:
        sys.exit(report_crash(exc))
