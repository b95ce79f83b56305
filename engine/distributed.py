"""Multi-process training on ``torch.distributed``: the torchrun environment, the process group, DDP.

A run is distributed when it is started by torchrun (``torch.distributed.run``), which sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` for every worker.
Nothing here launches processes or implements a collective: torchrun is the launcher and
elastic agent, ``torch.distributed`` does the communication. What this module adds:

- :func:`read_env`: the torchrun environment, checked (bad values are :class:`BadInput`).
- :class:`Group`: the initialised process group of one run (backend, timeout, device pinning),
  torn down with :meth:`Group.close`; reductions plugins use through ``state.all_reduce_mean``.
- :func:`shard`: this rank's contiguous share of a global batch (dim 0 of every tensor).
- :class:`Trained`: the one module DDP wraps, holding the model and the plugin-owned modules,
  so gradients of both are averaged; it runs a closure (forward + aux outputs + loss terms) so
  plugins keep calling the plain ``state.model``.
"""

from __future__ import annotations

import datetime
import os
from typing import Any, Callable

import torch
import torch.distributed as dist

from engine.errors import BadInput

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class Env:
    """The torchrun variables of this process (single-process defaults when absent)."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, launched: bool = False) -> None:
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self.launched = launched  # started by torchrun: a process group is initialised

    @property
    def restart_count(self) -> int:
        """How many times torchrun's elastic agent has restarted this worker group."""
        try:
            return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        except ValueError:
            return 0


def _int_env(name: str, environ) -> int:
    value = environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise BadInput(f"environment variable {name}={value!r} is not an integer; launch with torchrun "
                       f"(which sets it) or unset RANK/WORLD_SIZE for a single-process run") from None


def read_env(environ=None) -> Env:
    """The checked torchrun environment. No RANK and no WORLD_SIZE: a single-process run."""
    environ = os.environ if environ is None else environ
    if "RANK" not in environ and "WORLD_SIZE" not in environ:
        return Env()
    missing = [n for n in ENV if n not in environ and n != "LOCAL_RANK"]
    if missing:
        raise BadInput(f"RANK/WORLD_SIZE are set but {', '.join(missing)} is not; launch with torchrun "
                       f"(e.g. torchrun --standalone --nproc-per-node 2 -m engine.cli train ...) "
                       f"or unset RANK and WORLD_SIZE")
    rank, world = _int_env("RANK", environ), _int_env("WORLD_SIZE", environ)
    local = _int_env("LOCAL_RANK", environ) if "LOCAL_RANK" in environ else rank
    if world < 1 or not 0 <= rank < world:
        raise BadInput(f"RANK={rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={world}); fix the launcher's environment")
    if local < 0:
        raise BadInput(f"LOCAL_RANK={local} must be >= 0; fix the launcher's environment")
    return Env(rank, world, local, launched=True)


def pick_backend(requested: str, device: torch.device) -> str:
    """``run.dist_backend``: ``auto`` is nccl on CUDA and gloo on CPU."""
    if requested != "auto":
        if requested == "nccl" and device.type != "cuda":
            raise BadInput("run.dist_backend='nccl' needs CUDA devices; set run.dist_backend=gloo or run.device=cuda")
        return requested
    return "nccl" if device.type == "cuda" else "gloo"


