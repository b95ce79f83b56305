"""``hookmix countdown-gkd``: the Countdown GKD experiment, modelled on ``hookmix countdown-compare``.

The student's start θ0 (``countdown-sft``, the θ0 of the GRPO experiment) and the teacher (``countdown-sft-teacher``,
a larger tiny_policy SFT'd on the same traces) are trained once; then, for each seed and at the same budget (steps,
sequences per step, optimizer, clipping), on-policy GKD (``countdown-gkd``, lmbda 1), off-policy GKD (the same loss
on the data set's gold traces: ``countdown-gkd-offpolicy``, lmbda 0; optionally on the teacher's samples, seq_kd)
and plain SFT of the student (the on-policy recipe with the data in SFT mode and ``cross_entropy`` instead of the
teacher and ``gkd``). Every run is the engine's (:func:`engine.train`) and ends with the ``passk`` evaluation; a
finished run in ``--out`` is reused. The report (docs/gkd-countdown.md) is generated.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from plugins.soft_grpo.passk import paired_bootstrap
from plugins.soft_grpo.runs import (
    CPU_FILE,
    cell,
    command_log,
    cpu_seconds,
    metric_ends,
    passk_record,
    per_problem,
    run_recipe,
    train_or_reuse,
    wall_seconds,
)

KS = (1, 4, 16, 32)


def sft_arm(gkd_recipe: str) -> dict:
    """Plain SFT at GKD's budget: the GKD recipe with the data in SFT mode and cross-entropy for teacher and gkd."""
    import engine

    tables = engine.load_recipe(gkd_recipe).to_dict()
    run = tables["run"]
    run["plugins"] = [p for p in run["plugins"] if p not in ("teacher", "gkd", "countdown_reward")] + ["cross_entropy"]
    tables["plugins"]["countdown"]["mode"] = "sft"
    for name in ("teacher", "gkd", "countdown_reward"):
        tables["plugins"].pop(name, None)
    tables.pop("description", None)
    return tables


def run_gkd(args) -> int:
    t_start = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    out = args.out.rstrip("/")
    os.makedirs(out, exist_ok=True)

    log = command_log(out, "gkd.log")

    common = [f"run.threads={args.threads}", f'run.device="{args.device}"']
    passk = [
        f"plugins.passk.problems={args.problems}",
        f"plugins.passk.samples={args.samples}",
        f"plugins.passk.ks=[{','.join(str(k) for k in KS if k <= args.samples)}]",
        'plugins.passk.modes=["discrete"]',
    ]
    log(f"countdown-gkd: seeds {seeds}, eval {args.problems} problems × {args.samples} samples")
    student0, teacher = f"{out}/student-sft", f"{out}/teacher-sft"
    log(f"student θ0 ({args.student_recipe})")
    train_or_reuse(args.student_recipe, [*common, *passk, *args.student_set], student0, log)
    log(f"teacher ({args.teacher_recipe})")
    train_or_reuse(args.teacher_recipe, [*common, *passk, *args.teacher_set], teacher, log)
    start = [f'plugins.tiny_policy.init_from="{student0}"']
    arms = {
        "on": (args.gkd_recipe, [f'plugins.teacher.run="{teacher}"']),
        "off": (args.offpolicy_recipe, [f'plugins.teacher.run="{teacher}"']),
        "sft": (sft_arm(args.gkd_recipe), []),
    }
    if args.seq_kd:
        arms["seqkd"] = (args.offpolicy_recipe, [f'plugins.teacher.run="{teacher}"', "plugins.gkd.seq_kd=true"])
    runs: dict[str, list[str]] = {}
    for seed in seeds:
        for key, (recipe, extra) in arms.items():
            run_dir = f"{out}/{key}-s{seed}"
            log(f"{key} seed {seed}")
            train_or_reuse(recipe, [*common, *passk, f"run.seed={seed}", *start, *extra, *args.set], run_dir, log)
            runs.setdefault(key, []).append(run_dir)
    total = time.perf_counter() - t_start
    text = render_report(student0, teacher, runs, args, total)
    os.makedirs(os.path.dirname(os.path.abspath(args.doc)), exist_ok=True)
    with open(args.doc, "w") as f:
        f.write(text)
    log(f"wrote {args.doc} ({total / 60:.1f} min in all)")
    return 0


