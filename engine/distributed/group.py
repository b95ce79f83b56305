"""The initialised process group of one run: backend, timeout, agreement on bad input, reductions.

Nothing here implements a collective: ``torch.distributed`` does the communication. :class:`Group`
is torn down with :meth:`Group.close`; plugins reach its reductions through ``state.all_reduce_mean``.
"""

from __future__ import annotations

import datetime
from typing import Any

import torch
import torch.distributed as dist

from engine.distributed.env import Env
from engine.errors import BadInput


class Group:
    """The process group of one run; every method is a no-op reduction at world size 1."""

    def __init__(self, env: Env, backend: str = "", timeout_s: float = 120.0) -> None:
        self.env = env
        self.rank, self.world_size = env.rank, env.world_size
        self.backend = backend or "none"
        self.owned = False
        if env.launched and not dist.is_initialized():
            timeout = datetime.timedelta(seconds=timeout_s)
            # torchrun's store outlives a restart of the worker group: the keys of the dead attempt (its
            # ranks' addresses) would be read by the new one, so every attempt gets its own key prefix
            store, _, _ = next(dist.rendezvous("env://", env.rank, env.world_size, timeout=timeout))
            store = dist.PrefixStore(f"hookmix/attempt{env.restart_count}", store)
            dist.init_process_group(backend, store=store, rank=env.rank, world_size=env.world_size, timeout=timeout)
            self.owned = True
        self.active = env.launched and dist.is_initialized()

    failed_together = False  # set by agree(): every rank is failing setup at the same point

    def close(self, sync: bool = False) -> None:
        """Destroy the group this run created (at the end and on errors).

        ``sync`` (the normal end of a run): wait for every rank first, so no rank tears down its
        side of the group (rank 0: the rendezvous store) while a peer still talks to it.
        """
        if self.owned and dist.is_initialized():
            if (sync or self.failed_together) and self.active and self.world_size > 1:
                dist.barrier()
            dist.destroy_process_group()
        self.owned = self.active = False

    # --- reductions ---------------------------------------------------------------------------

    def _reduce(self, value: float | torch.Tensor, mean: bool) -> float | torch.Tensor:
        if not self.active or self.world_size == 1:
            return value
        is_float = not torch.is_tensor(value)
        t = torch.tensor(float(value), dtype=torch.float64) if is_float else value.detach().clone()
        if self.backend == "nccl":
            t = t.cuda()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        if mean:
            t = t / self.world_size
        return float(t) if is_float else t.to(value.device)

    def all_reduce_mean(self, value: float | torch.Tensor) -> float | torch.Tensor:
        return self._reduce(value, mean=True)

    def all_reduce_sum(self, value: float | torch.Tensor) -> float | torch.Tensor:
        return self._reduce(value, mean=False)

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (small picklable objects only)."""
        if not self.active or self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def agree(self, error: BaseException | None) -> None:
        """A safe point: if any rank failed setup, every rank raises the first failure, naming its rank.

        Every rank calls this at the same place, so a bad input found on one rank (a missing device,
        an unreadable file) stops all of them with exit 2 before anything is written.
        """
        if not self.active or self.world_size == 1:
            if error is not None:
                raise error
            return
        msg = None if error is None else (type(error).__name__, str(error).splitlines()[0] if str(error) else "")
        failures = [(r, m) for r, m in enumerate(self.gather(msg)) if m is not None]
        if failures:  # every rank raises here, together: they can also tear the group down together
            self.failed_together = True
        if error is not None:
            raise error
        if not failures:
            return
        rank, (kind, text) = failures[0]
        raise (
            BadInput(f"rank {rank} failed setup: {text}")
            if kind in ("BadInput", "PluginConflict")
            else RuntimeError(f"rank {rank} failed setup: {kind}: {text}")
        )


def mean_over_ranks(logged: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over the ranks that logged it (train metrics, once per log interval)."""
    names = list(dict.fromkeys(k for d in logged for k in d))
    return {k: sum(d[k] for d in logged if k in d) / sum(1 for d in logged if k in d) for k in names}


def digest(tree: Any) -> str:
    """A hash of every tensor (bytes), number and string in a nested dict/list: equal trees, equal digests."""
    import hashlib

    h = hashlib.sha256()

    def visit(node: Any) -> None:
        if torch.is_tensor(node):
            t = node.detach().cpu().contiguous().reshape(-1)
            h.update(f"{t.dtype}{tuple(node.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(node, dict):
            for key in sorted(node, key=str):
                h.update(str(key).encode())
                visit(node[key])
        elif isinstance(node, (list, tuple)):
            for item in node:
                visit(item)
        else:
            h.update(repr(node).encode())

    visit(tree)
    return h.hexdigest()
