"""``hookmix countdown-compare``: SFT once, GRPO vs SofT-GRPO over seeds, pass@k table.

Registered in the ``hookmix.commands`` entry-point group (:mod:`.commands`). Every training run goes through
the engine (:func:`engine.train`) with the shipped recipes plus overrides; the pass@k numbers are
the ``passk`` plugin's end-of-run evaluation, read back from ``RUN/passk/step-*.json``.
"""

from __future__ import annotations

import os
import time

import numpy as np

from .passk import paired_bootstrap
from .runs import (
    cell,
    command_log,
    metric_ends,
    passk_record,
    per_problem,
    policy_plugin,
    run_recipe,
    train_or_reuse,
    wall_seconds,
)

KS = (1, 4, 16, 32)
REWARD = "train/reward/countdown"  # the train reward the report follows


# --- running the arms ------------------------------------------------------------------------


def run_compare(args) -> int:
    t_start = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    taus = [float(t) for t in args.taus.split(",")] if args.taus else []
    if 0.1 not in taus:
        taus = [0.1, *taus]
    sweep_seeds = seeds[: args.sweep_seeds] if args.sweep_seeds else seeds
    out = args.out.rstrip("/")
    os.makedirs(out, exist_ok=True)
    log = command_log(out, "compare.log")

    common = [f"run.threads={args.threads}", f'run.device="{args.device}"']
    passk = [
        f"plugins.passk.problems={args.problems}",
        f"plugins.passk.samples={args.samples}",
        f"plugins.passk.ks=[{','.join(str(k) for k in KS if k <= args.samples)}]",
    ]
    tau_list = "[" + ",".join(f"{t:g}" for t in taus) + "]"
    log(
        f"countdown-compare: seeds {seeds}, SofT-GRPO τ {taus} (sweep seeds {sweep_seeds}), "
        f"eval {args.problems} problems × {args.samples} samples"
    )

    sft_dir = f"{out}/sft"
    log(f"SFT ({args.sft_recipe})")
    train_or_reuse(args.sft_recipe, [*common, *passk, f"plugins.passk.taus={tau_list}", *args.sft_set], sft_dir, log)
    runs: dict[str, list[str]] = {}
    grpo_policy = policy_plugin(args.grpo_recipe, "countdown-compare")
    soft_policy = policy_plugin(args.soft_recipe, "countdown-compare")
    jobs = []
    for seed in seeds:
        jobs.append(("grpo", None, seed))
        jobs.append(("soft_grpo", 0.1, seed))
    if args.control_lr:
        jobs += [("grpo_control", None, seed) for seed in seeds]
    for tau in taus:
        if tau != 0.1:
            jobs += [("soft_grpo", tau, seed) for seed in sweep_seeds]
    skipped = []
    for i, (arm, tau, seed) in enumerate(jobs):
        elapsed = time.perf_counter() - t_start
        done = i
        if args.budget_minutes and done and arm != "grpo" and tau != 0.1:
            per = elapsed / (done + 1)  # the SFT counted as one job
            if elapsed + per > args.budget_minutes * 60:
                skipped.append((arm, tau, seed))
                continue
        if arm == "grpo":
            key, recipe = "grpo", args.grpo_recipe
            extra = [f'plugins.{grpo_policy}.init_from="{sft_dir}"', f"plugins.passk.taus={tau_list}"]
        elif arm == "grpo_control":
            key, recipe = f"grpo_lr{args.control_lr:g}", args.grpo_recipe
            extra = [
                f'plugins.{grpo_policy}.init_from="{sft_dir}"',
                "plugins.passk.taus=[0.1]",
                f"plugins.adamw.lr={args.control_lr}",
            ]
        else:
            key, recipe = f"soft_grpo_t{tau:g}", args.soft_recipe
            extra = [
                f'plugins.{soft_policy}.init_from="{sft_dir}"',
                f"plugins.soft_grpo.tau={tau}",
                f"plugins.passk.taus=[{tau:g}]",
            ]
        run_dir = f"{out}/{key}-s{seed}"
        log(f"{key} seed {seed} ({recipe})")
        train_or_reuse(recipe, [*common, *passk, f"run.seed={seed}", *extra, *args.set], run_dir, log)
        runs.setdefault(key, []).append(run_dir)
    if skipped:
        log(f"time budget: skipped {len(skipped)} optional runs: {skipped}")
    total = time.perf_counter() - t_start
    from .variants import kept_section

    text = render_report(sft_dir, runs, taus, args, total, skipped)
    text = text.rstrip("\n") + "\n\n" + kept_section(args.doc) if kept_section(args.doc) else text
    os.makedirs(os.path.dirname(os.path.abspath(args.doc)), exist_ok=True)
    with open(args.doc, "w") as f:
        f.write(text)
    log(f"wrote {args.doc} ({total / 60:.1f} min in all)")
    return 0


