"""The multi-teacher distillation table of docs/distillation.md: MNIST-1D, a CNN and an MLP teacher, an MLP student.

    python tests/tools/multi_teacher_table.py --out runs/multi-teacher --seeds 5 --jobs 2

Trains the two teachers once (shipped recipes ``mnist1d-teacher-cnn`` and ``mnist1d-teacher-mlp``, seed 0), then
each arm for seeds 0..N-1 and prints a markdown table of the test accuracy (mean ± sample std over seeds, last and
best evaluation) with the per-seed difference to the single-teacher KD+LS arm. Every arm is a shipped recipe, its
teachers pointed at the runs trained here; every arm uses logit standardization (KD+LS, T 2, total KD weight 9,
CE 0.1). For a seed all arms share the student's initialization and batch order (teachers are built in a forked
RNG), so the differences are paired. Finished runs under ``--out`` are reused, so a rerun only adds what is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

TEACHERS = {"cnn": "mnist1d-teacher-cnn", "mlp": "mnist1d-teacher-mlp"}
#: arm label -> (shipped recipe, the teachers it reads: instance label or "" for the plain `teacher`)
ARMS = {
    "KD+LS, CNN teacher": ("mnist1d-student-kd-ls", {"": "cnn"}),
    "KD+LS, MLP teacher": ("mnist1d-student-kd-ls", {"": "mlp"}),
    "per-teacher KD+LS terms (kd@cnn + kd@mlp)": ("mnist1d-student-mt-kd-ls", {"cnn": "cnn", "mlp": "mlp"}),
    "averaged-logit KD+LS (kd, teachers = both)": ("mnist1d-student-mt-avg-kd-ls", {"cnn": "cnn", "mlp": "mlp"}),
    "CE only": ("mnist1d-student-ce", {}),
}
REFERENCE = "KD+LS, CNN teacher"


def train(recipe: str, out: str, overrides: list[str]) -> dict:
    """Train (or reuse) one run; its last and best test accuracy and its wall time."""
    import engine

    if not os.path.exists(os.path.join(out, "summary.json")):
        resume = os.path.exists(os.path.join(out, "recipe.toml"))
        engine.train(recipe, *overrides, out=out, resume=resume, quiet=True)
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
        curve = [r["val/accuracy"] for r in map(json.loads, f) if "val/accuracy" in r]
    return {"last": curve[-1], "best": max(curve), "wall": summary["wall_seconds"]}


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{100 * statistics.fmean(values):.2f} ± {100 * std:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/multi-teacher", help="directory of all runs (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=5, help="student seeds 0..N-1 (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, one CPU thread each")
    args = parser.parse_args(argv)
    out = args.out.rstrip("/")
    t0 = time.perf_counter()
    common = ["run.threads=1"]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        runs = {label: f"{out}/teacher-{label}" for label in TEACHERS}
        futures = {label: pool.submit(train, TEACHERS[label], runs[label], common) for label in TEACHERS}
        teachers = {label: future.result() for label, future in futures.items()}
        jobs = {}
        for arm, (recipe, reads) in ARMS.items():
            teacher_overrides = [
                f"plugins.{'teacher@' + inst if inst else 'teacher'}.run={json.dumps(runs[label])}"
                for inst, label in reads.items()
            ]
            slug = arm.split(" (")[0].replace(" ", "-").replace(",", "").replace("+", "").lower()
            for seed in range(args.seeds):
                overrides = [*common, *teacher_overrides, f"run.seed={seed}"]
                jobs[arm, seed] = pool.submit(train, recipe, f"{out}/{slug}/seed{seed}", overrides)
        results = {arm: [jobs[arm, s].result() for s in range(args.seeds)] for arm in ARMS}
    import torch

    walls = [r["wall"] for rs in results.values() for r in rs]
    ref = [r["last"] for r in results[REFERENCE]]
    print(
        f"Teachers (seed 0, test accuracy, last evaluation): CNN {100 * teachers['cnn']['last']:.1f}, "
        f"MLP {100 * teachers['mlp']['last']:.1f}.\n"
    )
    print(f"| arm | recipe | last | best | last per seed | paired Δ last vs {REFERENCE} |")
    print("|---|---|---|---|---|---|")
    for arm, runs_of_arm in results.items():
        last = [r["last"] for r in runs_of_arm]
        diffs = [a - b for a, b in zip(last, ref)]
        paired = (
            "—"
            if arm == REFERENCE
            else f"{100 * statistics.fmean(diffs):+.2f} ± "
            + (f"{100 * statistics.stdev(diffs):.2f}" if len(diffs) > 1 else "nan")
        )
        per_seed = " / ".join(f"{100 * v:.1f}" for v in last)
        print(
            f"| {arm} | `{ARMS[arm][0]}` | {mean_std(last)} | {mean_std([r['best'] for r in runs_of_arm])} | "
            f"{per_seed} | {paired} |"
        )
    print(
        f"\nseeds 0-{args.seeds - 1}; {platform.machine()}, torch {torch.__version__}, 1 CPU thread per run, "
        f"{args.jobs} run(s) at once; student runs {min(walls):.0f}-{max(walls):.0f} s each; "
        f"this invocation {(time.perf_counter() - t0) / 60:.1f} min",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
