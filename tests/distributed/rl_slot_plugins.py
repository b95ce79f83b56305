"""Test plugins for the GRPO normaliser tests (tests/distributed/test_rl_normalisers.py).

``slot_grpo`` / ``slot_soft_grpo`` are the shipped ``grpo`` / ``soft_grpo`` whose rollouts depend only on the step
and the *slot* ``k = rank * grad_accum + micro``: the slot's prompts are fixed problems drawn from ``k`` and the
rollout noise is reseeded from ``(step, k)``. So a 2-rank run (slot = rank) and a 1-rank run with 2 accumulation
steps (slot = micro-batch) train every step on the same global batch of rollouts, which is what "2 ranks equal
1 rank" needs (the shipped plugins draw their noise per rank by design: docs/distributed.md). Everything after
the sampling (rewards, advantages, likelihoods, the loss and its normalisers) is the shipped code.
"""

from __future__ import annotations

import torch

from engine import Plugin, hookimpl
from plugins.countdown import task as cd
from plugins.countdown.data_plugin import problem_tensors
from plugins.policies.policy import left_pad
from plugins.soft_grpo.rl_plugins import GRPO, SoftGRPO


class _Slots:
    @hookimpl
    def hookmix_generate_rollouts(self, model, batch, state):
        k = state.rank * state.run.grad_accum + state.micro
        n = batch["prompt_ids"].shape[0]  # this slot's number of prompts
        problems = cd.generate_problems(n, 7919 * (k + 1), "train", state.data.task)
        tok = state.data.tokenizer
        ids, mask = left_pad([tok.encode(cd.prompt_text(p)) for p in problems], tok.pad_id)
        self.generator.manual_seed(1_000 * state.step + k)
        fixed = {"prompt_ids": ids, "prompt_mask": mask, **problem_tensors(problems)}
        return super().hookmix_generate_rollouts(model, fixed, state)


class SlotGRPO(_Slots, GRPO):
    name = "slot_grpo"


class SlotSoftGRPO(_Slots, SoftGRPO):
    name = "slot_soft_grpo"


class ThinkReward(Plugin):
    """Test reward: the think length, so every group has a spread and the policy gradient is not zero."""

    name = "think_reward"

    @hookimpl
    def hookmix_rewards(self, rollouts, state):
        return {"think": 0.1 * rollouts["rollout"].think_lengths.float()}


class LocalSlotGRPO(SlotGRPO):
    """Control: ``slot_grpo`` normalising by its own micro-batch's counts (the step totals dropped), i.e. the
    per-micro-batch division of TRL issues #2995 / #3256 / #6024. The tests show it differs."""

    name = "local_slot_grpo"

    @hookimpl
    def hookmix_loss_terms(self, batch, outputs, state):
        return super().hookmix_loss_terms({k: v for k, v in batch.items() if k != "step_totals"}, outputs, state)


class EarlyEnd(Plugin):
    """Test init: raises the logits of ``</think>`` and ``<eos>`` (through one coordinate of the final norm's bias),
    so a random policy's rollouts end at different lengths. With every rollout at the caps all micro-batches
    would hold equal token counts and every normaliser would agree: the comparisons would prove nothing."""

    name = "early_end"

    @hookimpl
    def hookmix_setup_model(self, model, state):
        tok = state.data.tokenizer
        with torch.no_grad():
            model.ln_f.bias[0] = 1.0
            model.lm_head.weight[tok.think_end_id, 0] = 2.0
            model.lm_head.weight[tok.eos_id, 0] = 2.5
