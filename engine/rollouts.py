"""Turning a drawn batch into rollouts for RL training (runs with a ``hookmix_generate_rollouts`` plugin), and
the rollouts contract (:class:`Rollouts`; docs/authoring.md, "The rollouts contract").

The policy samples without gradients in eval mode, the reward plugins score the samples (named
terms, summed and logged), and the advantages plugin turns rewards into advantages (the rewards
themselves when there is none). The result is the batch the loss plugins see.
"""

from __future__ import annotations

from typing import Any, TypedDict

import torch

from engine.errors import BadInput
from engine.manager import Manager
from engine.state import State


class Rollouts(TypedDict, total=False):
    """The rollouts batch: what ``hookmix_generate_rollouts`` returns, what ``hookmix_rewards`` and
    ``hookmix_advantages`` read, and (with ``reward`` and ``advantages`` added) the batch of ``hookmix_forward``
    and ``hookmix_loss_terms``. A dict; this class types it (``rollouts: Rollouts`` in a hook's signature).

    Rows: ``B`` rollouts (completions) on this rank; every tensor whose dim 0 is ``B`` is per rollout, row ``i``
    the same rollout everywhere. Groups: the ``G = group_size`` rollouts of one prompt are consecutive rows,
    ``[g*G, (g+1)*G)`` for prompt ``g``, so ``x.view(-1, G)`` holds one group per row; a group never spans ranks
    (the prompts are sliced per rank before sampling) and ``B`` is a multiple of ``G``.

    The engine's keys, on every rollouts batch:

    - ``group_size`` (``int`` >= 1): ``G``, written by the rollout provider; an advantages plugin that normalises
      per group reads it. Optional for a provider without groups (then every rollout is its own group).
    - ``reward`` (float ``(B,)``): the sum of the reward terms, added by the engine after ``hookmix_rewards``
      (each term is one value per rollout, shape ``(B,)``; the engine refuses any other shape).
    - ``advantages`` (float ``(B,)``): what ``hookmix_advantages`` returned (shape ``(B,)``, checked), or
      ``reward`` when no plugin implements it.
    - ``loss_mask`` (bool ``(B, L)``, optional, written by the provider): the positions a token-level loss is taken
      on; the engine counts them into ``step_totals["tokens"]``.
    - ``step_totals`` (:class:`StepTotals`, written by the engine once the step's micro-batches are all rolled out,
      before the first forward): what the whole optimizer step holds over its micro-batches and ranks, for losses
      that normalise by a global count (docs/authoring.md, "Global normalisers").

    The shipped providers (``grpo``, ``soft_grpo``) add, for reward plugins of their task (countdown):

    - ``rollout``: the sampled rollouts, a ``plugins.soft_grpo.record.Rollout`` of ``B`` rows (``answer_text``
      list[str], ``finished`` bool ``(B,)``, ``input_ids`` int64 ``(B, L)``, ``response_mask`` bool ``(B, L)``,
      ``think_lengths`` / ``answer_lengths`` int64 ``(B,)``, ...);
    - ``numbers`` int64 ``(B, n)`` (the problem's numbers, 0-padded) and ``targets`` int64 ``(B,)``: equal within
      a group;
    - ``old_logp`` float32 ``(B, L)``: per-position log-likelihood under the sampling policy (teacher-forced), or
      ``None`` when the batch is trained on-policy (``minibatches = 1``: the sampling policy is the trained one);
      ``ref_logp``: the same under the frozen reference, or ``None`` (no KL term).
    """

    group_size: int
    reward: torch.Tensor
    advantages: torch.Tensor
    rollout: Any
    numbers: torch.Tensor
    targets: torch.Tensor
    old_logp: torch.Tensor | None
    ref_logp: torch.Tensor | None
    loss_mask: torch.Tensor
    step_totals: StepTotals


