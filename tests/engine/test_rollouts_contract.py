"""The rollouts contract (engine.rollouts.Rollouts; docs/authoring.md, "The rollouts contract"): the shipped
rollout providers produce what it documents, and the engine refuses reward terms and advantages of the wrong
shape instead of broadcasting them."""

from __future__ import annotations

import typing

import pytest
import torch

from engine import BadInput, Plugin, hookimpl
from engine.rollouts import ENGINE_KEYS, Rollouts, roll_out
from engine.testing import TOY, train

TINY = {"d_model": 32, "n_layers": 1, "n_heads": 2}
G, PROMPTS = 4, 4


class Spy(Plugin):
    """Records the rollouts batch as the reward hook sees it and as the loss hook sees it."""

    name = "spy"
    seen: dict = {}

    @hookimpl
    def hookmix_rewards(self, rollouts, state):
        Spy.seen["rewards"] = dict(rollouts)

    @hookimpl
    def hookmix_loss_terms(self, batch, outputs, state):
        Spy.seen["loss"] = dict(batch)


def run_rl(arm: str, *extra: type[Plugin], **config) -> dict:
    Spy.seen = {}
    train(
        ["countdown", "tiny_policy", "countdown_reward", "format_reward", arm, "adamw", Spy, *extra],
        {
            "countdown": {"mode": "rl", "batch_size": PROMPTS, "val_problems": 0},
            "tiny_policy": TINY,
            arm: {"group_size": G, "think_cap": 8, "answer_cap": 8},
            **config,
        },
        steps=1,
        threads=1,
    )
    return Spy.seen


@pytest.mark.parametrize("arm", ["grpo", "soft_grpo"])
def test_the_shipped_rollouts_match_the_documented_contract(arm):
    seen = run_rl(arm)
    documented = typing.get_type_hints(Rollouts)
    rollouts, batch = seen["rewards"], seen["loss"]
    assert set(batch) <= set(documented), f"undocumented keys: {sorted(set(batch) - set(documented))}"
    assert set(batch) == set(rollouts) | {"reward", "advantages", "step_totals"}  # the engine adds exactly these
    B = PROMPTS * G
    # one micro-batch, one rank: the step's totals are this batch's own counts
    mask = batch["loss_mask"]
    assert mask.dtype == torch.bool and tuple(mask.shape) == tuple(batch["rollout"].input_ids.shape)
    assert batch["step_totals"] == {"sequences": float(B), "tokens": float(mask.sum()), "micro_batches": 1}
    assert batch["group_size"] == G and isinstance(batch["group_size"], int)
    for key in ("reward", "advantages"):
        assert batch[key].dtype.is_floating_point and tuple(batch[key].shape) == (B,), key
    record = batch["rollout"]
    assert record.batch_size == B and len(record.answer_text) == B
    assert record.finished.dtype == torch.bool and tuple(record.finished.shape) == (B,)
    assert record.input_ids.dtype == torch.int64 and record.response_mask.dtype == torch.bool
    assert batch["numbers"].dtype == batch["targets"].dtype == torch.int64
    assert batch["numbers"].shape[0] == B and tuple(batch["targets"].shape) == (B,)
    assert batch["old_logp"] is None  # on-policy (minibatches = 1): the loss uses θ's own log-likelihood, detached
    ref = batch["ref_logp"]
    assert ref.dtype == torch.float32 and tuple(ref.shape) == tuple(record.input_ids.shape)
    # groups are consecutive blocks of G rows: one problem per block, different problems across blocks
    numbers, targets = batch["numbers"].view(PROMPTS, G, -1), batch["targets"].view(PROMPTS, G)
    assert (numbers == numbers[:, :1]).all() and (targets == targets[:, :1]).all()
    assert len({tuple(n[0].tolist()) + (int(t[0]),) for n, t in zip(numbers, targets)}) == PROMPTS
    assert set(ENGINE_KEYS) <= set(documented)


class WideReward(Plugin):
    """A reward term of shape (B, 1): it would broadcast against the (B,) terms into a (B, B) reward."""

    name = "wide_reward"

    @hookimpl
    def hookmix_rewards(self, rollouts, state):
        return {"wide": torch.zeros(rollouts["targets"].shape[0], 1)}


def test_a_reward_term_of_another_shape_is_refused():
    with pytest.raises(BadInput, match=r"reward term 'wide' is \(16, 1\); hookmix_rewards gives one value per"):
        run_rl("grpo", WideReward)


class StubManager:
    """The three RL hooks of a run, as engine.rollouts.roll_out calls them (no rollout plugin needed)."""

    def __init__(self, group_size, advantages):
        self.group_size, self.advantages_of = group_size, advantages

    def generate_rollouts(self, model, batch, state):
        return {"group_size": self.group_size}

    def rewards(self, rollouts, state):
        return {"r": torch.arange(8.0)}

    def advantages(self, rollouts, rewards, state):
        return self.advantages_of(rewards)


@pytest.mark.parametrize(
    "group_size, advantages, error",
    [
        (4, lambda r: r.view(-1, 4).mean(1), r"hookmix_advantages returned \(2,\); .* shape \(8,\)"),
        (3, lambda r: r, r"rollouts\['group_size'\] = 3 must be a whole number >= 1 that divides the 8 rollouts"),
        (2.0, lambda r: r, r"rollouts\['group_size'\] = 2.0 must be"),
    ],
)
def test_advantages_and_group_sizes_that_break_the_contract_are_refused(group_size, advantages, error):
    state = train(TOY, steps=1).state
    with pytest.raises(BadInput, match=error):
        roll_out(torch.nn.Linear(1, 1), {}, state, StubManager(group_size, advantages))


def test_a_contract_keeping_batch_passes_with_reward_and_advantages_added():
    state = train(TOY, steps=1).state
    out = roll_out(torch.nn.Linear(1, 1), {}, state, StubManager(4, lambda r: r - r.mean()))
    assert torch.equal(out["reward"], torch.arange(8.0)) and torch.equal(out["advantages"], torch.arange(8.0) - 3.5)