# --- the report ------------------------------------------------------------------------------

NAMES = {
    "on": "**on-policy GKD** (λ 1)",
    "off": "off-policy GKD (λ 0, gold traces)",
    "seqkd": "off-policy GKD (λ 0, teacher samples: seq_kd)",
    "sft": "SFT (same budget)",
}


def _first_last(pairs: list[tuple[float, float]], scale: float = 100.0, digits: int = 1) -> str:
    if all(a != a for a, _ in pairs):
        return "–"
    return f"{cell([a for a, _ in pairs], scale, digits)} → {cell([b for _, b in pairs], scale, digits)}"


def render_report(student0: str, teacher: str, runs: dict[str, list[str]], args, total: float) -> str:
    ks = [k for k in KS if k <= args.samples]
    recs = {key: [passk_record(d) for d in dirs] for key, dirs in runs.items()}
    head = (
        "| model | seeds | "
        + " | ".join(f"pass@{k}" for k in ks)
        + " | val CE (gold traces) | train gkd term (first → last 3 logs) | train reward on own samples |"
    )
    table = [head, "|" + "---|" * (len(ks) + 5)]

    def row(name: str, dirs: list[str]) -> None:
        records = [passk_record(d) for d in dirs]
        cells = [cell([r["metrics"][f"passk/discrete/pass@{k}"] for r in records]) for k in ks]
        summaries = [json.load(open(os.path.join(d, "summary.json")))["metrics"] for d in dirs]
        cells.append(cell([s.get("val/loss", float("nan")) for s in summaries], 1.0, 3))
        cells.append(_first_last([metric_ends(d, "train/loss/gkd") for d in dirs], 1.0, 3))
        on_policy = name == NAMES["on"]  # the reward of the other arms' batches is the gold traces' own
        cells.append(_first_last([metric_ends(d, "train/reward/countdown") for d in dirs]) if on_policy else "–")
        table.append(f"| {name} | {len(dirs)} | " + " | ".join(cells) + " |")

    row("teacher (SFT)", [teacher])
    row("student θ0 (SFT)", [student0])
    for key in ("on", "off", "seqkd", "sft"):
        if key in runs:
            row(NAMES[key], runs[key])

    gaps = []
    for base in [b for b in ("off", "seqkd", "sft") if b in recs and "on" in recs]:
        for k in (1, ks[-1]):
            on = np.mean([per_problem(r, "discrete", k) for r in recs["on"]], axis=0)
            other = np.mean([per_problem(r, "discrete", k) for r in recs[base]], axis=0)
            b = paired_bootstrap(on, other, n_boot=10_000, seed=0)
            per_seed = [
                r1["metrics"][f"passk/discrete/pass@{k}"] - r0["metrics"][f"passk/discrete/pass@{k}"]
                for r0, r1 in zip(recs[base], recs["on"])
            ]
            gaps.append((f"on-policy − {NAMES[base].replace('*', '')}", k, b, per_seed))

    n_runs = 2 + sum(len(d) for d in runs.values())
    all_dirs = [student0, teacher, *[d for ds in runs.values() for d in ds]]
    cpu = sum(cpu_seconds(d) for d in all_dirs)
    wall = wall_seconds(all_dirs)
    out = [
        "# On-policy distillation (GKD) on Countdown (tiny scale)",
        "",
        "Generated by `hookmix countdown-gkd` (plugins/gkd/experiment.py); do not edit by hand. The method and its",
        "options: [gkd.md](gkd.md).",
        "",
        "## Command",
        "",
        "```bash",
        command_line(args),
        "```",
        "",
        f"{n_runs} training runs (each with its final evaluation) took {cpu / 60:.1f} min of process CPU time "
        f"({wall / 60:.1f} min wall, on a shared machine) in all ({args.threads} torch thread(s), device "
        f"{args.device}; CPU from each run's `{CPU_FILE}`, wall from its `summary.json`; this invocation "
        f"{total / 60:.1f} min, finished runs are reused). Runs under `{args.out}/`.",
        "",
        "## Setup",
        "",
        *setup_lines(student0, teacher, runs, args),
        "",
        "## pass@k",
        "",
        *table,
        "",
    ]
    if gaps:
        out += [
            "## Gaps",
            "",
            "Paired bootstrap over the held-out problems (per-problem unbiased pass@k averaged over seeds; 10,000 "
            "resamples; points = percentage points).",
            "",
            "| pairing | k | gap (points) | 95% CI | per-seed gaps |",
            "|---|---|---|---|---|",
        ]
        for title, k, b, per_seed in gaps:
            out.append(
                f"| {title} | pass@{k} | {100 * b['mean_diff']:+.1f} | [{100 * b['ci_low']:+.1f}, "
                f"{100 * b['ci_high']:+.1f}] | " + ", ".join(f"{100 * d:+.1f}" for d in per_seed) + " |"
            )
        out += ["", "## What the gaps say", "", *verdict_lines(gaps), ""]
    return "\n".join(out)