class StepTotals(TypedDict):
    """The optimizer step's rollouts counted over all its micro-batches and all ranks (``batch["step_totals"]``).

    The engine averages the micro-batch losses into the step (each divided by ``run.grad_accum``, then the
    gradient averaged over ranks), so a loss meant as ``Σ over the step's tokens / tokens`` returns, on each
    micro-batch, ``Σ over its own tokens / (tokens / micro_batches)``: the same step on 1 rank or W, with or
    without accumulation (TRL issues #2995, #3256, #6024 are this division done per micro-batch or per rank).
    """

    sequences: float  # rollouts (rows), all micro-batches of the step, all ranks
    tokens: float | None  # Σ loss_mask likewise; None when the provider gives no loss_mask
    micro_batches: int  # the micro-batch losses the engine averages into the step: grad_accum × world_size


#: The keys the engine reads or writes on every rollouts batch (the rest is the provider's).
ENGINE_KEYS = ("group_size", "reward", "advantages", "step_totals")


def roll_out(model: torch.nn.Module, batch: dict, state: State, manager: Manager) -> Rollouts:
    model.eval()
    with torch.no_grad(), state.autocast():
        rollouts = manager.generate_rollouts(model, batch, state)
    model.train()
    terms, reward = reward_terms(rollouts, state, manager)
    rows = reward.shape[0]
    for name, term in terms.items():
        state.log(f"train/reward/{name}", term.float().mean())
    state.log("train/reward", reward.float().mean())
    rollouts["reward"] = reward
    advantages = manager.advantages(rollouts, reward, state)
    if advantages is not None and (not torch.is_tensor(advantages) or tuple(advantages.shape) != (rows,)):
        shape = tuple(advantages.shape) if torch.is_tensor(advantages) else type(advantages).__name__
        raise BadInput(f"hookmix_advantages returned {shape}; it returns one value per rollout, shape ({rows},)")
    rollouts["advantages"] = reward if advantages is None else advantages
    return rollouts


def reward_terms(rollouts: Rollouts, state: State, manager: Manager) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The reward plugins' terms for ``rollouts`` (checked: each ``(B,)``) and their sum; logs nothing.
    ``state.rewards`` is this for a rollout provider that selects by reward before returning."""
    terms = manager.rewards(rollouts, state)
    if not terms:
        raise BadInput("a rollout plugin is enabled but no plugin returns rewards; add a reward plugin")
    _check_rewards(terms, rollouts.get("group_size"))
    return terms, sum(terms.values())


def add_step_totals(batches: list[Rollouts], state: State) -> StepTotals:
    """Count the step's rolled-out micro-batches (one all-reduce of two numbers under W ranks) and write the
    totals into each as ``step_totals``; returns them."""
    rows, tokens, masked = 0, 0, True
    for batch in batches:
        rows += int(batch["reward"].shape[0])
        mask = batch.get("loss_mask")
        if mask is None:
            masked = False
        else:
            tokens += int(mask.sum())
    counts = torch.tensor([rows, tokens], dtype=torch.float64)
    if state.world_size > 1:  # every rank rolls out the same number of micro-batches: the call points match
        counts = state.all_reduce_sum(counts)
    totals = StepTotals(
        sequences=float(counts[0]),
        tokens=float(counts[1]) if masked else None,
        micro_batches=len(batches) * state.world_size,
    )
    for batch in batches:
        batch["step_totals"] = totals
    return totals


def _check_rewards(terms: dict[str, Any], group_size: Any) -> int:
    """The number of rollouts ``B``, after checking that every reward term is a ``(B,)`` tensor and ``B`` is whole
    groups: a ``(B, 1)`` term would otherwise broadcast against a ``(B,)`` one into a ``(B, B)`` reward."""
    rows = None
    for name, term in terms.items():
        if not torch.is_tensor(term) or term.dim() != 1 or (rows is not None and term.shape[0] != rows):
            shape = tuple(term.shape) if torch.is_tensor(term) else type(term).__name__
            want = "(B,)" if rows is None else f"({rows},)"
            raise BadInput(f"reward term {name!r} is {shape}; hookmix_rewards gives one value per rollout, {want}")
        rows = term.shape[0]
    if group_size is not None and (
        isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1 or rows % group_size
    ):
        raise BadInput(
            f"rollouts['group_size'] = {group_size!r} must be a whole number >= 1 that divides the {rows} rollouts "
            f"(groups are consecutive blocks of group_size rows); fix the rollout plugin"
        )
    return rows
