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
from engine.errors import BadInput, Interrupted

_launch: dist.Store | None = None  # torchrun's store, shared by every attempt of one launch (see Group.claimed)


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
            store = _rendezvous(env, timeout)
            global _launch
            _launch = dist.PrefixStore("hookmix/launch", store)  # what every attempt of this launch reads
            store = dist.PrefixStore(f"hookmix/attempt{env.restart_count}", store)
            dist.init_process_group(backend, store=store, rank=env.rank, world_size=env.world_size, timeout=timeout)
            self.owned = True
        self.active = env.launched and dist.is_initialized()

    failed_together = False  # set by agree(): every rank is failing setup at the same point

    # --- fresh run or resume, decided once per launch ----------------------------------------------
    # A restarted worker group (TORCHELASTIC_RESTART_COUNT > 0) continues a run directory only if an
    # earlier attempt of the *same launch* claimed it: torchrun's store outlives the attempts of one
    # launch and no other. So a refused command (its directory already held a run) is refused again
    # when restarted, and a stray TORCHELASTIC_RESTART_COUNT in a plain shell changes nothing.

    def claimed(self, url: str) -> bool:
        """Whether an earlier attempt of this launch claimed the run directory ``url``."""
        if not self.active or self.env.restart_count == 0 or _launch is None:
            return False
        return _launch.check([f"claimed:{url}"])

    def record_claim(self, url: str) -> None:
        """Rank 0 has claimed ``url``: a restart of this launch continues it."""
        if self.active and _launch is not None:
            _launch.set(f"claimed:{url}", "1")

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

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's ``tensor`` concatenated along dim 0 in rank order, differentiable (``state.all_gather``).

        One small all-gather of the shapes first, so ranks may hold different numbers of rows (a masked
        language-model batch) and a mismatch beyond dim 0 fails on every rank alike instead of hanging.
        The backward is the gather's adjoint (:class:`_GatherRows`): see docs/distributed.md, "Batch-coupled
        losses", for why a loss computed on the result needs no rescaling under DDP.
        """
        if tensor.dim() > _MAX_DIMS:  # checked in one process too: a plugin fails the same way on any world size
            raise ValueError(f"all_gather takes tensors of at most {_MAX_DIMS} dimensions, got {tensor.dim()}")
        if not self.active or self.world_size == 1:
            return tensor
        nccl = self.backend == "nccl"
        # NCCL talks to the GPU, gloo here to the host; `.to` is differentiable, so gradients find their way back
        local = (tensor if tensor.is_cuda else tensor.cuda()) if nccl else tensor.cpu()
        meta = torch.full((_MAX_DIMS + 1,), -1, dtype=torch.int64)
        meta[0], meta[1 : tensor.dim() + 1] = tensor.dim(), torch.tensor(tensor.shape, dtype=torch.int64)
        meta = meta.to(local.device)
        metas = meta.new_empty(self.world_size * meta.numel())  # concatenated: gloo takes no stacked output
        _all_gather(metas, meta)
        shapes = [tuple(m[1 : m[0] + 1]) for m in metas.view(self.world_size, -1).tolist()]
        if len({s[1:] for s in shapes}) != 1 or len({len(s) for s in shapes}) != 1:
            raise ValueError(f"all_gather: the ranks' tensors differ beyond dim 0 (shapes by rank: {shapes})")
        rows = [s[0] for s in shapes]
        return _GatherRows.apply(local, rows, self.rank, nccl).to(tensor.device)

    def agree(self, error: BaseException | None) -> None:
        """A safe point: if any rank failed setup, every rank raises the first failure, naming its rank.

        Every rank calls this at the same place, so a bad input found on one rank (a missing device,
        an unreadable file) stops all of them with exit 2 before anything is written.
        """
        if not self.active or self.world_size == 1:
            if error is not None:
                raise error
            return
        kind = type(error).__name__
        if isinstance(error, Interrupted):
            kind = f"Interrupted:{error.exit_code - 128}"
        msg = None if error is None else (kind, str(error).splitlines()[0] if str(error) else "")
        failures = [(r, m) for r, m in enumerate(self.gather(msg)) if m is not None]
        if failures:  # every rank raises here, together: they can also tear the group down together
            self.failed_together = True
        if error is not None:
            raise error
        if not failures:
            return
        rank, (kind, text) = failures[0]
        if kind.startswith("Interrupted:"):  # a signal at start-up: every rank stops, as the one that got it
            raise Interrupted(text, int(kind.partition(":")[2]))
        raise (
            BadInput(f"rank {rank} failed setup: {text}")
            if kind in ("BadInput", "PluginConflict")
            else RuntimeError(f"rank {rank} failed setup: {kind}: {text}")
        )

    def first_signal(self, signum: int | None) -> int | None:
        """The signal any rank has pending (the same answer on every rank), so all stop after the same step.

        One small all-reduce per optimizer step at world size > 1: a rank that got SIGTERM a moment after
        its peers checked would otherwise run one more step than they do, and the group would deadlock.
        """
        if not self.active or self.world_size == 1:
            return signum
        t = torch.tensor([signum or 0], dtype=torch.int64)
        if self.backend == "nccl":
            t = t.cuda()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t) or None


_MAX_DIMS = 8  # the shape exchange of Group.all_gather is a fixed-size tensor: ndim, then up to 8 sizes
# torch 2.13 renamed all_gather_into_tensor and reduce_scatter_tensor (which now warn) to *_single; older torch
# has only the first names
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0 (rows of rank r after those of ranks < r); the backward is its adjoint.

    The transpose of "concatenate every rank's rows" is "sum, over ranks, the gradient each rank holds for
    my rows" (a reduce-scatter with SUM): a rank's rows influence the loss of every rank that uses the
    gathered tensor, so each of those losses sends its share back. Ranks with fewer rows are padded
    with zeros for the collective (torch's gathers need equal sizes) and the padding is cut off again.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, rows: list[int], rank: int, nccl: bool) -> torch.Tensor:
        ctx.rows, ctx.rank, ctx.nccl = rows, rank, nccl
        most = max(rows)
        out = tensor.new_empty((len(rows) * most, *tensor.shape[1:]))
        _all_gather(out, _pad_rows(tensor.contiguous(), most))
        if min(rows) == most:
            return out
        return torch.cat([out[r * most : r * most + n] for r, n in enumerate(rows)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rows, rank, most = ctx.rows, ctx.rank, max(ctx.rows)
        # a fresh contiguous buffer: the collectives below write into it, autograd's grad must stay untouched
        grad = torch.cat([_pad_rows(part, most) for part in grad.split(rows)])
        if ctx.nccl:
            mine = grad.new_empty((most, *grad.shape[1:]))
            _reduce_scatter(mine, grad)
        else:  # gloo: reduce-scatter is not in every torch this engine supports; all-reduce and keep our rows
            dist.all_reduce(grad)
            mine = grad[rank * most : (rank + 1) * most]
        return mine[: rows[rank]], None, None, None


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """``t`` with zero rows appended up to ``rows`` (``t`` itself when it has them all)."""
    if t.shape[0] == rows:
        return t
    return torch.cat([t, t.new_zeros((rows - t.shape[0], *t.shape[1:]))])


def _rendezvous(env: Env, timeout: datetime.timedelta) -> dist.Store:
    """torchrun's store (``env://``: MASTER_ADDR, MASTER_PORT); what goes wrong here is the environment's."""
    import os

    where = f"MASTER_ADDR={os.environ.get('MASTER_ADDR')} MASTER_PORT={os.environ.get('MASTER_PORT')}"
    if env.rank > 0:  # probe first: torch's client retries log C++ stack traces while rank 0 is missing
        _wait_for_master(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), timeout.total_seconds(), where)
    try:
        store, _, _ = next(dist.rendezvous("env://", env.rank, env.world_size, timeout=timeout))
    except dist.DistNetworkError as exc:
        if "EADDRINUSE" in str(exc) or "address already in use" in str(exc):
            raise BadInput(
                f"{where}: the port is already in use on this host (another run?); pick a free MASTER_PORT, "
                f"or start with `hookmix train --nproc N`, which picks one"
            ) from None
        raise BadInput(
            f"cannot reach the rendezvous at {where} ({_first_line(exc)}); fix MASTER_ADDR/MASTER_PORT"
        ) from None
    except dist.DistStoreError as exc:
        seconds = timeout.total_seconds()
        raise BadInput(
            f"the {env.world_size} processes of WORLD_SIZE={env.world_size} did not all meet at {where} within "
            f"run.dist_timeout={seconds:g} s ({_first_line(exc)}); start every rank (torchrun or "
            f"`hookmix train --nproc N` does), or fix WORLD_SIZE"
        ) from None
    return store


def _wait_for_master(host: str, port: int, seconds: float, where: str) -> None:
    import socket
    import time

    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection((host, port), timeout=max(0.1, min(2.0, deadline - time.monotonic()))).close()
            return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise BadInput(
                    f"nothing listens at {where} after run.dist_timeout={seconds:g} s ({exc.strerror or exc}); "
                    f"start rank 0 there (torchrun or `hookmix train --nproc N` does), or fix MASTER_ADDR/MASTER_PORT"
                ) from None
            time.sleep(0.2)


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__


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
