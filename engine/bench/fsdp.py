"""``hookmix bench fsdp``: per-rank bytes of parameters + gradients + optimizer state, FSDP vs DDP.

The workload is the shipped ``shakespeare-gpt`` recipe (GPT, AdamW) with its own settings. One
``torch.distributed.run`` launch with 2 processes sets up the run three ways: 1 process (rank 0
alone, no process group), 2 ranks under DDP, 2 ranks under ``run.strategy = "fsdp"``; each trains
two steps, keeping the gradients of the second (``zero_grad`` is skipped), then counts on every
rank the bytes of the tensors it holds: parameters (FSDP: the local shard of each DTensor),
gradients, optimizer state. DDP's communication buckets (by default another copy of the
gradients) are not counted, so the DDP figure is a lower bound and the FSDP/DDP ratio conservative.
On CPU this counts tensor bytes; on GPU ``torch.cuda.max_memory_allocated`` would also include
activations and the gathered units (not measured here: no GPU in this benchmark).
"""

from __future__ import annotations

import json
import os
import sys

import torch

RECIPE = "shakespeare-gpt"


def _trainer(strategy: str, distributed_run: bool, out: str):
    from engine.bench.ddp import single_process
    from engine.loop import Trainer

    overrides = ["run.threads=1", "run.log_interval=1000000", f"run.strategy={strategy}"]
    with single_process(hide=not distributed_run):
        trainer = Trainer.from_recipe(RECIPE, *overrides, out=out, quiet=True)
        trainer.setup()
    return trainer


def _local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def _bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if id(t) not in seen:  # tied weights count once (the id of the held tensor, not of a temporary view)
            seen.add(id(t))
            local = _local(t)
            total += local.numel() * local.element_size()
    return total


def _optimizer_tensors(optimizer):
    def walk(node):
        if torch.is_tensor(node):
            yield node
        elif isinstance(node, dict):
            for v in node.values():
                yield from walk(v)
        elif isinstance(node, (list, tuple)):
            for v in node:
                yield from walk(v)

    return list(walk(dict(optimizer.state)))


def measure(trainer) -> dict:
    trainer.train_step()
    state = trainer.state
    zero_grad, state.optimizer.zero_grad = state.optimizer.zero_grad, lambda set_to_none=True: None
    trainer.train_step()  # the gradients of this step stay
    state.optimizer.zero_grad = zero_grad
    params = [p for p in state.model.parameters()] + [p for p in state.modules.parameters()]
    grads = [p.grad for p in params if p.grad is not None]
    return {
        "params": _bytes(params),
        "grads": _bytes(grads),
        "optimizer": _bytes(_optimizer_tensors(state.optimizer)),
        "numel": sum(p.numel() for p in {id(p): p for p in params}.values()),
    }


def _worker(out_path: str) -> None:
    import torch.distributed as dist

    from engine.distributed.env import read_env
    from engine.distributed.group import Group

    torch.set_num_threads(1)
    group = Group(read_env(), "gloo", 300.0)
    work = os.path.dirname(out_path)  # run directories (FSDP writes local ones) go with the rows file
    rows = {}
    try:
        if group.rank == 0:
            rows["1 process"] = [measure(_trainer("ddp", False, os.path.join(work, "single")))]
        dist.barrier()
        for strategy in ("ddp", "fsdp"):
            rows[f"2 ranks {strategy}"] = group.gather(measure(_trainer(strategy, True, os.path.join(work, strategy))))
            dist.barrier()
        if group.rank == 0:
            with open(out_path, "w") as f:
                json.dump(rows, f)
    finally:
        group.close()


def fsdp_bench() -> int:
    """Launch the 2-rank measurement and print its table (markdown)."""
    from engine.bench.ddp import run_two_ranks

    rows = run_two_ranks("engine.bench.fsdp")
    if rows is None:
        return 1
    ddp = max(sum(r[k] for k in ("params", "grads", "optimizer")) for r in rows["2 ranks ddp"])
    print(
        f"torch {torch.__version__}, recipe {RECIPE} ({rows['1 process'][0]['numel']} parameters), AdamW; "
        f"bytes held per rank after a step (largest rank)"
    )
    print("| setup | parameters | gradients | optimizer state | total | vs DDP at 2 ranks |")
    print("|---|---|---|---|---|---|")
    for setup, per_rank in rows.items():
        worst = max(per_rank, key=lambda r: r["params"] + r["grads"] + r["optimizer"])
        total = worst["params"] + worst["grads"] + worst["optimizer"]
        print(
            f"| {setup} | {worst['params']:,} | {worst['grads']:,} | {worst['optimizer']:,} | {total:,} | "
            f"{total / ddp:.3f} |"
        )
    return 0


if __name__ == "__main__":
    _worker(sys.argv[1])
