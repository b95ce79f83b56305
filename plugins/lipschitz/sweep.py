"""``hookmix lipschitz-sweep``: accuracy vs certified bound for each constraint method.

Trains every (method, setting) pair on the ``shakespeare-lipschitz-cpu`` recipe (optimizer and
constraint plugins swapped in, ``run.steps`` overridable), one after the other in this process, and
writes ``<out>/lipschitz-sweep.png`` (validation accuracy vs certified bound, log x, one curve per
method) and ``<out>/lipschitz-sweep.md`` (the table). Finished runs are appended to a JSONL file and
skipped when the sweep is run again, so an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import json
import os
import time
import uuid

import torch

RECIPE = "shakespeare-lipschitz-cpu"

ADAMW = {"lr": 3e-3, "schedule": "linear", "min_lr_ratio": 0.0}

# label -> (optimizer + constraint plugins, swept plugin, swept key, values, extra plugin configs)
METHODS: dict[str, tuple[list[str], str, str, list[float], dict]] = {
    "AdamW + weight decay": (["adamw"], "adamw", "weight_decay", [0.1, 1.0, 10.0, 30.0, 100.0], {"adamw": ADAMW}),
    "Muon + weight decay": (["muon"], "muon", "weight_decay", [0.25, 0.5, 1.0, 2.0, 4.0], {}),
    "Muon + spectral normalize": (
        ["muon", "spectral_normalize"],
        "spectral_normalize",
        "w_max",
        [0.75, 1.0, 1.5, 2.0, 3.0],
        {},
    ),
    "AdamW + spectral hammer": (
        ["adamw", "spectral_hammer"],
        "spectral_hammer",
        "w_max",
        [0.75, 1.0, 1.5, 2.0, 3.0],
        {"adamw": ADAMW},
    ),
    "Muon + spectral soft cap": (
        ["muon", "spectral_soft_cap"],
        "spectral_soft_cap",
        "w_max",
        [0.75, 1.0, 1.5, 2.0, 3.0],
        {},
    ),
}
BASE = ["tinyshakespeare", "lipschitz_gpt", "cross_entropy"]


def add_arguments(p) -> None:
    p.add_argument("--steps", type=int, default=500, help="training steps per run (default 500)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--methods", default="", help="comma-separated subset of method labels (default: all)")
    p.add_argument("--values", default="", help="comma-separated settings overriding every method's range")
    p.add_argument("--out", default="docs", help="folder of lipschitz-sweep.png / .md (default docs)")
    p.add_argument(
        "--results",
        default="runs/lipschitz-sweep/results.jsonl",
        help="JSONL of finished runs; existing entries are reused (default runs/lipschitz-sweep/...)",
    )
    p.add_argument("--plot-only", action="store_true", help="only redraw the figure and table from --results")


def _recipe_raw(label: str, value: float, steps: int, threads: int) -> dict:
    from engine import load_recipe

    raw = load_recipe(RECIPE).to_dict()  # the shipped recipe's tables, every default filled in
    plugins, swept, key, _, extra = METHODS[label]
    tables = {k: dict(v) for k, v in raw.get("plugins", {}).items() if k in BASE or k in plugins}
    for name, table in extra.items():
        tables[name] = {**tables.get(name, {}), **table}
    tables[swept] = {**tables.get(swept, {}), key: float(value)}
    run = dict(
        raw["run"],
        plugins=[*BASE[:2], *plugins, BASE[2]],
        steps=steps,
        threads=threads,
        eval_interval=0,
        checkpoint_interval=0,
        log_interval=max(1, steps // 4),
        out=f"memory://lipschitz-sweep-{uuid.uuid4().hex}",
    )
    return {"name": f"{RECIPE}-sweep", "description": f"{label}, {key} = {value}", "run": run, "plugins": tables}


def run_one(label: str, value: float, steps: int, threads: int) -> dict:
    from engine import Trainer

    trainer = Trainer.from_recipe(_recipe_raw(label, value, steps, threads), quiet=True)
    t0 = time.process_time()
    summary = trainer.run()
    m = summary["metrics"]
    _, _, key, _, _ = METHODS[label]
    return {
        "method": label,
        "key": key,
        "value": value,
        "steps": steps,
        "threads": threads,
        "val_accuracy": m.get("val/accuracy"),
        "val_loss": m.get("val/loss"),
        "bound": m.get("lipschitz/bound"),
        "max_hidden": m.get("lipschitz/max_norm/hidden"),
        "max_head": m.get("lipschitz/max_norm/head"),
        "max_embedding": m.get("lipschitz/max_norm/embedding"),
        "wall_s": summary["wall_seconds"],
        "cpu_s": round(time.process_time() - t0, 2),
    }


def _load(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def best_at(rows: list[dict], max_bound: float = 2.0) -> dict | None:
    ok = [r for r in rows if r["bound"] is not None and r["bound"] <= max_bound and r["val_accuracy"] is not None]
    return max(ok, key=lambda r: r["val_accuracy"]) if ok else None


def table(rows: list[dict]) -> str:
    lines = [
        "| method | setting | val acc | val loss | certified bound | max hidden norm | max head norm | "
        "max embedding row RMS | wall time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['key']} = {r['value']:g} | {r['val_accuracy']:.4f} | {r['val_loss']:.4f} "
            f"| {r['bound']:.4g} | {r['max_hidden']:.3f} | {r['max_head']:.3f} | {r['max_embedding']:.3f} "
            f"| {r['wall_s']:.1f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    markers = "osD^v<>"
    for i, label in enumerate(METHODS):
        pts = sorted(
            (r["bound"], r["val_accuracy"], r["value"])
            for r in rows
            if r["method"] == label and r["bound"] and r["bound"] > 0
        )
        if not pts:
            continue
        xs, ys, vs = zip(*pts)
        ax.plot(xs, ys, marker=markers[i % len(markers)], label=label)
        for x, y, v in pts:
            ax.annotate(f"{v:g}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.axvline(2.0, color="grey", ls="--", lw=0.8)
    ax.text(2.0, ax.get_ylim()[0], " bound 2", color="grey", fontsize=8, va="bottom")
    ax.set_xscale("log")
    ax.set_xlabel("certified Lipschitz bound (measured norms, log scale)")
    ax.set_ylabel("validation accuracy")
    steps = sorted({r["steps"] for r in rows})
    ax.set_title(f"{RECIPE}: {', '.join(map(str, steps))} steps per run (labels: wd or w_max)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(rows: list[dict], out: str, command: str) -> None:
    os.makedirs(out, exist_ok=True)
    plot(rows, os.path.join(out, "lipschitz-sweep.png"))
    best = best_at(rows)
    total = sum(r["wall_s"] for r in rows)
    cpu = sum(r.get("cpu_s", 0.0) for r in rows)
    text = [
        f"# Lipschitz sweep: validation accuracy vs certified bound ({RECIPE})",
        "",
        f"Produced by `{command}` ({len(rows)} runs, {total / 60:.1f} min wall, {cpu / 60:.1f} min CPU, "
        f"torch {torch.__version__}). Each run is the `{RECIPE}` recipe with the optimizer / constraint "
        f"swapped in; the certified bound is computed from the measured norms of the final weights.",
        "",
        table(rows),
        "",
        "![accuracy vs bound](lipschitz-sweep.png)",
        "",
    ]
    if best is not None:
        text.append(
            f"Best validation accuracy at certified bound <= 2: **{best['val_accuracy']:.4f}** "
            f"({best['method']}, {best['key']} = {best['value']:g}, bound {best['bound']:.3g})."
        )
    else:
        text.append("No run reached a certified bound <= 2.")
    with open(os.path.join(out, "lipschitz-sweep.md"), "w") as f:
        f.write("\n".join(text) + "\n")


def main(args) -> int:
    from engine import BadInput

    labels = [s.strip() for s in args.methods.split(",") if s.strip()] or list(METHODS)
    for label in labels:
        if label not in METHODS:
            raise BadInput(f"unknown method {label!r}; choose from {', '.join(METHODS)}")
    values = [float(v) for v in args.values.split(",") if v.strip()]
    torch.set_num_threads(max(1, args.threads))
    done = _load(args.results)
    if not args.plot_only:
        os.makedirs(os.path.dirname(args.results) or ".", exist_ok=True)
        for label in labels:
            for value in values or METHODS[label][3]:
                if any(r["method"] == label and r["value"] == value and r["steps"] == args.steps for r in done):
                    continue
                row = run_one(label, value, args.steps, args.threads)
                print(
                    f"{label:<28} {row['key']}={value:<6g} val acc {row['val_accuracy']:.4f}  "
                    f"bound {row['bound']:.4g}  {row['wall_s']:.0f}s",
                    flush=True,
                )
                done.append(row)
                with open(args.results, "a") as f:
                    f.write(json.dumps(row) + "\n")
    rows = [r for r in done if r["steps"] == args.steps and r["method"] in labels]
    rows.sort(key=lambda r: (list(METHODS).index(r["method"]), r["value"]))
    if not rows:
        raise BadInput(f"no finished runs with {args.steps} steps in {args.results}; run the sweep first")
    command = f"hookmix lipschitz-sweep --steps {args.steps} --threads {args.threads}"
    write_outputs(rows, args.out, command)
    best = best_at(rows)
    print(table(rows))
    if best is not None:
        print(
            f"best val accuracy at bound <= 2: {best['val_accuracy']:.4f} ({best['method']}, "
            f"{best['key']} = {best['value']:g}, bound {best['bound']:.3g})"
        )
    print(f"wrote {args.out}/lipschitz-sweep.png and {args.out}/lipschitz-sweep.md")
    return 0


__all__ = ["METHODS", "add_arguments", "best_at", "main", "run_one"]
