"""DDP's bucket options against its defaults, 2 ranks on CPU (a script, not a test).

    python tests/perf/ddp_options.py [--workload gpt|mlp] [--repeats 16]

Builds one trainer per setting of ``DistributedDataParallel`` (DDP's own default, 25 MB buckets;
``bucket_cap_mb`` 0.5 and 100; 100 with ``gradient_as_bucket_view``; the engine's CPU choice, one
bucket of up to ``engine.distributed.ddp.CPU_BUCKET_MB``) in one 2-rank launch, runs 5 steps of each in turn
(rotating the order every repeat) and prints, per setting, the median over repeats of (default
step time / this setting's step time): above 1 is faster than the default. Interleaving in one
launch is what makes a few-percent difference visible on a machine whose speed drifts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

SETTINGS = {
    "default": {"bucket_cap_mb": 25},
    "bucket 0.5 MB": {"bucket_cap_mb": 0.5},
    "bucket 100 MB": {"bucket_cap_mb": 100},
    "bucket 100 MB + view": {"bucket_cap_mb": 100, "gradient_as_bucket_view": True},
    "engine (one bucket)": {},
}


def worker(workload: str, repeats: int) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from engine.bench.ddp import PER_RANK_BATCH, _timed_steps, _trainer
    from engine.distributed.env import read_env
    from engine.distributed.group import Group

    torch.set_num_threads(1)
    build = DistributedDataParallel.__init__
    chosen: dict = {}

    def with_setting(self, *args, **kwargs):  # the engine builds DDP; this adds the setting under test
        build(self, *args, **{**kwargs, **chosen})

    DistributedDataParallel.__init__ = with_setting
    group = Group(read_env(), "gloo", 300.0)
    try:
        trainers = {}
        for name, options in SETTINGS.items():
            chosen.clear()
            chosen.update(options)
            trainers[name] = _trainer(workload, PER_RANK_BATCH[workload] * group.world_size, True)
            _timed_steps(trainers[name], 3)
        ratios: dict[str, list[float]] = {name: [] for name in trainers}
        for r in range(repeats):
            order = list(trainers.items())
            order = order[r % len(order) :] + order[: r % len(order)]
            medians = {}
            for name, trainer in order:
                dist.barrier()
                medians[name] = statistics.median(_timed_steps(trainer, 5))
            for name in trainers:
                ratios[name].append(medians["default"] / medians[name])
        if group.rank == 0:
            for name, values in ratios.items():
                print(
                    f"{workload} {name}: {statistics.median(values):.3f} (repeats {min(values):.2f}-{max(values):.2f})"
                )
    finally:
        group.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=["gpt", "mlp"], default="gpt")
    parser.add_argument("--repeats", type=int, default=16)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.workload, args.repeats)
        return 0
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        __file__,
        "--worker",
        "--workload",
        args.workload,
        "--repeats",
        str(args.repeats),
    ]
    return subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1")).returncode


if __name__ == "__main__":
    sys.exit(main())