def resolve_device(name: str) -> torch.device:
    """``run.device`` as a torch device (``auto``: CUDA when available); bad input when unusable."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BadInput(f"run.device {name!r} is not a device; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"run.device is {name!r} but CUDA is not available; set run.device=cpu")
    return device


def pin_device(device: torch.device, env: Env) -> torch.device:
    """Each rank on its own GPU: ``cuda`` becomes ``cuda:LOCAL_RANK`` (CPU stays CPU)."""
    if device.type != "cuda" or not env.launched:
        return device
    count = torch.cuda.device_count()
    if env.local_rank >= count:
        raise BadInput(f"LOCAL_RANK={env.local_rank} but this node has {count} CUDA device(s); "
                       f"start at most {count} processes per node (--nproc-per-node)")
    device = torch.device("cuda", env.local_rank)
    torch.cuda.set_device(device)
    return device


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
        raise BadInput(f"rank {rank} failed setup: {text}") if kind in ("BadInput", "PluginConflict") \
            else RuntimeError(f"rank {rank} failed setup: {kind}: {text}")


def to_device(value, device: torch.device):
    """Host tensors go through pinned memory so the copy is asynchronous (overlaps with compute)."""
    if not torch.is_tensor(value) or value.device == device:
        return value
    if value.device.type == "cpu" and device.type == "cuda":
        return value.pin_memory().to(device, non_blocking=True)
    return value.to(device, non_blocking=True)


# --- batches ---------------------------------------------------------------------------------


def batch_rows(batch: dict) -> int | None:
    """The global batch size: dim 0 of the batch's tensors (``None`` when it has none)."""
    sizes = {v.shape[0] for v in batch.values() if torch.is_tensor(v) and v.dim() > 0}
    return max(sizes) if sizes else None


def check_divisible(batch: dict, world_size: int) -> None:
    rows = batch_rows(batch)
    if world_size > 1 and rows is not None and rows % world_size:
        raise BadInput(f"the global batch has {rows} rows, not divisible by the world size {world_size}; "
                       f"set the data plugin's batch_size to a multiple of {world_size}")


def shard(batch: dict, rank: int, world_size: int) -> dict:
    """This rank's contiguous share of the global batch: rows ``[rank*n/W, (rank+1)*n/W)`` of every
    tensor whose dim 0 is the batch size; other values (scalars, metadata) are passed unchanged."""
    if world_size == 1:
        return batch
    rows = batch_rows(batch)
    if rows is None:
        return batch
    lo, hi = rank * rows // world_size, (rank + 1) * rows // world_size
    return {k: v[lo:hi] if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == rows else v
            for k, v in batch.items()}


# --- DDP -------------------------------------------------------------------------------------


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


# --- checkpoints: what differs between ranks ----------------------------------------------------


def rank_payload(state, manager) -> dict:
    """This rank's part of a checkpoint (every rank's is gathered to rank 0): the torch RNG stream, the
    metrics logged since the last log and, only when they differ between ranks (RL: rollout buffers and
    noise generators), the plugin states. A collective: every rank calls it."""
    plugins = manager.plugin_states(state)
    same = len(set(state.group.gather(digest(plugins)))) == 1
    cuda = {"cuda": torch.cuda.get_rng_state(state.device)} if state.device.type == "cuda" else {}
    return {"torch": torch.get_rng_state(), **cuda, **({} if same else {"plugins": plugins}),
            "pending_metrics": state.train_log.pending()}


def restore_rank(state, manager, ranks: list | None, step: int) -> None:
    """After the checkpoint's main part is restored. Same world size: each rank continues its own streams.
    Another world size: rank r takes saved rank r's when it exists; a new rank starts a fresh stream
    (seeded by seed, rank and step) and rank 0 keeps the checkpoint's main streams."""
    if ranks and state.rank < len(ranks):
        mine = ranks[state.rank]
        torch.set_rng_state(mine["torch"])
        if "cuda" in mine and state.device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda"], state.device)
        state.train_log.restore(mine["pending_metrics"])
        if "plugins" in mine:
            manager.load_plugin_states(mine["plugins"], state)
    elif state.rank > 0:
        torch.manual_seed(rank_seed(state.run.seed + step, state.rank))
        state.train_log.restore({})


