"""SAM against its base optimizer on MNIST-1D: the table of docs/sam.md (a script, not a test).

    python tests/tools/sam_table.py                  # 4 arms x 3 seeds, 2 runs at a time: minutes on 2 CPU cores
    python tests/tools/sam_table.py --steps 300      # a quick look (the table in the docs uses the recipes' 3000)

Each arm is a shipped recipe with overrides: ``mnist1d-mlp`` (the MLP [100, 100] with AdamW, lr 1e-2, cosine) and
``mnist1d-mlp-sam`` (the same with ``sam`` around AdamW), each trained with ``run.seed`` 0, 1, 2 (the model's
initialisation and the data order; the MNIST-1D split itself is fixed by ``plugins.mnist1d.seed``), one thread per
run, outputs in memory. Reported: the final evaluation's ``val/accuracy`` and ``val/loss`` (the 1000 test examples),
mean ± sample standard deviation over the seeds. No timings: a SAM step is two forward and backward passes, and the
wall time of runs sharing a machine says more about the machine.
"""

from __future__ import annotations

import argparse
import statistics
import uuid
from concurrent.futures import ProcessPoolExecutor

ARMS = [
    ("AdamW (`mnist1d-mlp`)", "mnist1d-mlp", []),
    ("SAM rho 0.05 + AdamW (`mnist1d-mlp-sam`)", "mnist1d-mlp-sam", []),
    ("SAM rho 0.2 + AdamW", "mnist1d-mlp-sam", ["plugins.sam.rho=0.2"]),
    ("ASAM rho 0.5 + AdamW", "mnist1d-mlp-sam", ["plugins.sam.adaptive=true", "plugins.sam.rho=0.5"]),
]


def run_one(recipe: str, overrides: list[str], seed: int, steps: int | None) -> tuple[float, float]:
    """One run: (val/accuracy, val/loss)."""
    import engine

    extra = [f"run.steps={steps}", f"run.eval_interval={steps}"] if steps else []
    result = engine.train(
        recipe,
        *overrides,
        f"run.seed={seed}",
        "run.threads=1",
        *extra,
        out=f"memory://sam-table-{uuid.uuid4().hex}",
        quiet=True,
    )
    metrics = result.summary["metrics"]
    return metrics["val/accuracy"], metrics["val/loss"]


def spread(values: list[float], digits: int) -> str:
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="run.seed values (at least 2)")
    parser.add_argument("--steps", type=int, default=None, help="shorten every run (default: the recipes' 3000)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    args = parser.parse_args()
    jobs = [(recipe, overrides, seed, args.steps) for _, recipe, overrides in ARMS for seed in args.seeds]
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(run_one, *zip(*jobs)))
    n = len(args.seeds)
    steps = f"{args.steps} steps" if args.steps else "the recipes' 3000 steps"
    print(f"final evaluation after {steps}; mean ± std over run.seed {', '.join(map(str, args.seeds))}\n")
    print("| arm | val/accuracy | val/loss |")
    print("|---|---|---|")
    for i, (label, _, _) in enumerate(ARMS):
        accuracy, loss = zip(*results[i * n : (i + 1) * n])
        print(f"| {label} | {spread(list(accuracy), 3)} | {spread(list(loss), 2)} |")


if __name__ == "__main__":
    main()