# --- the report ------------------------------------------------------------------------------


def _first_k(ks: list[int], records: list[dict]) -> int:
    """The k of the first-k column: the largest k below n (at k = n, first-k equals the unbiased pass@n)."""
    n = records[0]["samples"]
    below = [k for k in ks if k < n]
    return below[-1] if below else ks[-1]


def _rows(records: list[dict], label: str, ks: list[int]) -> list[str]:
    cells = [cell([r["metrics"][f"passk/{label}/pass@{k}"] for r in records]) for k in ks]
    cells.append(cell([r["metrics"][f"passk/{label}/first@{_first_k(ks, records)}"] for r in records]))
    cells.append(cell([r["metrics"][f"passk/{label}/think_len"] for r in records], 1.0))
    top1 = [r["metrics"].get(f"passk/{label}/top1_weight", float("nan")) for r in records]
    cells.append(cell(top1, 1.0, 3) if any(t == t for t in top1) else "–")
    return cells


def render_report(
    sft_dir: str, runs: dict[str, list[str]], taus: list[float], args, total: float, skipped: list
) -> str:
    sft = passk_record(sft_dir)
    ks = [k for k in KS if k <= args.samples]
    recs = {key: [passk_record(d) for d in dirs] for key, dirs in runs.items()}
    head = (
        "| model | decoding | seeds | "
        + " | ".join(f"pass@{k}" for k in ks)
        + f" | first@{_first_k(ks, [sft])} | think len | top-1 weight | train reward (first → last 3 logs) | KL to θ0 (last 3 logs) |"
    )
    lines = [head, "|" + "---|" * (len(ks) + 8)]

    def row(model, decoding, records, label, dirs=None):
        n = len(records)
        train = ["–", "–"]
        if dirs:
            pairs = [metric_ends(d, REWARD) for d in dirs]
            train = [
                f"{cell([a for a, _ in pairs])} → {cell([b for _, b in pairs])}",
                cell([metric_ends(d, "train/rl/kl")[1] for d in dirs], 1.0, 3),
            ]
        lines.append(f"| {model} | {decoding} | {n} | " + " | ".join([*_rows(records, label, ks), *train]) + " |")

    row("θ0 (SFT)", "discrete", [sft], "discrete")
    for tau in taus:
        row("θ0 (SFT)", f"soft τ {tau:g}", [sft], f"soft_t{tau:g}")
    if "grpo" in recs:
        row("GRPO", "discrete", recs["grpo"], "discrete", runs["grpo"])
        for tau in taus:
            row("GRPO", f"soft τ {tau:g}", recs["grpo"], f"soft_t{tau:g}")
    for key in [k for k in recs if k.startswith("grpo_lr")]:
        lr = key.removeprefix("grpo_lr")
        row(f"GRPO, lr {lr} (control)", "discrete", recs[key], "discrete", runs[key])
        row(f"GRPO, lr {lr} (control)", "soft τ 0.1", recs[key], "soft_t0.1")
    for tau in taus:
        key = f"soft_grpo_t{tau:g}"
        if key in recs:
            row(f"**SofT-GRPO τ {tau:g}**", "discrete", recs[key], "discrete", runs[key])
            row(f"**SofT-GRPO τ {tau:g}**", f"soft τ {tau:g}", recs[key], f"soft_t{tau:g}")

    # gaps paired over problems (per-problem values averaged over seeds): the paper's pairing (each arm in its own
    # decoding) and the decoding-matched pairings, so that a decoding change is not credited to training
    pairings = [
        ("SofT-GRPO τ 0.1 (soft τ 0.1) − GRPO (discrete)", "soft_t0.1", "discrete"),
        ("SofT-GRPO τ 0.1 (discrete) − GRPO (discrete)", "discrete", "discrete"),
        ("SofT-GRPO τ 0.1 (soft τ 0.1) − GRPO (soft τ 0.1)", "soft_t0.1", "soft_t0.1"),
    ]
    gaps: dict[str, list] = {}
    control = next((k for k in recs if k.startswith("grpo_lr")), None)
    pairs = [(title, sl, gl, "grpo") for title, sl, gl in pairings]
    if control is not None:
        lr = control.removeprefix("grpo_lr")
        pairs.append(
            (f"SofT-GRPO τ 0.1 (soft τ 0.1) − GRPO lr {lr} control (discrete)", "soft_t0.1", "discrete", control)
        )
    if "grpo" in recs and "soft_grpo_t0.1" in recs:
        for title, soft_label, grpo_label, base in pairs:
            for k in (1, ks[-1]):
                g = np.mean([per_problem(r, grpo_label, k) for r in recs[base]], axis=0)
                s = np.mean([per_problem(r, soft_label, k) for r in recs["soft_grpo_t0.1"]], axis=0)
                b = paired_bootstrap(s, g, n_boot=10_000, seed=0)
                per_seed = [
                    r1["metrics"][f"passk/{soft_label}/pass@{k}"] - r0["metrics"][f"passk/{grpo_label}/pass@{k}"]
                    for r0, r1 in zip(recs[base], recs["soft_grpo_t0.1"])
                ]
                gaps.setdefault(title, []).append((k, b, per_seed))

    out = [
        "# SofT-GRPO vs GRPO on Countdown (tiny scale)",
        "",
        "Generated by `hookmix countdown-compare` (plugins/soft_grpo/compare.py); do not edit by hand.",
        "",
        "## Command",
        "",
        "```bash",
        command_line(args),
        "```",
        "",
        f"{1 + sum(len(d) for d in runs.values())} training runs (each with its final evaluation) took "
        f"{wall_seconds([sft_dir, *[d for ds in runs.values() for d in ds]]) / 60:.1f} min of wall time in all "
        f"({args.threads} torch thread(s), device {args.device}; from each run's summary.json; this invocation "
        f"{total / 60:.1f} min, finished runs are reused). Runs under `{args.out}/`.",
        "",
        "## Setup",
        "",
        *setup_lines(sft_dir, runs, args),
        "",
    ]
    out += ["## pass@k", "", *lines, ""]
    if gaps:
        out += [
            "## Gaps between the arms",
            "",
            "Paired bootstrap over problems (per-problem unbiased pass@k averaged over seeds; 10,000 resamples); "
            "the first pairing is the paper's (each arm in its own decoding).",
            "",
            "| pairing | k | gap (points) | 95% CI | per-seed gaps |",
            "|---|---|---|---|---|",
        ]
        for title, rows in gaps.items():
            for k, b, per_seed in rows:
                out.append(
                    f"| {title} | pass@{k} | {100 * b['mean_diff']:+.1f} | [{100 * b['ci_low']:+.1f}, "
                    f"{100 * b['ci_high']:+.1f}] | " + ", ".join(f"{100 * d:+.1f}" for d in per_seed) + " |"
                )
        out.append("")
        out += ["## Does the paper's pattern reproduce?", "", verdict_text(gaps[pairings[0][0]]), ""]
    if skipped:
        out += [
            f"Skipped by the time budget ({args.budget_minutes} min): "
            + ", ".join(f"{a}{'' if t is None else f' τ {t:g}'} seed {s}" for a, t, s in skipped)
            + ".",
            "",
        ]
    return "\n".join(out)


