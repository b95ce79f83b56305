"""What the Countdown experiment commands share (``countdown-compare``, ``countdown-variants``, ``countdown-gkd``):
training a run or reusing the finished one, the command's log, and reading a finished run back for its report.

A run is an ordinary run directory; a finished one holds ``summary.json`` and is reused, so an interrupted
command continues where it stopped. Each run also gets :data:`CPU_FILE` (its process CPU time), which a report
on a shared machine can give beside the engine's wall time.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import statistics
import time
from typing import Callable

import numpy as np

from engine import BadInput

from .passk import pass_at_k

CPU_FILE = "cpu_seconds.json"  # a command's record of a run's process CPU time (the engine records wall time)


def train_or_reuse(recipe, overrides: list[str], out: str, log: Callable[[str], None]) -> dict:
    """Train ``recipe`` (a name or a dict of tables) with ``overrides`` into ``out`` and return its summary, or the
    summary of the finished run already there. An override ``plugins.X.key`` reaches only a recipe that enables
    ``X``, so one ``--set`` can address every arm."""
    import engine

    if os.path.exists(os.path.join(out, "summary.json")):
        log(f"  reuse {out}")
        return json.load(open(os.path.join(out, "summary.json")))
    if os.path.exists(out):
        shutil.rmtree(out)  # an interrupted run of this command: start it again
    enabled = engine.load_recipe(recipe).run.plugins
    overrides = [o for o in overrides if not o.startswith("plugins.") or o.split(".")[1] in enabled]
    cpu, wall = time.process_time(), time.perf_counter()
    summary = engine.train(recipe, *overrides, out=out, quiet=True, stream=io.StringIO()).summary
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    with open(os.path.join(out, CPU_FILE), "w") as f:
        json.dump({"cpu_seconds": cpu}, f)
    log(f"  {out}: {summary['steps']} steps, {cpu:.0f} s CPU ({wall:.0f} s wall)")
    return summary


def command_log(out: str, filename: str) -> Callable[[str], None]:
    """A log function: each line stamped with the seconds since this call, printed and appended to ``out/filename``."""
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        line = f"[{time.perf_counter() - t_start:6.0f}s] {msg}"
        print(line, flush=True)
        with open(os.path.join(out, filename), "a") as f:
            f.write(line + "\n")

    return log


def policy_plugin(recipe: str, command: str) -> str:
    """The policy model plugin ``recipe`` enables (``tiny_policy`` or ``hf_policy``)."""
    from engine import load_recipe

    plugins = load_recipe(recipe).run.plugins
    for name in ("tiny_policy", "hf_policy"):
        if name in plugins:
            return name
    raise BadInput(f"recipe {recipe} enables neither tiny_policy nor hf_policy; {command} needs one")


def passk_record(run_dir: str) -> dict:
    """The last ``passk`` evaluation of a run (``RUN/passk/step-*.json``)."""
    files = sorted(f for f in os.listdir(os.path.join(run_dir, "passk")) if f.endswith(".json"))
    return json.load(open(os.path.join(run_dir, "passk", files[-1])))


def run_recipe(run_dir: str) -> dict:
    """The resolved recipe a run trained (its ``recipe.toml``)."""
    import tomllib

    with open(os.path.join(run_dir, "recipe.toml"), "rb") as f:
        return tomllib.load(f)


def metric_ends(run_dir: str, key: str, first: int = 3) -> tuple[float, float]:
    """Mean of a logged metric over the first and the last ``first`` records that hold it (nan without any)."""
    values = [rec[key] for rec in map(json.loads, open(os.path.join(run_dir, "metrics.jsonl"))) if key in rec]
    if not values:
        return float("nan"), float("nan")
    return float(np.mean(values[:first])), float(np.mean(values[-first:]))


def wall_seconds(run_dirs: list[str]) -> float:
    """The engine's wall time of the runs, summed."""
    return sum(json.load(open(os.path.join(d, "summary.json")))["wall_seconds"] for d in run_dirs)


def cpu_seconds(run_dir: str) -> float:
    """A run's process CPU time as :func:`train_or_reuse` recorded it (nan for a run it did not train)."""
    path = os.path.join(run_dir, CPU_FILE)
    return json.load(open(path))["cpu_seconds"] if os.path.exists(path) else float("nan")


def cell(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    """A table cell: ``mean ± sample std`` of the finite values times ``scale`` (one value: itself; none: –)."""
    xs = [v * scale for v in values if v == v]
    if not xs:
        return "–"
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}"


def per_problem(record: dict, label: str, k: int) -> np.ndarray:
    """Unbiased pass@k per problem of one decoding (``label``) of a ``passk`` record."""
    n = record["samples"]
    return np.array([pass_at_k(n, row.count("1"), k) for row in record[label]])
