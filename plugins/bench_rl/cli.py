"""``hookmix bench rl [--against trl]``: its options, the contestants' processes, the two tables.

The contestants run one after another, each in a fresh process (:mod:`.worker`), ``--repeats`` rounds in a rotated
order; every cell is the median over rounds of the round's median over the timed steps. With ``--against trl`` the
loss comparison (:mod:`.losses`) runs afterwards in this process. Exit 0, or 1 when a contestant trained on other
problems than planned or a loss differs beyond its tolerance.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile

from engine import BadInput, TrainingFailure

from .fixtures import TRL_VERSION, Settings, build, quiet_libraries, require_trl

HOOKMIX = ("grpo", "soft_grpo")
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")  # TRL 1.16's (docs/soft-grpo.md)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def bench_arguments(p) -> None:
    p.add_argument(
        "--against", choices=["trl"], help='add TRL\'s GRPOTrainer and the loss check (pip install -e ".[trl]")'
    )
    p.add_argument("--steps", type=_count, default=20, help="timed steps per contestant (after --warmup)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--repeats", type=_count, default=1, help="rounds of all contestants (fresh processes), rotated")
    p.add_argument("--prompts", type=_count, default=16, help="Countdown prompts per step")
    p.add_argument("--group-size", type=_count, default=8, help="completions per prompt (G >= 2)")
    p.add_argument("--think-cap", type=int, default=24, help="thinking tokens; every row generates cap + 1 + answer")
    p.add_argument("--answer-cap", type=_count, default=14, help="answer tokens")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=5, help="1..9 (the bench model's ± pairs: plugins/bench_rl)")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--loss-type", choices=LOSS_TYPES, default="dapo", help="TRL's default: dapo")
    p.add_argument("--beta", type=float, default=0.0, help="KL coefficient (TRL's default 0: no reference model)")
    p.add_argument("--hidden", type=_count, default=64, help="the Llama's hidden size (4 heads, MLP 4x)")
    p.add_argument("--layers", type=_count, default=2, help="the Llama's layers")
    p.add_argument("--threads", type=_count, default=1, help="torch threads in every contestant")
    p.add_argument("--no-loss-check", action="store_true", help="with --against trl: the timing table only")


def settings_from(args) -> Settings:
    if args.warmup < 0 or args.think_cap < 0:
        raise BadInput("--warmup and --think-cap must be >= 0")
    s = Settings(
        prompts=args.prompts,
        group_size=args.group_size,
        think_cap=args.think_cap,
        answer_cap=args.answer_cap,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        loss_type=args.loss_type,
        beta=args.beta,
        steps=args.steps,
        warmup=args.warmup,
        threads=args.threads,
        hidden=args.hidden,
        layers=args.layers,
    )
    if s.hidden % s.heads:
        raise BadInput(f"--hidden {s.hidden} must be a multiple of {s.heads} (the attention heads)")
    s.check()
    return s


def _env(threads: int) -> dict:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="false",  # no tokenizer thread pool on either side
        HF_HUB_OFFLINE="1",  # everything is local; nothing may be fetched
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_VERBOSITY="error",
    )
    return env


def run_contestant(fixtures_path: str, name: str, workdir: str, threads: int) -> dict:
    out = os.path.join(workdir, f"{name}.json")
    cmd = [sys.executable, "-m", "plugins.bench_rl.worker", fixtures_path, name, out]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(threads))
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        raise TrainingFailure(f"bench rl: contestant {name} failed: {tail}")  # exit 1, its last stderr line
    with open(out) as f:
        return json.load(f)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(results: list[dict], warmup: int) -> dict:
    """A contestant's rounds -> its cells: medians over rounds of per-round medians over the timed steps."""

    def per_round(key, f=None):
        f = f or (lambda r, i: r[key][i])
        return _median([_median([f(r, i) for i in range(warmup, len(r[key]))]) for r in results])

    return {
        "wall_ms": 1e3 * per_round("wall"),
        "cpu_ms": 1e3 * per_round("cpu"),
        "tokens": per_round("gen_tokens"),
        "gen_tok_s": per_round("gen_cpu", lambda r, i: r["gen_tokens"][i] / r["gen_cpu"][i]),
        "gen_cpu_ms": 1e3 * per_round("gen_cpu"),
        "nograd_ms": 1e3 * per_round("nograd_cpu"),
        "peak_rss": _median([r["peak_rss_mib"] for r in results]),
        "import_rss": _median([r["rss_after_imports_mib"] for r in results]),
    }


