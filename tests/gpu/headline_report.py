"""The table of tests/gpu/lipschitz_headline.sh from the runs' metrics.jsonl (also usable on CPU runs).

    python tests/gpu/headline_report.py OUT_DIR RUN [RUN ...]

Per run: the last evaluation's step, val accuracy and certified bound (``lipschitz/bound``; none
for the unconstrained GPT), the training seconds until the first evaluation at >= 60% val
accuracy, and the mean tokens/s and MFU of the log records after the first two (which include
compilation). Training seconds are summed from the throughput records (each log interval's
samples / its samples per second), so evaluation time is excluded and compilation included.
"""

from __future__ import annotations

import json
import os
import sys


def table(out: str, names: list[str], samples_per_step: int, target: float = 0.60) -> str:
    lines = [
        "| run | steps | val acc | certified bound | train s to 60% val acc | tokens/s | MFU |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        path = os.path.join(out, name, "metrics.jsonl")
        if not os.path.exists(path):
            lines.append(f"| {name} | not run | | | | | |")
            continue
        records = [json.loads(line) for line in open(path) if line.strip()]
        seconds, last_step, at = 0.0, 0, {}
        for r in records:
            if "perf/samples_per_second" in r:
                seconds += (r["step"] - last_step) * samples_per_step / r["perf/samples_per_second"]
                last_step = r["step"]
            at[r["step"]] = seconds
        evals = [r for r in records if "val/accuracy" in r]
        last = evals[-1] if evals else {}
        hit = next((r for r in evals if r["val/accuracy"] >= target), None)
        reached = f"{at[hit['step']]:.1f} (step {hit['step']})" if hit else "not reached"
        perf = [r for r in records if "perf/samples_per_second" in r][2:]
        tps = [r["perf/tokens_per_second"] for r in perf if "perf/tokens_per_second" in r]
        mfu = [r["perf/mfu"] for r in perf if "perf/mfu" in r]
        lines.append(
            f"| {name} | {last.get('step', '-')} | {last.get('val/accuracy', float('nan')):.4f} | "
            f"{last.get('lipschitz/bound', float('nan')):.4g} | {reached} | "
            f"{sum(tps) / len(tps) if tps else float('nan'):,.0f} | "
            f"{sum(mfu) / len(mfu) if mfu else float('nan'):.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    out, *names = sys.argv[1:]
    print(table(out, names, samples_per_step=int(os.environ.get("SAMPLES_PER_STEP", "512"))))
