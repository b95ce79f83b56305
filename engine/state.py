"""The state of one run, handed to every hook as ``state``."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any, TypeVar, overload

import torch

from engine.train_log import TrainLog

if TYPE_CHECKING:
    from engine.config.recipe import Recipe, RunConfig
    from engine.config.registry import Registry
    from engine.manager import Manager
    from engine.plugin import Plugin
    from engine.rundir.directory import RunDir

T = TypeVar("T")
M = TypeVar("M", bound=torch.nn.Module)


class State:
    """Everything a plugin may read during a run; plugins change it only through hooks.

    Attributes set during setup: ``data``, ``model``, ``modules`` (plugin-owned trainable
    modules), ``optimizer``, ``scheduler``. Counters: ``step`` (completed optimizer steps),
    ``start_step``, ``micro`` (micro-batch index within the step). ``registry`` is the run's
    plugin registry (for plugins that open other runs: :func:`engine.open_run`). Plugins reach
    each other only through :meth:`provider` and hooks, never the manager.

    The members without a leading underscore are the plugins' (docs/authoring.md lists them); the
    ones with it are the engine's bookkeeping (the train log, the process group, the FSDP views).

    Distributed runs (docs/distributed.md): ``rank`` (0..world_size-1), ``world_size``,
    ``local_rank`` (the rank on this node: the GPU index), ``is_main`` (rank 0: the only process that
    writes outputs). ``state.model`` is always the plain module (never the DDP wrapper); each rank
    sees its contiguous share of the global batch. A plugin that computes a statistic over data
    reduces it with :meth:`all_reduce_mean` / :meth:`all_reduce_sum` (no-ops in one process).
    """

    def __init__(
        self, recipe: Recipe, manager: Manager, device: torch.device, registry: Registry | None = None
    ) -> None:
        self.recipe = recipe
        self.run: RunConfig = recipe.run
        self._manager = manager
        if not manager.has("hookmix_transform_logits"):  # nothing transforms logits: a loss asks every micro-batch
            self.logits = _untransformed
        self.registry = registry
        self.device = device
        self._autocast_dtype = torch.bfloat16 if recipe.run.precision == "bf16" else None
        self._group: Any = None  # engine.distributed.group.Group of the run (set by the trainer: _use_group)
        self.rank, self.world_size, self.local_rank, self.is_main = 0, 1, 0, True
        self.step = 0
        self.start_step = 0
        self.micro = 0
        self._resumed = False  # restored from a checkpoint (the trainer's RNG seeding depends on it)
        self.data: Any = None
        self.model: torch.nn.Module | None = None
        self.modules = torch.nn.ModuleDict()
        self.optimizer: Any = None
        self.scheduler: Any = None
        self.generator = torch.Generator().manual_seed(recipe.run.seed + 1)  # data order
        self.run_dir: RunDir | None = None
        self.cache_dir = cache_dir_from_env()
        self._train_log = TrainLog()  # the loop's loss terms and state.log values of the current log interval
        self._full_view: Any = None  # run.strategy='fsdp': engine.distributed.fsdp.full_weights over the shards
        self.frozen_modules: dict[str, torch.nn.Module] = {}  # state.add_frozen_module (read-only for plugins)
        self._shard_frozen: Any = None  # run.strategy='fsdp', after sharding: shards a late frozen module

    def log(self, name: str, value: float | torch.Tensor) -> None:
        """Record a training metric; the engine logs its mean over each log interval.

        Values are only collected here (a list append: no arithmetic, no device sync, no tensor built
        for a Python number); they are read and averaged at log time (engine/train_log.py).
        """
        self._train_log.log(name, value)

    @overload
    def provider(self, capability: type[T]) -> T | None: ...

    @overload
    def provider(self, capability: str) -> Plugin | None: ...

    def provider(self, capability):
        """The enabled plugin that provides ``capability`` (a Protocol class, or a name), or ``None``.

        With a ``typing.Protocol`` the result is typed as that Protocol; the engine checked at
        load time that the provider implements it.
        """
        from engine.plugin import capability_name

        name = self._manager.capabilities.get(capability_name(capability))
        return None if name is None else self._manager.plugins[name]

    @property
    def plugin_names(self) -> list[str]:
        """The enabled plugins, in the order the engine calls them."""
        return list(self._manager.order)

    def plugin_states(self) -> dict[str, dict]:
        """What each plugin would save in a checkpoint now, by plugin name (for checks such as the test
        kit's rank agreement; plugins read each other only through capabilities)."""
        return self._manager.plugin_states(self)

    def forward(self, model: torch.nn.Module, batch: dict) -> dict:
        """``model`` run on ``batch`` the way the run's forward does it (``hookmix_forward`` or the default)."""
        return self._manager.forward(model, batch, self)

    def _use_group(self, group: Any) -> None:
        """Adopt the run's process group (the trainer calls this before any plugin hook)."""
        self._group = group
        self.rank, self.world_size = group.rank, group.world_size
        self.local_rank = group.env.local_rank
        self.is_main = self.rank == 0

    def all_reduce_mean(self, value: float | torch.Tensor) -> float | torch.Tensor:
        """The mean of ``value`` over all ranks (a float, or a tensor of the same shape); every rank
        must call it at the same point. In one process it returns ``value`` unchanged."""
        return value if self._group is None else self._group.all_reduce_mean(value)

    def all_reduce_sum(self, value: float | torch.Tensor) -> float | torch.Tensor:
        """The sum of ``value`` over all ranks (see :meth:`all_reduce_mean`)."""
        return value if self._group is None else self._group.all_reduce_sum(value)

    def rewards(self, rollouts: dict) -> torch.Tensor:
        """The reward ``(B,)`` the reward plugins give ``rollouts`` (the sum of their terms, as the engine computes
        ``rollouts["reward"]``), logging nothing: for a rollout provider that selects rollouts by reward before it
        returns them (DAPO's dynamic sampling in ``grpo``). ``rollouts`` holds what the reward plugins read (the
        provider's keys and ``group_size``); the engine scores the returned batch again as usual."""
        from engine.rollouts import reward_terms

        return reward_terms(rollouts, self, self._manager)[1]

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's ``tensor`` concatenated along dim 0, rank 0's rows first: the global batch of a
        batch-coupled loss (plugin API 1.1). Differentiable: each rank's rows get the gradient of every rank's
        loss, so a loss computed on the result exactly as one process computes it needs no rescaling under
        DDP (docs/distributed.md, "Batch-coupled losses"). Ranks may hold different numbers of rows; the
        other dims must agree. A collective: every rank calls it at the same point. In one process it
        returns ``tensor`` itself."""
        if tensor.dim() == 0:
            raise ValueError("state.all_gather concatenates along dim 0; pass a tensor with at least one dimension")
        return tensor if self._group is None else self._group.all_gather(tensor)

    def data_info(self, key: str, *, needed_by: str, what: str) -> Any:
        """``data.info[key]``, or bad input naming the plugin that needs it and what it needs."""
        from engine.errors import BadInput

        info = getattr(self.data, "info", None) or {}
        if key not in info:
            raise BadInput(f"{needed_by} needs {what} (data info {key!r}); enable a matching data plugin")
        return info[key]

    def logits(self, logits: torch.Tensor, *, role: str, consumer: str, kind: str) -> torch.Tensor:
        """``logits`` as the loss ``consumer`` of family ``kind`` should see them (hookmix_transform_logits)."""
        return self._manager.transform_logits(logits, role, consumer, kind, self)

    def add_module(self, name: str, module: torch.nn.Module) -> None:
        """Register a plugin-owned trainable module: moved to the device, optimized, checkpointed."""
        if name in self.modules:
            raise ValueError(f"a plugin module named {name!r} already exists")
        self.modules[name] = module.to(self.device)

    def add_frozen_module(self, name: str, module: M) -> M:
        """Register a frozen model (a teacher, a reference policy) and return it: moved to the device, in
        eval mode, ``requires_grad`` off; never optimized or checkpointed (rebuild it from its source on resume).
        Under ``run.strategy='fsdp'`` the engine shards it with ``fully_shard`` (its ``fsdp_units()`` and
        ``fsdp_forward_methods`` too) once ``hookmix_setup_model`` has run; keep the returned object and call it
        the same number of times on every rank (its forward gathers the weights: a collective). Elsewhere it
        is left as is. See docs/distributed.md, "Frozen models"."""
        if name in self.frozen_modules:
            raise ValueError(f"a frozen module named {name!r} already exists")
        trained = {id(p) for m in (self.model, self.modules) if m is not None for p in m.parameters()}
        if any(id(p) in trained for p in module.parameters()):
            raise ValueError(
                f"frozen module {name!r} shares parameters with the trained model or a plugin module; "
                f"register a copy (copy.deepcopy)"
            )
        module = module.to(self.device).eval().requires_grad_(False)
        self.frozen_modules[name] = module
        if self._shard_frozen is not None:  # added after the engine sharded the run (e.g. in hookmix_on_train_start)
            self._shard_frozen(module)
        return module

    def full_weights(self, write_back: bool = True):
        """Context manager: under ``run.strategy='fsdp'`` every sharded parameter is gathered and put in
        the model as a plain full tensor (in-place changes are written back to the shards on exit); yields
        ``{name: full tensor}``. A collective: every rank must enter it. Elsewhere a no-op yielding ``{}``."""
        if self._full_view is None:
            return contextlib.nullcontext({})
        return self._full_view(write_back)

    def autocast(self):
        """The autocast context of the run (a no-op in fp32)."""
        if self._autocast_dtype is None:
            return NULL_CONTEXT
        return torch.autocast(self.device.type, dtype=self._autocast_dtype)


def cache_dir_from_env() -> str:
    """``$HOOKMIX_CACHE`` (default ``~/.cache/hookmix``): bad input when set empty or to a file."""
    from engine.errors import BadInput

    value = os.environ.get("HOOKMIX_CACHE")
    if value is None:
        return os.path.expanduser("~/.cache/hookmix")
    if not value.strip():
        raise BadInput("HOOKMIX_CACHE is set but empty; unset it or point it at a directory")
    path = os.path.expanduser(value)
    if "://" not in path and os.path.exists(path) and not os.path.isdir(path):
        raise BadInput(f"HOOKMIX_CACHE={value} is a file; point it at a directory (created if missing)")
    return path


def _untransformed(logits: torch.Tensor, *, role: str, consumer: str, kind: str) -> torch.Tensor:
    return logits


NULL_CONTEXT = contextlib.nullcontext()  # reusable: entering it costs nothing and keeps no state (fp32's autocast)
