"""Sharded training with FSDP2 (``torch.distributed.fsdp.fully_shard``), ``run.strategy = "fsdp"``.

PyTorch does the sharding: ``fully_shard`` turns every parameter into a DTensor sharded by rows
(dim 0, ``torch.chunk`` layout) across the ranks, all-gathers a unit's parameters for its forward
and backward and reduce-scatters (averages) the gradients. Optimizers step on the local shards,
so parameters, gradients and optimizer state take about 1/W of the memory per rank. What this
module adds:

- :func:`shard`: wraps the units the model names (``model.fsdp_units()``, else the whole model as
  one unit), then the model, then each plugin-owned module (``state.modules``), with a
  ``MixedPrecisionPolicy`` under ``run.precision = "bf16"``. Methods other than ``forward`` that run
  the model (``model.fsdp_forward_methods``, e.g. a policy's ``embed``) gather its weights too.
- Frozen models (``state.add_frozen_module``: a teacher, a reference policy) are sharded the same way,
  as roots of their own with the student's ``MixedPrecisionPolicy``; they have no gradients, no optimizer
  state and are not checkpointed. Their forwards run under ``no_grad``, where FSDP2 keeps a root's
  parameters gathered after its forward (sub-units reshard): :class:`Sharded` reshards them after every
  forward closure, a point every rank reaches together.
- :class:`Sharded`: what the training step uses in place of DDP (``no_sync()`` for gradient
  accumulation, a call that runs the engine's forward closure).
- :func:`full_weights`: the gathered view of the full-matrix contract. Every sharded parameter is
  all-gathered and temporarily put in the model as a plain full tensor; on exit, in-place changes
  are written back to this rank's rows. Every rank computes the same full result from the same
  full input, so the shards stay consistent.
- :func:`check_full_weight_plugins`: refuses (bad input) a plugin that needs full weights in a hook
  where the engine cannot give them.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor, distribute_tensor

from engine.errors import BadInput


def units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The sub-modules a model asks to be sharded as separate units (``model.fsdp_units()``).

    Each unit's parameters are gathered only while that unit runs, so peak memory holds one unit's
    full weights at a time; without the method the whole model is one unit (its parameters are
    still sharded between steps, which is what saves the optimizer-state memory).
    """
    fn = getattr(model, "fsdp_units", None)
    if not callable(fn):
        return []
    found = list(fn())
    inside = {id(m) for m in model.modules()}
    for unit in found:
        if not isinstance(unit, torch.nn.Module) or id(unit) not in inside or unit is model:
            raise BadInput(
                f"model.fsdp_units() returned {type(unit).__name__}, not a sub-module of the model; "
                f"return the blocks to shard (e.g. the transformer blocks)"
            )
    return found


class Sharded:
    """The FSDP2-wrapped model and plugin modules, used by the training step in place of DDP."""

    def __init__(self, roots: list[torch.nn.Module], policy: MixedPrecisionPolicy) -> None:
        self.roots = roots  # the top-level FSDP modules: the model, then each plugin module
        self.policy = policy
        self.frozen: list[torch.nn.Module] = []  # sharded frozen models (state.add_frozen_module): not trained
        self.view: dict[str, torch.Tensor] | None = None  # the open gathered view (views nest: the outer one counts)

    def __call__(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()  # FSDP2's hooks are on the modules themselves: nothing to wrap
        finally:  # once per micro-batch on every rank: the frozen roots gathered by rollouts or aux outputs
            self.reshard_frozen()

    def add_frozen(self, module: torch.nn.Module) -> None:
        """Shard a frozen model (``state.add_frozen_module``) as a root of its own."""
        if any(isinstance(m, FSDPModule) for m in module.modules()):
            raise BadInput(
                f"frozen module {type(module).__name__} is already sharded; register the plain module "
                f"with state.add_frozen_module and let the engine shard it"
            )
        shard_tree(module, self.policy)
        self.frozen.append(module)

    def reshard_frozen(self) -> None:
        """Free the gathered weights of the frozen roots (local, no communication). Under ``no_grad`` FSDP2
        leaves a root gathered after its forward; gathered, further calls of it (e.g. a second ``embed`` on
        one rank only) need no collective, so call counts of the root's own methods may differ by rank."""
        reshard(self.frozen)

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Gradient accumulation: keep unsharded gradients, reduce-scatter on the last micro-batch."""
        for root in self.roots:
            root.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            for root in self.roots:
                root.set_requires_gradient_sync(True)

    def reshard(self) -> None:
        """Back to sharded parameters: a forward under ``no_grad`` (evaluation) leaves the root's
        parameters gathered (FSDP2 keeps the root unsharded after its forward)."""
        reshard([*self.roots, *self.frozen])


def reshard(roots: list[torch.nn.Module]) -> None:
    """Every FSDP module in ``roots`` back to its local shards (local: no communication)."""
    for root in roots:
        for module in root.modules():
            if isinstance(module, FSDPModule):
                module.reshard()


def shard_tree(module: torch.nn.Module, policy: MixedPrecisionPolicy) -> None:
    """``fully_shard`` a model's units (``fsdp_units()``), then the model; its ``fsdp_forward_methods`` gather too."""
    for unit in units(module):
        fully_shard(unit, mp_policy=policy)
    fully_shard(module, mp_policy=policy)
    for method in getattr(module, "fsdp_forward_methods", ()):  # entry points other than forward()
        register_fsdp_forward_method(module, method)


def shard(
    model: torch.nn.Module,
    modules: torch.nn.ModuleDict,
    precision: str,
    frozen: dict[str, torch.nn.Module] | None = None,
) -> Sharded:
    """``fully_shard`` the model's units, the model, every plugin module and every frozen model (in place)."""
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if precision == "bf16"
        else MixedPrecisionPolicy()
    )
    shard_tree(model, policy)
    roots = [model]
    for module in modules.values():  # called by their plugins outside the model's forward: roots of their own
        if any(p.requires_grad for p in module.parameters()):
            fully_shard(module, mp_policy=policy)
            roots.append(module)
    sharded = Sharded(roots, policy)
    for module in (frozen or {}).values():
        sharded.add_frozen(module)
    return sharded


