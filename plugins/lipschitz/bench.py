"""``hookmix lipschitz-bench``: what the weight constraints cost.

1. Per matrix (fp32, 256x256, 1024x1024, 4096x1024 by default): each constraint map against an exact
   SVD clip and against one ``torch.optim.Muon`` step on the same matrix, as ratios measured in one
   process (median of ``--repeats`` interleaved rounds, so machine noise hits all alike; a case whose
   warm-up call takes over 5 s is timed by that one call). ``torch.optim.Muon`` runs Newton-Schulz in
   bf16, which CPUs without native bf16 matmuls execute far slower than fp32, so the same 5 NS rounds in
   fp32 are reported as a second, CPU-fair reference.
2. Per training step: the fraction of a step of the ``shakespeare-lipschitz-cpu`` recipe spent in
   ``hookmix_after_optimizer_step`` (the constraints), for each constraint method.
"""

from __future__ import annotations

import statistics
import time
import uuid

import torch

from . import constraint_maps as cm
from . import spectral as sp

SHAPES = ((256, 256), (1024, 1024), (4096, 1024))
RECIPE = "shakespeare-lipschitz-cpu"


def add_arguments(p) -> None:
    p.add_argument("--shapes", default="256x256,1024x1024,4096x1024", help="matrix shapes, e.g. 256x256,4096x1024")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per matrix (median; default 3)")
    p.add_argument("--steps", type=int, default=30, help="timed training steps per method in part 2 (default 30)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--skip-matrices", action="store_true", help="only part 2 (training-step fraction)")
    p.add_argument("--skip-training", action="store_true", help="only part 1 (per-matrix costs)")


def _matrix_cases(W: torch.Tensor, w_max: float, eta: float) -> dict:
    """name -> zero-argument callable applying one map to W (pure maps: W is never modified)."""
    alpha = cm.soft_cap_coupling(w_max, 0.0, eta)
    pi: dict = {}
    sp.power_iteration(W, iters=16)  # warm the allocator
    return {
        "soft cap (4 matmuls)": lambda: cm.soft_cap(W, alpha),
        "hard cap, polynomial + guard": lambda: cm.spectral_hard_cap(W, w_max),
        "hard cap, exact msign formula (SVD polar)": lambda: cm.spectral_clip_exact(W, w_max),
        "spectral normalize (16 power its)": lambda: cm.spectral_normalize(W, w_max, iters=16, pi_state=pi),
        "spectral hammer (16 power its)": lambda: cm.spectral_hammer(W, w_max, iters=16, pi_state=pi),
        "spectral weight decay (16 power its)": lambda: cm.spectral_weight_decay(W, 0.1, iters=16, pi_state=pi),
        "exact SVD clip": lambda: cm.svd_clip(W, w_max),
    }


def bench_matrices(shapes, repeats: int) -> list[dict]:
    rows = []
    g = torch.Generator().manual_seed(0)
    for shape in shapes:
        W = torch.randn(shape, generator=g)
        W = W * (1.1 / sp.rms_to_rms_norm(W))  # RMS->RMS norm 1.1: every cap is active (w_max = 1)
        cases = _matrix_cases(W, 1.0, 0.1)
        p = torch.nn.Parameter(W.clone())
        muon = torch.optim.Muon([p], lr=0.02, weight_decay=0.0)
        grad = torch.randn(shape, generator=g)

        def muon_step():
            p.grad = grad
            muon.step()

        cases["one torch.optim.Muon step"] = muon_step
        # torch.optim.Muon runs Newton-Schulz in bf16, which CPUs without native bf16 matmul run far slower
        # than fp32; the same 5 NS rounds in fp32 are the fair CPU reference for "one Muon step"
        cases["Newton-Schulz 5 rounds in fp32 (Muon's core)"] = lambda: sp.msign(grad, sp.KELLER_NS5)
        times: dict[str, list[float]] = {name: [] for name in cases}
        slow = set()
        for name, fn in cases.items():  # warm-up call, timed: a slow case (> 5 s) is measured by it alone
            t0 = time.perf_counter()
            fn()
            first = time.perf_counter() - t0
            if first > 5.0:
                times[name].append(first)
                slow.add(name)
        for _ in range(repeats):  # interleaved rounds: machine noise hits every case alike
            for name, fn in cases.items():
                if name not in slow:
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        for name, t in med.items():
            rows.append(
                {
                    "shape": f"{shape[0]}x{shape[1]}",
                    "method": name,
                    "ms": 1e3 * t,
                    "vs_svd": t / med["exact SVD clip"],
                    "vs_muon": t / med["one torch.optim.Muon step"],
                    "vs_ns": t / med["Newton-Schulz 5 rounds in fp32 (Muon's core)"],
                }
            )
    return rows