def print_timing(s: Settings, cells: dict[str, dict], versions: str, repeats: int) -> None:
    print(
        f"{versions}; {s.threads} thread(s); {platform.machine()} {os.cpu_count()} cores; "
        f"{s.prompts} prompts x G {s.group_size} = {s.prompts * s.group_size} completions of "
        f"{s.completion_length} tokens per step; Llama d {s.hidden} x {s.layers} layers; loss {s.loss_type}, "
        f"beta {s.beta:g}, T {s.temperature:g}, top-k {s.top_k}, top-p {s.top_p:g}; medians over {s.steps} steps "
        f"after {s.warmup} warm-up, {repeats} round(s)"
    )
    print(
        "| contestant | step ms (wall) | step ms (CPU) | generated tokens/step | generation ms (CPU) "
        "| generated tok/s (CPU) | no-grad log-prob forwards ms (CPU) | peak RSS MiB | RSS after imports MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    names = {"grpo": "hookmix grpo", "soft_grpo": "hookmix soft_grpo", "trl": f"TRL GRPOTrainer ({s.loss_type})"}
    for name, c in cells.items():
        print(
            f"| {names[name]} | {c['wall_ms']:.0f} | {c['cpu_ms']:.0f} | {c['tokens']:,.0f} | {c['gen_cpu_ms']:.0f} | "
            f"{c['gen_tok_s']:,.0f} | {c['nograd_ms']:.0f} | {c['peak_rss']:.0f} | {c['import_rss']:.0f} |"
        )
    if "trl" in cells:
        ratio = cells["trl"]["cpu_ms"] / cells["grpo"]["cpu_ms"]
        print(f"TRL step / hookmix grpo step (CPU): {ratio:.2f}x (> 1: hookmix faster)")


def print_losses(rows: list[dict]) -> bool:
    from .losses import OWN_TOL, SAME_TOL, within_tolerance

    print(
        f"Loss on identical rollouts (hookmix policy_loss vs TRL GRPOTrainer._compute_loss); tolerances: same "
        f"log-probs |Δloss| <= {SAME_TOL:g}·max(1, |loss|) and max |Δ dL/dlogp| <= {SAME_TOL:g}; own log-probs "
        f"|Δloss| <= {OWN_TOL:g}·max(1, |loss|) and max |Δ grad| / max |grad| <= {OWN_TOL:g} over all "
        f"{rows[0]['params'] if rows else 0} parameter tensors (the input embeddings included)"
    )
    print(
        "| loss_type | ratio | beta | other | hookmix loss | TRL loss | abs diff | max abs diff dL/dlogp "
        "| own log-probs: abs diff | max abs diff logp | rel grad diff | ok |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    ok = True
    for r in rows:
        good = within_tolerance(r)
        ok &= good
        print(
            f"| {r['loss_type']} | {r['level']} | {r['beta']:g} | {r['other'] or '-'} | {r['hookmix']:.8f} | "
            f"{r['trl']:.8f} | {r['diff']:.1e} | {r['grad_diff']:.1e} | {r['own_diff']:.1e} | "
            f"{r['logp_diff']:.1e} | {r['own_grad_rel']:.1e} | {'yes' if good else 'NO'} |"
        )
    return ok


def run_bench(args) -> int:
    s = settings_from(args)
    trl_version = require_trl() if args.against == "trl" else None
    import torch
    import transformers

    versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    if trl_version:
        versions += f", trl {trl_version}" + ("" if trl_version == TRL_VERSION else f" (the extra pins {TRL_VERSION})")
    quiet_libraries()
    workdir = tempfile.mkdtemp(prefix="hookmix-bench-rl-")
    try:
        torch.set_num_threads(s.threads)
        fixtures = build(s, workdir)
        path = os.path.join(workdir, "fixtures.json")
        names = list(HOOKMIX) + (["trl"] if trl_version else [])
        results: dict[str, list[dict]] = {n: [] for n in names}
        for i in range(args.repeats):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                results[name].append(run_contestant(path, name, workdir, s.threads))
        planned = json.loads(json.dumps(fixtures["problems"]))
        same = [n for n in names if all(json.loads(json.dumps(r["problems"])) == planned for r in results[n])]
        print_timing(s, {n: summarise(results[n], s.warmup) for n in names}, versions, args.repeats)
        ok = len(same) == len(names)
        if ok:
            print(f"every contestant trained on the planned problems: {len(planned)} steps x {s.prompts}, same order")
        else:
            print(f"FAIL: trained on other problems than planned: {', '.join(n for n in names if n not in same)}")
        if trl_version and not args.no_loss_check:
            from .losses import compare_losses

            ok &= print_losses(compare_losses(s, fixtures))
        return 0 if ok else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
