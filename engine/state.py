"""The state of one run, handed to every hook as ``state``."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from engine.manager import Manager
    from engine.outputs import RunDir
    from engine.recipe import Recipe, RunConfig


class State:
    """Everything a plugin may read during a run; plugins change it only through hooks.

    Attributes set during setup: ``data``, ``model``, ``modules`` (plugin-owned trainable
    modules), ``optimizer``, ``scheduler``. Counters: ``step`` (completed optimizer steps),
    ``start_step``, ``micro`` (micro-batch index within the step). Distributed-ready fields:
    ``rank``, ``world_size``, ``is_main`` (only the main process writes outputs).
    """

    def __init__(self, recipe: Recipe, manager: Manager, device: torch.device) -> None:
        self.recipe = recipe
        self.run: RunConfig = recipe.run
        self.manager = manager
        self.plugins = manager.plugins
        self.device = device
        self.autocast_dtype = torch.bfloat16 if recipe.run.precision == "bf16" else None
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.is_main = self.rank == 0
        self.step = 0
        self.start_step = 0
        self.micro = 0
        self.resumed = False
        self.data: Any = None
        self.model: torch.nn.Module | None = None
        self.modules = torch.nn.ModuleDict()
        self.optimizer: Any = None
        self.scheduler: Any = None
        self.generator = torch.Generator().manual_seed(recipe.run.seed + 1)  # data order
        self.run_dir: RunDir | None = None
        self.cache_dir = os.path.expanduser(os.environ.get("HOOKMIX_CACHE", "~/.cache/hookmix"))
        self._pending: dict[str, list[torch.Tensor]] = {}

    def log(self, name: str, value: float | torch.Tensor) -> None:
        """Record a training metric; the engine logs its mean over each log interval.

        Values are only collected here (no arithmetic, no device sync); they are reduced at log
        time, which keeps the per-step cost of logging to a list append.
        """
        value = value.detach() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
        if name in self._pending:
            self._pending[name].append(value)
        else:
            self._pending[name] = [value]

    def pop_logged(self) -> dict[str, float]:
        """Means of everything logged since the last call (used by the loop at log time)."""
        out = {k: _mean(vs) for k, vs in self._pending.items()}
        self._pending.clear()
        return out

    def provider(self, capability: str) -> Any:
        """The enabled plugin that provides ``capability`` (or is named so), or ``None``."""
        name = self.manager.capabilities.get(capability)
        return None if name is None else self.plugins[name]

    def data_info(self, key: str, *, needed_by: str, what: str) -> Any:
        """``data.info[key]``, or bad input naming the plugin that needs it and what it needs."""
        from engine.errors import BadInput

        info = getattr(self.data, "info", None) or {}
        if key not in info:
            raise BadInput(f"{needed_by} needs {what} (data info {key!r}); enable a matching data plugin")
        return info[key]

    def logits(self, logits: torch.Tensor, *, role: str, consumer: str, kind: str) -> torch.Tensor:
        """``logits`` as the loss ``consumer`` of family ``kind`` should see them (hookmix_transform_logits)."""
        return self.manager.transform_logits(logits, role, consumer, kind, self)

    def add_module(self, name: str, module: torch.nn.Module) -> None:
        """Register a plugin-owned trainable module: moved to the device, optimized, checkpointed."""
        if name in self.modules:
            raise ValueError(f"a plugin module named {name!r} already exists")
        self.modules[name] = module.to(self.device)

    def autocast(self):
        """The autocast context of the run (a no-op in fp32)."""
        if self.autocast_dtype is None:
            return _NULL
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


def _mean(values: list[torch.Tensor]) -> float:
    try:  # same-shape scalars (nearly always): one stack instead of two ops per value
        return torch.stack(values).float().mean().item()
    except RuntimeError:
        return torch.stack([v.float().reshape(()) for v in values]).mean().item()


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


_NULL = _Null()