def bench_training(steps: int, threads: int) -> list[dict]:
    from engine import Trainer, load_recipe

    raw = load_recipe(RECIPE).to_dict()  # the shipped recipe's tables, every default filled in
    variants = [
        ("spectral_soft_cap (recipe)", "muon", "spectral_soft_cap", {}),
        ("spectral_hard_cap", "muon", "spectral_hard_cap", {"w_max": 2.0}),
        ("spectral_normalize", "muon", "spectral_normalize", {"w_max": 2.0}),
        ("spectral_hammer + adamw", "adamw", "spectral_hammer", {"w_max": 2.0}),
    ]
    rows = []
    for label, opt, constraint, table in variants:
        plugins = ["tinyshakespeare", "lipschitz_gpt", opt, constraint, "cross_entropy"]
        tables = {k: v for k, v in raw["plugins"].items() if k in plugins}
        tables[constraint] = {**tables.get(constraint, {}), **table}
        run = dict(
            raw["run"],
            plugins=plugins,
            steps=10**6,
            threads=threads,
            eval_interval=0,
            checkpoint_interval=0,
            log_interval=10**6,
            out=f"memory://lipschitz-bench-{uuid.uuid4().hex}",
        )
        recipe = {"name": "bench", "run": run, "plugins": tables}
        trainer = Trainer.from_recipe(recipe, quiet=True, profile=True)  # the engine times every hook: no patching
        trainer.setup()
        for _ in range(3):  # warm-up
            trainer.train_step()
        trainer.profile.reset()
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        total = time.perf_counter() - t0
        spent = [trainer.profile.seconds("hookmix_after_optimizer_step", constraint)]
        rows.append(
            {
                "method": label,
                "step_ms": 1e3 * total / steps,
                "constraint_ms": 1e3 * spent[0] / steps,
                "fraction": spent[0] / total,
            }
        )
    return rows


def main(args) -> int:
    torch.set_num_threads(max(1, args.threads))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), fp32")
    if not args.skip_matrices:
        shapes = [tuple(int(x) for x in s.lower().split("x")) for s in args.shapes.split(",") if s.strip()]
        rows = bench_matrices(shapes, args.repeats)
        print(f"\nPer matrix (median of {args.repeats}; w_max = 1, input norm 1.1, eta = 0.1):\n")
        print("| matrix | method | ms | / exact SVD clip | / one torch.optim.Muon step (bf16 NS) | / fp32 NS5 |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['shape']} | {r['method']} | {r['ms']:.2f} | {r['vs_svd']:.3f} | {r['vs_muon']:.3f} "
                f"| {r['vs_ns']:.3f} |"
            )
    if not args.skip_training:
        rows = bench_training(args.steps, args.threads)
        print(f"\nPer training step of {RECIPE} ({args.steps} steps, after 3 warm-up):\n")
        print("| constraint | step (ms) | in constraints (ms) | fraction of the step |")
        print("|---|---|---|---|")
        for r in rows:
            print(f"| {r['method']} | {r['step_ms']:.1f} | {r['constraint_ms']:.2f} | {100 * r['fraction']:.1f}% |")
    return 0
