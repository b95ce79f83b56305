"""Hook specifications: the whole contract between the engine and its plugins.

One section per phase of the loop, in the order the loop fires them (see the pseudocode in
:mod:`engine.loop`). Every spec is declared with :func:`spec`, which records its
:class:`Convention` on it; the manager (validation, the hook callers, the plan), the FSDP
full-weight rule and docs/hooks.md all read that one declaration. Every docstring gives one
summary line naming the convention's kind, when the hook fires, its arguments and what it
returns. The **calling convention**:

notify
    Every implementation runs, in the plugin order the engine computed; the engine does not use
    the results (observers, validators, edits in place).
collect
    Every implementation runs in order; the engine gets the results that are not ``None``,
    each with its plugin's name, and combines them itself (e.g. merges param groups).
merge
    Every implementation runs in order and returns named results (a dict) or ``None``; the
    engine merges them into one dict, or into an argument (``outputs``), and fails on a name
    returned twice, naming both plugins (loss terms are then summed).
fold
    Implementations run in plugin order; each receives the previous one's result (``None``
    means "unchanged").
exclusive
    At most one plugin may implement it. The engine checks this when the run is set up and
    fails with an error naming both plugins (it never lets pluggy pick a silent winner).
    Where the engine has a built-in behaviour it is used when no plugin implements the hook.
    A plugin may declare its implementation a default (``default_hooks``, plugin API 1.1):
    another enabled plugin that implements the hook then replaces it, and the plan says so
    (``hookmix_advantages  my_adv (replaces grpo's default)``). Two implementations that are
    not defaults, or two defaults with nothing to replace them, are still refused, naming both.
wrapper
    The engine owns the inner behaviour; plugins wrap it with ``@hookimpl(wrapper=True)``,
    run code before ``yield`` and after it, and must return the inner result (possibly
    changed). Wrappers nest like context managers, so undo happens in reverse order.
per plugin
    The engine calls each plugin's implementation separately and keys the result by the
    plugin's name (used for checkpoint state).

Under ``run.strategy = "fsdp"`` a spec also says which weights its hook sees: ``gathered``
(the engine gathers full weights around it: always for ``hookmix_eval_metrics``, and for
``hookmix_after_optimizer_step`` while a plugin declares ``needs_full_weights``) or ``shards``
(row shards only, with no gathered view: a plugin that needs full weights may not implement it).

What a plugin *declares* rather than does — its config class, capabilities, ordering, shipped
recipes, CLI commands, supported API range — are class attributes of :class:`engine.Plugin`,
not hooks.

Arguments are passed by keyword; an implementation may accept any subset of them. ``state``
is the :class:`engine.state.State` of the run (config, step counter, model, optimizer, data,
``state.log(name, value)`` for plugin metrics, ``state.logits(...)`` for consumer-scoped
logit transforms, ``state.provider(capability)`` for the plugin that provides a capability,
``state.data_info(key, ...)`` for what the data provides).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, TypeVar

import attrs
import pluggy

if TYPE_CHECKING:
    import torch

    from engine.state import State

hookspec = pluggy.HookspecMarker("hookmix")
F = TypeVar("F", bound=Callable[..., Any])

KINDS = ("notify", "collect", "merge", "fold", "exclusive", "wrapper", "per plugin")
FSDP_WEIGHTS = ("", "gathered", "shards")


@attrs.frozen
class Convention:
    """How the engine calls a hook's implementations and what it does with their results (see above)."""

    kind: str = attrs.field(validator=attrs.validators.in_(KINDS))
    # fold: the argument each result replaces; merge: the argument merged into (None: a new dict)
    into: str | None = None
    # merge: what the merged names are, for the error on a name returned twice ("loss term 'ce' ...")
    names: str = "result"
    # under run.strategy='fsdp': "gathered", "shards", or "" (no weights, or before sharding); see above
    fsdp_weights: str = attrs.field(default="", validator=attrs.validators.in_(FSDP_WEIGHTS))


def spec(kind: str, *, into: str | None = None, names: str = "result", fsdp_weights: str = "") -> Callable[[F], F]:
    """Declare a hook: pluggy's spec marker, and its :class:`Convention` as the function's ``convention``."""
    convention = Convention(kind, into, names, fsdp_weights)

    def declare(fn: F) -> F:
        fn.convention = convention  # type: ignore[attr-defined]
        # a wrapper hook's one inner implementation is the engine's: ``yield`` hands wrappers its result itself
        return hookspec(firstresult=kind == "wrapper")(fn)

    return declare