def mean_over_ranks(logged: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over the ranks that logged it (train metrics, once per log interval)."""
    names = list(dict.fromkeys(k for d in logged for k in d))
    return {k: sum(d[k] for d in logged if k in d) / sum(1 for d in logged if k in d) for k in names}


# --- the command line: `hookmix train --nproc N` and elastic restarts ------------------------

_LAUNCH = {"--nproc": "--nproc-per-node", "--nnodes": "--nnodes", "--node-rank": "--node-rank",
           "--rdzv-endpoint": "--rdzv-endpoint", "--max-restarts": "--max-restarts"}


def add_launch_arguments(p) -> None:
    p.add_argument("--nproc", type=int, default=0, metavar="N",
                   help="start N processes on this node through torch.distributed.run (torchrun)")
    p.add_argument("--nnodes", type=int, default=1, help="torchrun: number of nodes (multi-node: with --rdzv-endpoint)")
    p.add_argument("--node-rank", type=int, default=0, help="torchrun: this node's rank")
    p.add_argument("--rdzv-endpoint", default="", metavar="HOST:PORT", help="torchrun: c10d rendezvous address")
    p.add_argument("--max-restarts", type=int, default=0,
                   help="torchrun: restarts of the worker group on a failure (each resumes from the last checkpoint)")


def rank_prefix() -> str:
    """``"rank R: "`` in a distributed process (error messages name the failing rank), else ``""``."""
    world, rank = os.environ.get("WORLD_SIZE", ""), os.environ.get("RANK", "")
    return f"rank {rank}: " if world not in ("", "1") and rank else ""


def launch(args) -> int:
    """``hookmix train ... --nproc N``: the same command under ``torch.distributed.run`` (the elastic agent).

    Exit code: 2 when the first worker to fail exited 2 (bad input), 1 for any other failure.
    """
    import time
    from pathlib import Path

    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if args.nproc < 1:
        raise BadInput(f"--nproc {args.nproc}: give the number of processes on this node (>= 1)")
    if args.nnodes > 1 and not args.rdzv_endpoint:
        raise BadInput("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the same on every node)")
    rest, skip = [], False
    for a in args.argv:  # the train command without the launcher's own options
        if skip:
            skip = False
            continue
        flag = a.split("=", 1)[0]
        if flag in _LAUNCH:
            skip = "=" not in a
            continue
        rest.append(a)
    if not args.out and not args.resume and not any(o.startswith("run.out=") for o in args.overrides):
        rest += ["--out", f"runs/{Path(args.recipe or 'run').stem}-{time.strftime('%Y%m%d-%H%M%S')}"]
    launcher = ["--nproc-per-node", str(args.nproc), "--max-restarts", str(args.max_restarts)]
    if args.nnodes > 1 or args.rdzv_endpoint:
        launcher += ["--nnodes", str(args.nnodes), "--node-rank", str(args.node_rank),
                     "--rdzv-backend", "c10d", "--rdzv-endpoint", args.rdzv_endpoint]
    else:
        launcher += ["--standalone"]
    try:
        torchrun.main([*launcher, "-m", "engine.cli", *rest])
    except ChildFailedError as exc:  # the agent stops the others (SIGTERM) once one fails: use the first
        _, first = exc.get_first_failure()
        return 2 if first.exitcode == 2 else 1
    return 0


def elastic_resume(out: str, resume: bool) -> tuple[bool, bool]:
    """(resume, restart) for a worker: after an elastic restart (TORCHELASTIC_RESTART_COUNT > 0) the run
    directory is the resume key: resume from its last checkpoint, or start over when it has none yet."""
    if resume or not out or read_env().restart_count == 0:
        return resume, False
    from engine import checkpoint
    from engine.outputs import RunDir

    return bool(checkpoint.list_steps(RunDir(out))), True


def report_crash(exc: BaseException) -> int:
    """An unexpected exception in a distributed worker: the traceback, then one line naming the rank.

    torchrun interleaves every worker's stderr; the last line says which rank failed first and why.
    """
    import sys
    import traceback

    traceback.print_exception(exc, file=sys.stderr)
    text = str(exc).splitlines()[0] if str(exc) else ""
    print(f"hookmix: error: {rank_prefix() or 'rank 0: '}{type(exc).__name__}: {text}", file=sys.stderr)
    return 1


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