def setup_lines(sft_dir: str, runs: dict[str, list[str]], args) -> list[str]:
    """The settings that matter, read back from the resolved recipes the runs saved."""
    sft = run_recipe(sft_dir)
    data, opt = sft["plugins"]["countdown"], sft["plugins"]["adamw"]
    pol = sft["plugins"].get("tiny_policy")
    model = (
        f"tiny_policy d {pol['d_model']} × {pol['n_layers']} layers"
        if pol is not None
        else f"hf_policy {sft['plugins'].get('hf_policy', {}).get('path') or 'random'}"
    )
    out = [
        f"- Task: Countdown with {data['n_numbers']} numbers in 1..{data['number_max']}, targets in "
        f"1..{data['target_max']} with ≥ {data['min_solutions']} solution(s), operators `{data['ops']}`; held-out "
        f"problems by a hash split of the problem key (never trained on).",
        f"- θ0: one SFT run (`{args.sft_recipe}`): {model}, "
        f"{sft['run']['steps']} steps × {data['batch_size']} gold traces with {data['step_corrupt_rate']:.0%} "
        f"corrupted scratchpad steps, AdamW lr {opt['lr']:g}. Both RL arms start from its checkpoint.",
    ]
    for key, name in (("grpo", "GRPO"), ("soft_grpo_t0.1", "SofT-GRPO")):
        if key not in runs:
            continue
        rec = run_recipe(runs[key][0])
        arm = rec["plugins"]["grpo" if key == "grpo" else "soft_grpo"]
        rl_opt, rl_data = rec["plugins"]["adamw"], rec["plugins"]["countdown"]
        extra = (
            (
                f", τ {arm['tau']:g} (τ sweep: {', '.join(k.split('_t')[1] for k in runs if k.startswith('soft_'))}), "
                f"λ {arm['noise_factor']:g}, noise clamp {arm['gumbel_clamp']}, {arm['soft_density']} Gumbel "
                f"log-density, detached inputs {arm['detach_inputs']}"
            )
            if key != "grpo"
            else ""
        )
        out.append(
            f"- {name} (`{rec['name']}`): {rec['run']['steps']} steps × {rl_data['batch_size']} prompts × "
            f"G {arm['group_size']}, {arm['minibatches']} optimizer step(s) per rollout batch, T "
            f"{arm['temperature']:g}, top-k {arm['top_k']}, top-p {arm['top_p']:g}, think ≤ {arm['think_cap']}, "
            f"answer ≤ {arm['answer_cap']}; PPO-clip {arm['clip_eps']:g}, dual clip {arm['dual_clip']:g}, "
            f"β {arm['kl_coef']:g} k3 KL to θ0, {arm['agg']}; AdamW lr {rl_opt['lr']:g}{extra}."
        )
    pk = sft["plugins"]["passk"]
    out.append(
        f"- Evaluation (`passk`): {pk['problems']} held-out problems × {pk['samples']} samples, T "
        f"{pk['temperature']:g}, top-k {pk['top_k']}, top-p {pk['top_p']:g}, think ≤ {pk['think_cap']}, answer ≤ "
        f"{pk['answer_cap']}; unbiased pass@k (Chen et al.) and the official first-k variant; discrete decoding "
        "and soft+Gumbel decoding at τ (same noise seed for every model). Values in %, mean ± std over seeds "
        "(θ0 is one model: no spread)."
    )
    return out