def verdict_lines(gaps) -> list[str]:
    """A literal reading of each gap's interval (generated, so it cannot disagree with the table)."""
    lines = []
    for title, k, b, _ in gaps:
        if b["ci_low"] > 0:
            reading = "the interval is above 0: on-policy GKD is ahead"
        elif b["ci_high"] < 0:
            reading = "the interval is below 0: on-policy GKD is behind"
        else:
            reading = "the interval contains 0: no difference detected at this scale"
        lines.append(f"- {title}, pass@{k}: {100 * b['mean_diff']:+.1f} points; {reading}.")
    return lines


def setup_lines(student0: str, teacher: str, runs: dict[str, list[str]], args) -> list[str]:
    """The settings that matter, read back from the resolved recipes the runs saved."""
    s0, t = run_recipe(student0), run_recipe(teacher)
    data = s0["plugins"]["countdown"]

    def model(rec: dict) -> str:
        p = rec["plugins"]["tiny_policy"]
        return f"tiny_policy d {p['d_model']} × {p['n_layers']} layers"

    def sft(rec: dict) -> str:
        d, o = rec["plugins"]["countdown"], rec["plugins"]["adamw"]
        return (
            f"{model(rec)}, {rec['run']['steps']} steps × {d['batch_size']} gold traces with "
            f"{d['step_corrupt_rate']:.0%} corrupted scratchpad steps, AdamW lr {o['lr']:g} {o['schedule']}"
        )

    out = [
        f"- Task: Countdown with {data['n_numbers']} numbers in 1..{data['number_max']}, targets in "
        f"1..{data['target_max']}, operators `{data['ops']}`; held-out problems by a hash split (never trained on).",
        f"- Student θ0 (`{args.student_recipe}`, the θ0 of docs/soft-grpo-countdown.md): {sft(s0)}. Every arm "
        "starts from it: GKD distils into an SFT'd student, as in the paper, and a student that cannot yet write a "
        "trace would sample sequences with nothing for the teacher to correct.",
        f"- Teacher (`{args.teacher_recipe}`): {sft(t)}.",
    ]
    if "on" in runs:
        rec = run_recipe(runs["on"][0])
        g, d, o = rec["plugins"]["gkd"], rec["plugins"]["countdown"], rec["plugins"]["adamw"]
        out.append(
            f"- GKD (`{args.gkd_recipe}` / `{args.offpolicy_recipe}`): {rec['run']['steps']} steps × "
            f"{d['batch_size']} sequences (one per prompt), generalized JSD β {g['beta']:g} at loss temperature "
            f"{g['loss_temperature']:g}, batchmean over the response tokens; student samples at T "
            f"{g['temperature']:g}, top-k {g['top_k'] or 'off'}, top-p {g['top_p']:g}, think ≤ {g['think_cap']}, "
            f"answer ≤ {g['answer_cap']}; λ 1 (on-policy) vs λ 0 (off-policy: the data set's gold traces"
            f"{', or the teacher samples with seq_kd' if 'seqkd' in runs else ''}); AdamW lr {o['lr']:g} "
            f"{o['schedule']}, grad clip {rec['run']['grad_clip']:g}."
        )
        out.append(
            "- SFT (same budget): the on-policy recipe with `countdown` in SFT mode and `cross_entropy` in place of "
            "`teacher` + `gkd`: the same steps, sequences per step, optimizer and clipping, on uncorrupted gold "
            "traces (the off-policy arm's sequences)."
        )
    pk = s0["plugins"]["passk"]
    out.append(
        f"- Evaluation (`passk`): {args.problems} held-out problems × {args.samples} samples, discrete decoding at "
        f"T {pk['temperature']:g}, top-k {pk['top_k']}, top-p {pk['top_p']:g}, think ≤ {pk['think_cap']}, answer ≤ "
        f"{pk['answer_cap']}, the same noise seed for every model; unbiased pass@k (Chen et al.). Values in %, mean ± "
        "std over seeds (the teacher and θ0 are one model each: no spread). val CE: the engine's cross-entropy on "
        "held-out gold traces."
    )
    return out