def conventions() -> dict[str, Convention]:
    """Every hook's convention by hook name, in the order the loop fires them (the order of this module)."""
    return {name: fn.convention for name, fn in globals().items() if name.startswith("hookmix_")}


def hook_names() -> list[str]:
    """Every hook's name, in the order the loop fires them."""
    return list(conventions())


def convention(hook_name: str) -> Convention:
    """The convention declared on ``hook_name``'s spec."""
    return globals()[hook_name].convention


# --- Setup ----------------------------------------------------------------------------------


@spec("notify")
def hookmix_configure(state: State) -> None:
    """Validate the combination of enabled plugins and their configs (notify).

    Fires once, after configs are structured and before anything is built. Raise
    :class:`engine.BadInput` with a one-line message naming the problem and the fix, e.g.
    "spectral_soft_cap: eta/w_max = 0.5 > 0.3; lower plugins.muon.lr or raise w_max".
    """


@spec("exclusive")
def hookmix_data(state: State) -> Any:
    """Build the data source (exclusive; required for training).

    Returns an object with ``info: dict`` (e.g. ``{"task": "lm", "vocab_size": 65}``),
    ``train_batch(generator) -> dict`` (all randomness from the engine's checkpointed
    ``torch.Generator``, so resume replays the same data order) and ``val_batches()`` (a
    finite, deterministic iterable of batch dicts; may be empty). Batches are dicts of tensors,
    by convention ``{"input": ..., "target": ...}``.
    """


@spec("exclusive")
def hookmix_model(state: State) -> torch.nn.Module:
    """Build the trained model (exclusive; required for training).

    Fires after ``hookmix_data`` so ``state.data.info`` is available. The engine moves the
    result to ``state.device``. Its forward maps ``batch["input"]`` to logits unless a plugin
    implements ``hookmix_forward``.
    """


@spec("notify")
def hookmix_setup_model(model: torch.nn.Module, state: State) -> None:
    """Prepare the model once it is built and on its device (notify).

    Fires before the optimizer is built and before a checkpoint is restored. Use it to add
    plugin-owned trainable modules (``state.add_module(name, module)``: trained, checkpointed,
    put in the default param group), register frozen models (``state.add_frozen_module(name,
    module)``: a teacher, a reference policy; never trained or checkpointed, sharded under
    ``run.strategy='fsdp'``), register forward hooks that capture features, or project
    weights once at initialization (a resume then overwrites them with the saved ones).
    """


@spec("collect")
def hookmix_param_groups(model: torch.nn.Module, state: State) -> list[dict] | None:
    """Claim parameters for optimizer param groups (collect; the engine merges the lists).

    Returns a list of dicts ``{"name": str, "params": [Parameter, ...], **options}``. The
    engine merges the lists of all plugins, puts every unclaimed trainable parameter
    (model and plugin modules) in a group named ``"default"``, and fails if a parameter is
    claimed twice (naming both groups and plugins) or a group name repeats.
    """


@spec("exclusive")
def hookmix_optimizer(param_groups: list[dict], state: State) -> torch.optim.Optimizer:
    """Build the optimizer from the merged param groups (exclusive; required for training).

    ``param_groups`` keeps the ``"name"`` key and each plugin's options; the provider decides
    how to map them (e.g. Muon for groups tagged ``"muon"``, AdamW for the rest). The result
    must offer ``step()``, ``zero_grad()``, ``param_groups``, ``state_dict()`` and
    ``load_state_dict()``.
    """


@spec("exclusive")
def hookmix_lr_scheduler(optimizer: torch.optim.Optimizer, state: State) -> Any:
    """Build the learning-rate scheduler (exclusive; optional).

    Returns an object with ``step()``, ``state_dict()`` and ``load_state_dict()`` (any
    ``torch.optim.lr_scheduler.LRScheduler``) or ``None``. The engine steps it once per real
    optimizer step, after ``hookmix_after_optimizer_step``, and checkpoints it.
    """


@spec("notify")
def hookmix_on_train_start(state: State) -> None:
    """Observe the start of training (notify).

    Fires after setup and after a resume restored everything, just before the first step.
    ``state.start_step`` is the first step to run (non-zero when resuming).
    """


# --- Reinforcement learning: rollouts, rewards, advantages ----------------------------------


@spec("exclusive")
def hookmix_generate_rollouts(model: torch.nn.Module, batch: dict, state: State) -> dict:
    """Sample rollouts from the policy for a batch of prompts (exclusive; optional).

    Fires once per micro-batch, before the forward pass, under ``torch.no_grad()`` and the
    run's autocast, with the model in eval mode. Returns the batch the rest of the step sees (token ids, stored noise,
    masks, old log-probabilities, ...). When no plugin implements it, the data batch is used
    as is (supervised training).
    """


