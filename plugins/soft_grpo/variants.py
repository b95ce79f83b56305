"""``hookmix countdown-variants``: the GRPO loss family on Countdown, discrete and soft rollouts, over seeds.

Four variants of the same run (the shipped ``countdown-grpo`` / ``countdown-soft-grpo`` recipes from one SFT θ0,
the same budget), each a set of overrides of the ``grpo`` / ``soft_grpo`` options (docs/soft-grpo.md):

* ``grpo``: ``loss_type = "grpo"`` (per-sequence mean), group-scaled advantages;
* ``dr_grpo``: ``loss_type = "dr_grpo"`` (constant ``N · L_max``), mean-only advantages (``scale_rewards = "none"``);
* ``dapo``: ``loss_type = "dapo"`` (step token mean), clip-higher ``ε_high = 0.28``, dynamic sampling (2× the
  prompts drawn), soft overlong punishment (``L_cache = 4``);
* ``gspo``: ``importance_sampling_level = "sequence"`` with GSPO's clip ``3e-4 / 4e-4`` (``loss_type = "grpo"``).

Every run is evaluated by ``passk`` in its own decoding (discrete for ``grpo``, soft thinking at τ for
``soft_grpo``); the report gives pass@1 and pass@k (mean ± std over seeds) and paired-bootstrap gaps over problems
(per-problem unbiased pass@k averaged over seeds). Finished runs are reused (a run directory with
``summary.json``), so an interrupted invocation continues where it stopped.
"""

from __future__ import annotations

import os
import platform
import time

import numpy as np
import torch

from .passk import paired_bootstrap
from .runs import cell, command_log, metric_ends, passk_record, per_problem, policy_plugin, train_or_reuse, wall_seconds

VARIANTS = {
    "grpo": ['loss_type="grpo"', 'scale_rewards="group"'],
    "dr_grpo": ['loss_type="dr_grpo"', 'scale_rewards="none"', "scale_advantages=false"],
    "dapo": ['loss_type="dapo"', "clip_eps_high=0.28", "dynamic_sampling=2", "overlong_cache=4"],
    "gspo": ['loss_type="grpo"', 'importance_sampling_level="sequence"', "clip_eps=0.0003", "clip_eps_high=0.0004"],
}
ARMS = {"discrete": "grpo", "soft": "soft_grpo"}