def command_line(args) -> str:
    parts = ["hookmix countdown-gkd", f"--seeds {args.seeds}", f"--problems {args.problems}"]
    parts += [f"--samples {args.samples}", f"--out {args.out}"]
    if args.seq_kd:
        parts.append("--seq-kd")
    for flag, value, default in (
        ("--student-recipe", args.student_recipe, "countdown-sft"),
        ("--teacher-recipe", args.teacher_recipe, "countdown-sft-teacher"),
        ("--gkd-recipe", args.gkd_recipe, "countdown-gkd"),
        ("--offpolicy-recipe", args.offpolicy_recipe, "countdown-gkd-offpolicy"),
        ("--device", args.device, "cpu"),
        ("--threads", str(args.threads), "1"),
    ):
        if value != default:
            parts.append(f"{flag} {value}")
    parts += [f"--set {s}" for s in args.set]
    parts += [f"--student-set {s}" for s in args.student_set] + [f"--teacher-set {s}" for s in args.teacher_set]
    return " ".join(parts)


def gkd_arguments(p) -> None:
    p.add_argument("--out", default="runs/countdown-gkd", help="directory of all runs (finished runs are reused)")
    p.add_argument("--seeds", default="0,1,2", help="seeds of the three arms, comma-separated")
    p.add_argument("--problems", type=int, default=128, help="held-out problems evaluated")
    p.add_argument("--samples", type=int, default=32, help="samples per problem")
    p.add_argument("--seq-kd", action="store_true", help="also run off-policy GKD on the teacher's samples")
    p.add_argument("--student-recipe", default="countdown-sft", help="the student's θ0 (SFT)")
    p.add_argument("--teacher-recipe", default="countdown-sft-teacher")
    p.add_argument("--gkd-recipe", default="countdown-gkd", help="on-policy GKD; its budget is the SFT arm's too")
    p.add_argument("--offpolicy-recipe", default="countdown-gkd-offpolicy")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every arm")
    p.add_argument("--student-set", action="append", default=[], metavar="KEY=VALUE", help="override for θ0")
    p.add_argument("--teacher-set", action="append", default=[], metavar="KEY=VALUE", help="override for the teacher")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--doc", default="docs/gkd-countdown.md", help="where the report is written")