@contextlib.contextmanager
def full_weights(sharded: Sharded, write_back: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Every sharded parameter as a plain full tensor in the model while the block runs.

    Yields ``{name: full tensor}`` (names as in ``named_parameters()`` of each root). A collective:
    every rank enters it at the same point. Changes made in place to the full tensors are copied
    back to this rank's shard on exit (``write_back``). (Outside FSDP, ``state.full_weights()`` yields ``{}``.)
    """
    if sharded.view is not None:  # already inside a view: the model holds the full tensors
        yield sharded.view
        return
    sharded.reshard()
    swapped: list[tuple[torch.nn.Module, str, DTensor, torch.nn.Parameter, bool]] = []
    view: dict[str, torch.Tensor] = {}
    gathered: dict[int, torch.nn.Parameter] = {}
    try:
        with torch.no_grad():
            for root in sharded.roots:
                for mod_name, module in root.named_modules():
                    for name, p in list(module._parameters.items()):
                        if not isinstance(p, DTensor):
                            continue
                        fresh = id(p) not in gathered  # a tied weight is gathered (and written back) once
                        if fresh:
                            gathered[id(p)] = torch.nn.Parameter(p.full_tensor().clone(), requires_grad=p.requires_grad)
                        full = gathered[id(p)]
                        module._parameters[name] = full
                        swapped.append((module, name, p, full, fresh))
                        view[f"{mod_name}.{name}" if mod_name else name] = full
        sharded.view = view
        yield view
    except BaseException:
        write_back = False  # the hook failed: the run stops, the shards keep the last good weights
        raise
    finally:
        sharded.view = None
        with torch.no_grad():
            for module, name, p, full, fresh in reversed(swapped):
                module._parameters[name] = p
                if write_back and fresh:  # this rank's rows of the full tensor (every rank holds it: no communication)
                    rows = distribute_tensor(full.data, p.device_mesh, p.placements, src_data_rank=None)
                    p.to_local().copy_(rows.to_local())


def needs_full(plugin: Any) -> bool:
    return bool(getattr(type(plugin), "needs_full_weights", False))


def check_full_weight_plugins(manager) -> list[str]:
    """The enabled plugins that need full weights; bad input when one implements a hook whose spec says it
    sees row shards only (``fsdp_weights="shards"``: no gathered view; see docs/distributed.md, the
    full-matrix contract)."""
    names = [n for n, p in manager.plugins.items() if needs_full(p)]
    for hook, convention in manager.conventions.items():
        if convention.fsdp_weights != "shards":
            continue
        for name in manager.providers(hook):
            if name in names:
                raise BadInput(
                    f"plugin {name!r} needs full weight matrices (needs_full_weights = True) in {hook}, "
                    f"where run.strategy='fsdp' holds only row shards; use run.strategy=ddp "
                    f"or remove {name} from run.plugins"
                )
    return names


def plain(value: Any) -> Any:
    """A DTensor result (e.g. the gradient norm of sharded gradients) as a plain tensor."""
    return value.full_tensor() if isinstance(value, DTensor) else value


def setup(state, manager, precision: str) -> tuple[Sharded, bool]:
    """Check the full-matrix contract, shard, and give ``state.full_weights()`` its gathered view.
    Returns the sharded modules and whether the engine must gather around the post-step and
    evaluation-metric hooks (some enabled plugin needs full weights)."""
    names = check_full_weight_plugins(manager)
    sharded = shard(state.model, state.modules, precision, state.frozen_modules)
    state._full_view = lambda write_back=True: full_weights(sharded, write_back)
    state._shard_frozen = sharded.add_frozen  # a frozen module added later (hookmix_on_train_start) is sharded at once
    return sharded, bool(names)
