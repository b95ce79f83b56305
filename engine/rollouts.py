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

    The shipped providers (``grpo``, ``soft_grpo``) add, for reward plugins of their task (countdown):

    - ``rollout``: the sampled rollouts, a ``plugins.soft_grpo.record.Rollout`` of ``B`` rows (``answer_text``
      list[str], ``finished`` bool ``(B,)``, ``input_ids`` int64 ``(B, L)``, ``response_mask`` bool ``(B, L)``,
      ``think_lengths`` / ``answer_lengths`` int64 ``(B,)``, ...);
    - ``numbers`` int64 ``(B, n)`` (the problem's numbers, 0-padded) and ``targets`` int64 ``(B,)``: equal within
      a group;
    - ``old_logp`` float32 ``(B, L)``: per-position log-likelihood under the sampling policy (teacher-forced);
      ``ref_logp``: the same under the frozen reference, or ``None`` (no KL term).
    """

    group_size: int
    reward: torch.Tensor
    advantages: torch.Tensor
    rollout: Any
    numbers: torch.Tensor
    targets: torch.Tensor
    old_logp: torch.Tensor
    ref_logp: torch.Tensor | None


#: The keys the engine reads or writes on every rollouts batch (the rest is the provider's).
ENGINE_KEYS = ("group_size", "reward", "advantages")


def roll_out(model: torch.nn.Module, batch: dict, state: State, manager: Manager) -> Rollouts:
    model.eval()
    with torch.no_grad(), state.autocast():
        rollouts = manager.generate_rollouts(model, batch, state)
    model.train()
    terms = manager.rewards(rollouts, state)
    if not terms:
        raise BadInput("a rollout plugin is enabled but no plugin returns rewards; add a reward plugin")
    rows = _check_rewards(terms, rollouts.get("group_size"))
    reward = sum(terms.values())
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