@spec("merge", names="reward term")
def hookmix_rewards(rollouts: dict, state: State) -> dict[str, torch.Tensor] | None:
    """Score rollouts: named, already-weighted reward terms, one value per rollout (merge).

    Fires after ``hookmix_generate_rollouts``. The engine sums the terms into
    ``rollouts["reward"]``, logs each mean as ``train/reward/<name>`` and fails on a name
    returned twice.
    """


@spec("exclusive")
def hookmix_advantages(rollouts: dict, rewards: torch.Tensor, state: State) -> torch.Tensor:
    """Turn summed rewards into per-rollout advantages (exclusive; optional).

    Fires after ``hookmix_rewards``; the result is stored as ``rollouts["advantages"]``.
    Without a provider the rewards themselves are used. ``grpo`` and ``soft_grpo`` implement it
    as a default (group advantages): an advantage estimator of another plugin replaces theirs.
    """


# --- Forward and loss -----------------------------------------------------------------------


@spec("exclusive")
def hookmix_forward(model: torch.nn.Module, batch: dict, state: State) -> dict:
    """Run the model on a (micro-)batch (exclusive; built-in default).

    Fires inside autocast when bf16 is on, for training batches and for the engine's
    validation batches alike. Returns a dict with at least ``"logits"``. The
    built-in behaviour, used without a provider, is ``{"logits": model(batch["input"])}``.
    """


@spec("merge", into="outputs", names="output")
def hookmix_aux_outputs(model: torch.nn.Module, batch: dict, outputs: dict, state: State) -> dict[str, Any] | None:
    """Add auxiliary outputs next to the model's: teacher logits, captured features (merge into ``outputs``).

    Fires after ``hookmix_forward``. Returned keys are merged into ``outputs`` (e.g.
    ``"teacher_logits"``); a key already present or returned by two plugins is an error.
    Frozen computations (a teacher) must run under ``torch.no_grad()`` themselves.
    """


@spec("fold", into="logits")
def hookmix_transform_logits(
    logits: torch.Tensor, role: str, consumer: str, kind: str, state: State
) -> torch.Tensor | None:
    """Transform logits as seen by one loss consumer (fold, scoped per consumer).

    Fires when a loss plugin asks ``state.logits(logits, role=..., consumer=..., kind=...)``,
    never globally: ``role`` is ``"student"`` or ``"teacher"``, ``consumer`` the asking
    plugin's name and ``kind`` its family (``"supervised"``, ``"distillation"``, ...). Return
    the transformed logits, or ``None`` to pass them on unchanged. Example: logit
    standardization acts on ``kind == "distillation"`` so KD sees z-scores while
    cross-entropy keeps the raw logits.
    """


@spec("merge", names="loss term")
def hookmix_loss_terms(batch: dict, outputs: dict, state: State) -> dict[str, torch.Tensor] | None:
    """Return named, already-weighted scalar loss terms (merge).

    Fires once per micro-batch inside autocast. The engine sums all terms, divides by the
    gradient-accumulation factor, logs each as ``train/loss/<name>`` and the sum as
    ``train/loss``; a name returned twice is an error; a non-finite term stops the run naming
    the term and the step. No plugin ever sees or mutates the total.
    """


@spec("notify")
def hookmix_on_train_batch(batch: dict, outputs: dict, state: State) -> None:
    """Observe one training micro-batch and its outputs (notify, read-only; plugin API 1.1).

    Fires once per micro-batch, right after ``hookmix_loss_terms``, inside autocast and under
    ``torch.no_grad()``, with the batch the step trains on (this rank's rows, rolled out) and the
    outputs the loss terms saw (aux outputs merged). Only the step's first evaluation is shown:
    the loss closure's re-evaluations (SAM's perturbed point, LBFGS's line search) are not. A
    plugin that watches the data or the predictions implements this, not a loss term returning
    nothing.
    """


@spec("notify", fsdp_weights="shards")
def hookmix_before_backward(loss: torch.Tensor, state: State) -> None:
    """Observe the micro-batch loss just before ``loss.backward()`` (notify, read-only)."""


@spec("notify", fsdp_weights="shards")
def hookmix_after_backward(model: torch.nn.Module, state: State) -> None:
    """Inspect or edit gradients after a micro-batch's backward pass (notify).

    Fires once per micro-batch; after the last one the gradients are complete. Gradient
    clipping (``run.grad_clip``) happens after the last call.
    """