def run_variants(args) -> int:
    t_start = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        from engine import BadInput

        raise BadInput(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    out = args.out.rstrip("/")
    os.makedirs(out, exist_ok=True)

    log = command_log(out, "variants.log")

    ks = sorted({1, args.samples})
    common = [
        f"run.threads={args.threads}",
        f"plugins.passk.problems={args.problems}",
        f"plugins.passk.samples={args.samples}",
        f"plugins.passk.ks=[{','.join(map(str, ks))}]",
    ]
    sft_dir = f"{out}/sft"
    log(f"SFT ({args.sft_recipe})")
    train_or_reuse(args.sft_recipe, [*common, 'plugins.passk.modes=["discrete"]', *args.sft_set], sft_dir, log)
    runs: dict[tuple[str, str], list[str]] = {}
    recipes = {"discrete": args.grpo_recipe, "soft": args.soft_recipe}
    for variant in variants:
        for arm, plugin in ARMS.items():
            policy = policy_plugin(recipes[arm], "countdown-variants")
            decoding = (
                ['plugins.passk.modes=["discrete"]']
                if arm == "discrete"
                else [
                    'plugins.passk.modes=["soft"]',
                    f"plugins.passk.taus=[{args.tau:g}]",
                    f"plugins.soft_grpo.tau={args.tau:g}",
                ]
            )
            for seed in seeds:
                run_dir = f"{out}/{variant}-{arm}-s{seed}"
                log(f"{variant} {arm} seed {seed}")
                extra = [f"plugins.{plugin}.{o}" for o in VARIANTS[variant]]
                extra += [f'plugins.{policy}.init_from="{sft_dir}"', f"run.seed={seed}", *decoding]
                train_or_reuse(recipes[arm], [*common, *extra, *args.set], run_dir, log)
                runs.setdefault((variant, arm), []).append(run_dir)
    total = time.perf_counter() - t_start
    write_section(args.doc, render(runs, variants, seeds, ks, args, total))
    log(f"wrote {args.doc} ({total / 60:.1f} min)")
    return 0


#: the markers of this command's section in its document (``countdown-compare`` keeps the section when it rewrites)
START, END = "<!-- countdown-variants: start -->", "<!-- countdown-variants: end -->"


def write_section(doc: str, text: str) -> None:
    """Put ``text`` between the markers in ``doc``: replaced if there, appended otherwise (the rest is kept)."""
    old = open(doc).read() if os.path.exists(doc) else ""
    section = f"{START}\n{text.strip()}\n{END}\n"
    if START in old and END in old:
        new = old[: old.index(START)] + section + old[old.index(END) + len(END) :].lstrip("\n")
    else:
        new = (old.rstrip("\n") + "\n\n" if old else "") + section
    with open(doc, "w") as f:
        f.write(new)


def kept_section(doc: str) -> str:
    """This command's section of ``doc`` with its markers, or ``""``: what a rewrite of the rest must keep."""
    old = open(doc).read() if os.path.exists(doc) else ""
    if START not in old or END not in old:
        return ""
    return old[old.index(START) : old.index(END) + len(END)] + "\n"


def _label(arm: str, tau: float) -> str:
    return "discrete" if arm == "discrete" else f"soft_t{tau:g}"


def render(runs, variants, seeds, ks, args, total) -> str:
    recs = {key: [passk_record(d) for d in dirs] for key, dirs in runs.items()}
    k_hi = ks[-1]
    cmd = (
        (
            f"hookmix countdown-variants --seeds {args.seeds} --variants {args.variants} --problems {args.problems} "
            f"--samples {args.samples} --tau {args.tau:g} --out {args.out}"
        )
        + "".join(f" --set {o}" for o in args.set)
        + "".join(f" --sft-set {o}" for o in args.sft_set)
    )
    wall = wall_seconds([d for dirs in runs.values() for d in dirs] + [f"{args.out.rstrip('/')}/sft"]) / 60
    lines = [
        "## The GRPO loss family: discrete and soft rollouts",
        "",
        "This section is generated by `hookmix countdown-variants` (plugins/soft_grpo/variants.py); do not edit it "
        "by hand (`hookmix countdown-compare` keeps it when it rewrites the rest).",
        "",
        "```bash",
        cmd,
        "```",
        "",
        f"{sum(len(d) for d in runs.values())} RL runs and one SFT run: {wall:.1f} min of training and evaluation "
        f"wall time in all, summed over runs ({args.threads} torch thread(s) each, CPU, {platform.machine()}, "
        f"torch {torch.__version__}); runs under `{args.out}/`, reused when finished.",
        "",
        "### Setup",
        "",
        f"- θ0: one SFT run (`{args.sft_recipe}`); every RL run starts from it. RL runs: the shipped "
        f"`{args.grpo_recipe}` (discrete rollouts, plugin `grpo`) and `{args.soft_recipe}` (soft thinking + Gumbel, "
        f"plugin `soft_grpo`, τ {args.tau:g}), the same budget for every variant; seeds {', '.join(map(str, seeds))}.",
        "- Variants (overrides of `[plugins.grpo]` / `[plugins.soft_grpo]`; formulas in docs/soft-grpo.md):",
    ]
    lines += [f"  - `{v}`: " + ", ".join(f"`{o}`" for o in VARIANTS[v]) for v in variants]
    lines += [
        f"- Evaluation (`passk`): {args.problems} held-out problems × {args.samples} samples, each run in its own "
        f"decoding (discrete for the discrete arm, soft thinking at τ {args.tau:g} for the soft arm); unbiased "
        "pass@k (Chen et al.), in %, mean ± std over seeds.",
        "",
        "### pass@k",
        "",
        f"| variant | rollouts | seeds | pass@1 | pass@{k_hi} | train reward (last 3 logs) |",
        "|---|---|---|---|---|---|",
    ]
    for v in variants:
        for arm in ARMS:
            rs = recs.get((v, arm), [])
            if not rs:
                continue
            label = _label(arm, args.tau)
            cells = [cell([r["metrics"][f"passk/{label}/pass@{k}"] for r in rs]) for k in (1, k_hi)]
            reward = cell([metric_ends(d, "train/reward/countdown")[1] for d in runs[(v, arm)]])
            lines.append(f"| `{v}` | {arm} | {len(rs)} | {cells[0]} | {cells[1]} | {reward} |")
    lines += [
        "",
        "### Paired gaps",
        "",
        "Paired bootstrap over problems (10,000 resamples) of the per-problem unbiased pass@k averaged over seeds; "
        "points, with the 95% interval.",
        "",
        "| pairing | k | gap (points) | 95% CI |",
        "|---|---|---|---|",
    ]

    def seed_mean(v, arm, k):  # per problem, averaged over seeds
        return np.mean([per_problem(r, _label(arm, args.tau), k) for r in recs[(v, arm)]], axis=0)

    pairs = [(f"`{v}` − `grpo` ({arm})", (v, arm), ("grpo", arm)) for v in variants if v != "grpo" for arm in ARMS]
    pairs += [(f"`{v}`: soft − discrete", (v, "soft"), (v, "discrete")) for v in variants]
    for title, a, b in pairs:
        if a not in recs or b not in recs:
            continue
        for k in (1, k_hi):
            g = paired_bootstrap(seed_mean(*a, k), seed_mean(*b, k), n_boot=10_000, seed=0)
            lines.append(
                f"| {title} | pass@{k} | {100 * g['mean_diff']:+.1f} | "
                f"[{100 * g['ci_low']:+.1f}, {100 * g['ci_high']:+.1f}] |"
            )
    lines += [
        "",
        "A gap whose interval contains 0 is not distinguishable from no effect at this scale (3 seeds, a tiny policy); "
        "the table is a check that every variant trains in both rollout modes from one recipe, not a ranking. "
        "`dapo`'s train reward is that of the groups its dynamic sampling kept (those with a reward spread, drawn from "
        "twice the prompts), so it is not comparable with the other rows' (every drawn group).",
        "",
    ]
    return "\n".join(lines)


def variants_arguments(p) -> None:
    p.add_argument("--out", default="runs/countdown-variants", help="directory of all runs (finished runs are reused)")
    p.add_argument("--seeds", default="0,1,2", help="seeds, comma-separated")
    p.add_argument("--variants", default="grpo,dr_grpo,dapo,gspo", help=f"any of {', '.join(VARIANTS)}")
    p.add_argument("--problems", type=int, default=128, help="held-out problems evaluated")
    p.add_argument("--samples", type=int, default=32, help="samples per problem (the k of the second column)")
    p.add_argument("--tau", type=float, default=0.1, help="soft-thinking τ of the soft arm (training and decoding)")
    p.add_argument("--sft-recipe", default="countdown-sft")
    p.add_argument("--grpo-recipe", default="countdown-grpo")
    p.add_argument("--soft-recipe", default="countdown-soft-grpo")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every RL run")
    p.add_argument("--sft-set", action="append", default=[], metavar="KEY=VALUE", help="override for the SFT run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--doc", default="docs/soft-grpo-countdown.md", help="the document whose section it writes")