def verdict_text(gaps) -> str:
    """An automatic, literal reading of the two gaps (the paper: pass@1 ≈ equal, pass@32 higher for SofT-GRPO)."""
    (k1, b1, _), (kn, bn, _) = gaps[0], gaps[-1]
    eq1 = b1["ci_low"] <= 0.0 <= b1["ci_high"]
    up = bn["ci_low"] > 0.0
    parts = [
        f"pass@{k1}: gap {100 * b1['mean_diff']:+.1f} points, "
        + ("its 95% CI contains 0 (≈ equal, as in the paper)." if eq1 else "its 95% CI excludes 0 (not equal)."),
        f"pass@{kn}: gap {100 * bn['mean_diff']:+.1f} points, "
        + (
            "CI above 0: SofT-GRPO higher, as in the paper."
            if up
            else "CI not above 0: the paper's pass@k advantage is not reproduced at this scale."
        ),
    ]
    parts.append(
        "Pattern reproduced." if eq1 and up else "Pattern not reproduced (see the table for the full picture)."
    )
    return " ".join(parts)


def command_line(args) -> str:
    parts = [
        "hookmix countdown-compare",
        f"--seeds {args.seeds}",
        f"--taus {args.taus}",
        f"--problems {args.problems}",
        f"--samples {args.samples}",
        f"--out {args.out}",
    ]
    if args.sweep_seeds:
        parts.append(f"--sweep-seeds {args.sweep_seeds}")
    if args.control_lr:
        parts.append(f"--control-lr {args.control_lr:g}")
    if args.budget_minutes:
        parts.append(f"--budget-minutes {args.budget_minutes:g}")
    for flag, value, default in (
        ("--sft-recipe", args.sft_recipe, "countdown-sft"),
        ("--grpo-recipe", args.grpo_recipe, "countdown-grpo"),
        ("--soft-recipe", args.soft_recipe, "countdown-soft-grpo"),
        ("--device", args.device, "cpu"),
    ):
        if value != default:
            parts.append(f"{flag} {value}")
    parts += [f"--set {s}" for s in args.set] + [f"--sft-set {s}" for s in args.sft_set]
    return " ".join(parts)


def compare_arguments(p) -> None:
    p.add_argument("--out", default="runs/countdown-compare", help="directory of all runs (finished runs are reused)")
    p.add_argument("--seeds", default="0,1,2", help="RL seeds, comma-separated")
    p.add_argument("--taus", default="0.1,0.25,0.5", help="SofT-GRPO τ values (0.1 is the main arm)")
    p.add_argument("--sweep-seeds", type=int, default=0, help="seeds of the τ ≠ 0.1 arms (0: all)")
    p.add_argument("--problems", type=int, default=64, help="held-out problems evaluated")
    p.add_argument("--samples", type=int, default=32, help="samples per problem")
    p.add_argument("--sft-recipe", default="countdown-sft")
    p.add_argument("--grpo-recipe", default="countdown-grpo")
    p.add_argument("--soft-recipe", default="countdown-soft-grpo")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override for every RL run (plugins.X.* only where X is enabled)",
    )
    p.add_argument("--sft-set", action="append", default=[], metavar="KEY=VALUE", help="override for the SFT run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--control-lr",
        type=float,
        default=0.0,
        help="also run GRPO at this learning rate over all seeds (a smaller-step control; 0: off)",
    )
    p.add_argument(
        "--budget-minutes",
        type=float,
        default=0.0,
        help="skip optional runs (control, τ sweep) that would overrun (0: none)",
    )
    p.add_argument("--doc", default="docs/soft-grpo-countdown.md", help="where the report is written")
