"""``hookmix bench ddp``: weak scaling of DDP on CPU (gloo), 2 ranks x 1 thread against 1 rank x 1 thread.

One ``torch.distributed.run`` launch with 2 processes. Each repeat, in turn:

- ``ddp``: both ranks train the workload under DDP with per-rank batch B (global batch 2B) for
  ``steps`` timed steps;
- ``single``: rank 0 trains the same workload alone (no process group, no DDP) with batch B for the
  same number of steps, while rank 1 waits at a barrier;
- ``pair``: both ranks train that 1-rank workload at the same time, independently (no communication):
  the step time two busy cores give without any DDP at all.

The two alternate within the launch (interleaved repeats), so load on the machine hits both alike.
Weak-scaling efficiency = single step time / ddp step time (1.0: a second rank costs nothing), the
median over repeats of the ratio of the medians within each repeat (short repeats: a drift of the
machine's speed over seconds, common on shared virtual machines, cancels).
The ceiling = single / pair: what the machine allows when two cores work at once (shared caches,
memory bandwidth, a hypervisor's vCPUs); efficiency / ceiling is the part DDP itself costs.
The all-reduce column times ``all_reduce`` of one flat float32 tensor with as many elements as the
trained parameters (the bytes DDP reduces per step), on both ranks, alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import torch

PER_RANK_BATCH = {"gpt": 16, "mlp": 100}  # the workloads of engine/bench/overhead.py, with this per-rank batch
ADAMW = {"lr": 1e-3, "schedule": "constant", "weight_decay": 0.0}


@contextlib.contextmanager
def single_process(hide: bool = True):
    """Inside torchrun, set up a run as if launched alone (no process group): the torchrun variables
    the engine reads are hidden while the block runs."""
    hidden = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE") if hide and k in os.environ}
    try:
        yield
    finally:
        os.environ.update(hidden)


def _trainer(workload: str, batch: int, distributed_run: bool):
    """A set-up trainer for ``workload``; ``distributed_run=False`` hides the torchrun environment."""
    from engine.bench.overhead import WORKLOADS
    from engine.loop import Trainer

    base, configs = WORKLOADS[workload]
    data = base[0]
    configs = {**configs, data: {**configs.get(data, {}), "batch_size": batch}}
    raw = {
        "name": "bench",
        "run": {
            "plugins": [*base, "adamw", "cross_entropy"],
            "steps": 10**6,
            "log_interval": 10**6,
            "threads": 1,
            "out": f"memory://hookmix-bench-{uuid.uuid4().hex}",
        },
        "plugins": {**configs, "adamw": ADAMW},
    }
    with single_process(hide=not distributed_run):
        trainer = Trainer.from_recipe(raw, quiet=True)
        trainer.setup()
    return trainer


def _timed_steps(trainer, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - t0)
    return times


def _worker(out_path: str, workloads: list[str], steps: int, repeats: int, warmup: int) -> None:
    import torch.distributed as dist

    from engine.distributed.env import read_env
    from engine.distributed.group import Group

    torch.set_num_threads(1)
    group = Group(read_env(), "gloo", 300.0)
    rank = group.rank
    rows = []
    try:
        for name in workloads:
            batch = PER_RANK_BATCH[name]
            ddp = _trainer(name, batch * group.world_size, True)
            single = _trainer(name, batch, False)
            n_params = sum(p.numel() for p in ddp.params)
            _timed_steps(ddp, warmup)
            _timed_steps(single, warmup)
            ddp_t, single_t, reduce_t, pair_t, ratios = [], [], [], [], []
            flat = torch.zeros(n_params)
            for _ in range(repeats):
                dist.barrier()
                ddp_r = _timed_steps(ddp, steps)
                dist.barrier()
                for _ in range(steps):
                    t0 = time.perf_counter()
                    dist.all_reduce(flat)
                    reduce_t.append(time.perf_counter() - t0)
                dist.barrier()
                single_r = _timed_steps(single, steps) if rank == 0 else []
                dist.barrier()
                pair_r = _timed_steps(single, steps)  # both ranks at once, no communication
                dist.barrier()
                if rank == 0:  # ratios within a repeat: a slow drift of the machine's speed cancels
                    s_r = statistics.median(single_r)
                    ratios.append((s_r / statistics.median(ddp_r), s_r / statistics.median(pair_r)))
                ddp_t, single_t, pair_t = ddp_t + ddp_r, single_t + single_r, pair_t + pair_r
            if rank == 0:
                d, s, r, p = (statistics.median(x) * 1e3 for x in (ddp_t, single_t, reduce_t, pair_t))
                rows.append(
                    {
                        "workload": name,
                        "per_rank_batch": batch,
                        "params": n_params,
                        "single_ms": s,
                        "ddp_ms": d,
                        "allreduce_ms": r,
                        "pair_ms": p,
                        "efficiency": statistics.median(e for e, _ in ratios),
                        "ceiling": statistics.median(c for _, c in ratios),
                    }
                )
        if rank == 0:
            with open(out_path, "w") as f:
                json.dump(rows, f)
    finally:
        group.close()


def run_two_ranks(module: str, *args: str):
    """Run ``python -m module OUT *args`` on 2 ranks (torch.distributed.run, one thread each); return the JSON
    its rank 0 wrote to OUT, or None (with the workers' error output printed) when the launch failed."""
    work = tempfile.mkdtemp(prefix="hookmix-bench-")
    out = os.path.join(work, "rows.json")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        module,
        out,
        *args,
    ]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return None
        with open(out) as f:
            return json.load(f)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ddp_bench(steps: int = 20, repeats: int = 5, workload: str = "both", warmup: int = 5) -> int:
    """Launch the 2-rank benchmark and print its table (markdown)."""
    workloads = ["gpt", "mlp"] if workload == "both" else [workload]
    rows = run_two_ranks("engine.bench.ddp", ",".join(workloads), str(steps), str(repeats), str(warmup))
    if rows is None:
        return 1
    print(
        f"torch {torch.__version__}, gloo, 1 thread per rank, {repeats} interleaved repeats x {steps} steps; "
        f"weak scaling: same per-rank batch"
    )
    print(
        "| workload | per-rank batch | params | 1 rank step (ms) | 2 ranks DDP step (ms) | "
        "all-reduce of the gradients alone (ms) | 2 independent ranks at once (ms) | weak-scaling efficiency | "
        "ceiling (no communication) | efficiency / ceiling |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['workload']} | {r['per_rank_batch']} | {r['params']} | {r['single_ms']:.2f} | {r['ddp_ms']:.2f} | "
            f"{r['allreduce_ms']:.2f} | {r['pair_ms']:.2f} | {r['efficiency']:.3f} | {r['ceiling']:.3f} | "
            f"{r['efficiency'] / r['ceiling']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
