"""Data parallelism: this rank's share of each batch, the module DDP wraps, per-rank checkpoint state.

- :func:`shard`: this rank's contiguous share of a global batch (dim 0 of every tensor).
- :class:`Trained`: the one module DDP wraps, holding the model and the plugin-owned modules,
  so gradients of both are averaged; it runs a closure (forward + aux outputs + loss terms) so
  plugins keep calling the plain ``state.model``.
- :func:`rank_payload` / :func:`restore_rank`: what differs between ranks, saved with a checkpoint.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from engine.distributed.group import digest
from engine.errors import BadInput


def to_device(value, device: torch.device):
    """Host tensors go through pinned memory so the copy is asynchronous (overlaps with compute)."""
    if not torch.is_tensor(value) or value.device == device:
        return value
    if value.device.type == "cpu" and device.type == "cuda":
        return value.pin_memory().to(device, non_blocking=True)
    return value.to(device, non_blocking=True)


def batch_rows(batch: dict) -> int | None:
    """The global batch size: dim 0 of the batch's tensors (``None`` when it has none)."""
    sizes = {v.shape[0] for v in batch.values() if torch.is_tensor(v) and v.dim() > 0}
    return max(sizes) if sizes else None


def check_divisible(batch: dict, world_size: int) -> None:
    rows = batch_rows(batch)
    if world_size > 1 and rows is not None and rows % world_size:
        raise BadInput(
            f"the global batch has {rows} rows, not divisible by the world size {world_size}; "
            f"set the data plugin's batch_size to a multiple of {world_size}"
        )


def shard(batch: dict, rank: int, world_size: int) -> dict:
    """This rank's contiguous share of the global batch: rows ``[rank*n/W, (rank+1)*n/W)`` of every
    tensor whose dim 0 is the batch size; other values (scalars, metadata) are passed unchanged."""
    if world_size == 1:
        return batch
    rows = batch_rows(batch)
    if rows is None:
        return batch
    lo, hi = rank * rows // world_size, (rank + 1) * rows // world_size
    return {k: v[lo:hi] if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == rows else v for k, v in batch.items()}


class Trained(torch.nn.Module):
    """The model and the plugin-owned modules as one module, so a single DDP averages both.

    ``forward(fn)`` runs ``fn()``: the engine's whole forward (model forward, aux outputs, loss
    terms) runs inside DDP's forward, which is what makes DDP all-reduce the gradients of the
    backward that follows, while plugins keep calling the plain ``state.model``.
    """

    def __init__(self, model: torch.nn.Module, modules: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.plugin_modules = modules

    def forward(self, fn: Callable[[], Any]) -> Any:
        return fn()


def wrap(model: torch.nn.Module, modules: torch.nn.Module, device: torch.device, grad_accum: int = 1):
    """``DistributedDataParallel`` over :class:`Trained`; parameters are broadcast from rank 0.

    Some parameters may get no gradient (RL policies leave the input embedding unused). Without
    gradient accumulation DDP's static graph handles them: the first step records which parameters are
    used, later steps skip the graph traversal. With accumulation (``no_sync``), which the static graph
    does not support, unused parameters are searched every step (``find_unused_parameters``).
    """
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # buffers (BatchNorm statistics) are broadcast from rank 0 before every forward (DDP's default)
    graph = {"static_graph": True} if grad_accum == 1 else {"find_unused_parameters": True}
    # On CPU, one gradient bucket reduced after the backward: overlapping the all-reduce with the
    # backward (DDP's 25 MB buckets) makes gloo's threads compete with the compute for the same
    # cores, and measured 2.5-5.7 % slower (tests/perf/ddp_options.py). On GPUs DDP's default stays.
    buckets = {"bucket_cap_mb": CPU_BUCKET_MB} if device.type == "cpu" else {}
    return DistributedDataParallel(Trained(model, modules), device_ids=ids, **graph, **buckets)


CPU_BUCKET_MB = 1024  # larger than any model trained on CPU: one bucket


def rank_seed(seed: int, rank: int) -> int:
    """The torch RNG seed of rank ``rank`` > 0 (dropout, noise); rank 0 continues the 1-process stream."""
    return (seed + 1_000_003 * rank) % 2**63


def rank_payload(state, manager) -> dict:
    """This rank's part of a checkpoint (every rank's is gathered to rank 0): the torch RNG stream, the
    metrics logged since the last log and, only when they differ between ranks (RL: rollout buffers and
    noise generators), the plugin states. A collective: every rank calls it."""
    plugins = manager.plugin_states(state)
    same = len(set(state._group.gather(digest(plugins)))) == 1
    cuda = {"cuda": torch.cuda.get_rng_state(state.device)} if state.device.type == "cuda" else {}
    return {
        "torch": torch.get_rng_state(),
        **cuda,
        **({} if same else {"plugins": plugins}),
        "pending_metrics": state._train_log.pending(),
    }


def restore_rank(state, manager, ranks: list | None, step: int) -> None:
    """After the checkpoint's main part is restored. Same world size: each rank continues its own streams.
    Another world size: rank r takes saved rank r's when it exists; a new rank starts a fresh stream
    (seeded by seed, rank and step) and rank 0 keeps the checkpoint's main streams."""
    if ranks and state.rank < len(ranks):
        mine = ranks[state.rank]
        torch.set_rng_state(mine["torch"])
        if "cuda" in mine and state.device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda"], state.device)
        state._train_log.restore(mine["pending_metrics"])
        if "plugins" in mine:
            manager.load_plugin_states(mine["plugins"], state)
    elif state.rank > 0:
        torch.manual_seed(rank_seed(state.run.seed + step, state.rank))
        state._train_log.restore({})