# --- Optimizer step -------------------------------------------------------------------------


@spec("wrapper", fsdp_weights="shards")
def hookmix_optimizer_step(optimizer: torch.optim.Optimizer, state: State, closure: Callable[[], torch.Tensor]) -> None:
    """Take one real optimizer step (wrapper around the engine's ``optimizer.step()``).

    Fires once per real step, never per micro-batch. Implement with
    ``@hookimpl(wrapper=True)``: code before ``yield`` runs before the step, code after it
    runs after (e.g. SAM-style perturb/restore, step timing). Only wrappers are allowed.
    ``closure`` (plugin API 1.1; a 1.0 wrapper leaves it out) is torch's loss closure: each
    call zeroes the gradients, re-runs forward, aux outputs, loss terms and backward on the
    step's own micro-batches (under autocast and the DDP/FSDP wrapper), clips them when
    ``run.grad_clip`` is set, and returns the step's loss. The engine's inner step is
    ``optimizer.step()``, or ``optimizer.step(closure)`` for an optimizer whose ``step`` requires
    its closure (LBFGS: the engine then runs no pass of its own and the first call is the step's
    first evaluation). Only the first evaluation records loss terms, ``state.log`` values,
    ``hookmix_on_train_batch`` and throughput; a re-evaluation logs nothing.
    """


@spec("notify", fsdp_weights="gathered")
def hookmix_after_optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: State) -> None:
    """Modify weights in place after each real optimizer step (notify, in plugin order).

    Runs under ``torch.no_grad()``, once per real step (after all accumulation micro-batches),
    before the scheduler step, ``zero_grad``, evaluation and checkpointing. ``state.step`` is
    already the number of completed steps. Weight constraints and EMA updates live here; order
    among them follows the plugins' ``before``/``after`` declarations.
    Under ``run.strategy = "fsdp"`` parameters are row shards (DTensors); while an enabled plugin
    declares ``needs_full_weights = True`` this hook runs on gathered full tensors, written back to
    the shards afterwards (docs/distributed.md, "The full-matrix contract").
    """


# --- Evaluation and logging -----------------------------------------------------------------


@spec("wrapper", fsdp_weights="shards")
def hookmix_evaluate(model: torch.nn.Module, state: State) -> dict[str, float]:
    """Evaluate the model (wrapper around the engine's evaluation).

    Fires every ``run.eval_interval`` steps and at the end. The engine's inner evaluation
    computes ``val/loss`` (cross-entropy) and ``val/accuracy`` with torchmetrics over
    ``data.val_batches()`` (when the data has any) and merges ``hookmix_eval_metrics``.
    Wrappers may swap weights around it (EMA); ``yield`` returns the metrics dict, and the
    wrapper returns it (possibly with metrics added). Only wrappers are allowed.
    """


@spec("merge", names="metric", fsdp_weights="gathered")
def hookmix_eval_metrics(model: torch.nn.Module, state: State) -> dict[str, float] | None:
    """Return extra evaluation metrics, namespaced by plugin (merge).

    Fires inside ``hookmix_evaluate`` in eval mode under ``torch.no_grad()``, e.g.
    ``{"lipschitz/bound": 1.93}``. Duplicate names are an error. Under ``run.strategy = "fsdp"``
    it runs inside ``state.full_weights()``: the model holds gathered full tensors (read-only).
    """


@spec("notify")
def hookmix_on_log(metrics: dict[str, float], state: State) -> None:
    """Observe a record just written to ``metrics.jsonl`` and TensorBoard (notify, read-only).

    Fires every ``run.log_interval`` steps and after each evaluation, on the main process only.
    """


@spec("notify")
def hookmix_on_train_end(state: State, summary: dict) -> None:
    """Observe the end of a successful run (notify); ``summary`` is what ``summary.json`` holds."""


# --- Checkpoint state -----------------------------------------------------------------------


@spec("per plugin")
def hookmix_plugin_state(state: State) -> dict | None:
    """Return this plugin's resumable state (per plugin).

    Fires when a checkpoint is written. Tensors, numbers, strings and nested lists/dicts only
    (checkpoints load with ``weights_only=True``). Stored under the plugin's name.
    """


@spec("per plugin")
def hookmix_load_plugin_state(plugin_state: dict, state: State) -> None:
    """Restore what ``hookmix_plugin_state`` returned (per plugin).

    Fires on resume after the model, optimizer and scheduler are restored and before
    ``hookmix_on_train_start``.
    """
