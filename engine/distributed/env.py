"""The torchrun environment, read and checked, and the device and backend a rank uses.

A run is distributed when it is started by torchrun (``torch.distributed.run``), which sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` for every worker;
bad values are :class:`BadInput`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from engine.errors import BadInput

if TYPE_CHECKING:  # torch is imported where a device is made: `hookmix --version` and `--help` import no torch
    import torch

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
        raise BadInput(
            f"environment variable {name}={value!r} is not an integer; launch with torchrun "
            f"(which sets it) or unset RANK/WORLD_SIZE for a single-process run"
        ) from None


def read_env(environ=None) -> Env:
    """The checked torchrun environment. No RANK and no WORLD_SIZE: a single-process run."""
    environ = os.environ if environ is None else environ
    if "RANK" not in environ and "WORLD_SIZE" not in environ:
        return Env()
    missing = [n for n in ENV if n not in environ and n != "LOCAL_RANK"]
    if missing:
        raise BadInput(
            f"RANK/WORLD_SIZE are set but {', '.join(missing)} is not; launch with torchrun "
            f"(e.g. torchrun --standalone --nproc-per-node 2 -m engine.cli train ...) "
            f"or unset RANK and WORLD_SIZE"
        )
    rank, world = _int_env("RANK", environ), _int_env("WORLD_SIZE", environ)
    port = _int_env("MASTER_PORT", environ)
    if not 0 < port < 65536:
        raise BadInput(f"MASTER_PORT={port} is not a port in 1..65535; fix the launcher's environment")
    if not environ["MASTER_ADDR"].strip():
        raise BadInput("MASTER_ADDR is empty; set it to rank 0's host name or address (torchrun does)")
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
    import torch

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
    import torch

    count = torch.cuda.device_count()
    if env.local_rank >= count:
        raise BadInput(
            f"LOCAL_RANK={env.local_rank} but this node has {count} CUDA device(s); "
            f"start at most {count} processes per node (--nproc-per-node)"
        )
    device = torch.device("cuda", env.local_rank)
    torch.cuda.set_device(device)
    return device


def rank_prefix() -> str:
    """``"rank R: "`` in a distributed process (error messages name the failing rank), else ``""``."""
    world, rank = os.environ.get("WORLD_SIZE", ""), os.environ.get("RANK", "")
    return f"rank {rank}: " if world not in ("", "1") and rank else ""
