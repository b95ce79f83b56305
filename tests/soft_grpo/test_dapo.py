"""DAPO's dynamic sampling and soft overlong punishment (plugins/soft_grpo/dapo.py) and their plugin options."""

from __future__ import annotations

import pytest
import torch

from engine import BadInput, Plugin, hookimpl
from engine.testing import assert_resumes_exactly, train
from plugins.soft_grpo.dapo import groups_to_keep, overlong_penalty

TINY = {"d_model": 32, "n_layers": 1, "n_heads": 2}
CAPS = {"group_size": 4, "think_cap": 8, "answer_cap": 8}
RL = ["countdown", "tiny_policy", "adamw"]


def paper_penalty(length: int, max_length: int, cache: int) -> float:
    """DAPO eq. (13), written from the paper: 0 / linear ramp / -1."""
    if length <= max_length - cache:
        return 0.0
    if length <= max_length:
        return ((max_length - cache) - length) / cache
    return -1.0


@pytest.mark.parametrize("max_length, cache", [(17, 4), (17, 17), (100, 1), (64, 20)])
def test_overlong_penalty_is_the_papers_piecewise_function(max_length, cache):
    lengths = torch.randint(0, max_length + 6, (200,), generator=torch.Generator().manual_seed(max_length + cache))
    got = overlong_penalty(lengths, max_length, cache, factor=0.5)
    want = torch.tensor([0.5 * paper_penalty(int(n), max_length, cache) for n in lengths], dtype=torch.float32)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-7)  # float64 then float32: one rounding
    assert float(overlong_penalty(torch.tensor([max_length]), max_length, cache)) == -1.0  # continuous at L_max


def test_overlong_penalty_refuses_a_cache_outside_the_budget():
    with pytest.raises(ValueError, match="overlong cache"):
        overlong_penalty(torch.tensor([3]), 10, 11)


def brute_keep(rewards: list[list[float]], n: int) -> list[int]:
    spread = [g for g, r in enumerate(rewards) if max(r) != min(r)]
    equal = [g for g, r in enumerate(rewards) if max(r) == min(r)]
    return sorted((spread + equal)[:n])


@pytest.mark.parametrize("seed", range(20))
def test_groups_to_keep_prefers_groups_with_a_reward_spread(seed):
    g = torch.Generator().manual_seed(seed)
    G, drawn, n = 4, 9, 3
    rewards = torch.randint(0, 2, (drawn, G), generator=g).float()
    rewards[torch.rand(drawn, generator=g) < 0.5] = 1.0  # about half the groups all equal
    rows, varied = groups_to_keep(rewards.flatten(), G, n)
    groups = brute_keep(rewards.tolist(), n)
    assert rows == [k * G + j for k in groups for j in range(G)]
    assert varied == min(n, sum(max(r) != min(r) for r in rewards.tolist()))


class EvenTargetReward(Plugin):
    """Test reward: the first rollout of each group scores 1 when the problem's target is even, so exactly the
    even-target groups have a reward spread, whatever the policy samples."""

    name = "even_target_reward"

    @hookimpl
    def hookmix_rewards(self, rollouts, state):
        G = rollouts["group_size"]
        rows = torch.arange(rollouts["targets"].shape[0])
        return {"even": ((rollouts["targets"] % 2 == 0) & (rows % G == 0)).float()}


class SpreadSpy(Plugin):
    name = "spread_spy"
    seen: list = []

    @hookimpl
    def hookmix_loss_terms(self, batch, outputs, state):
        groups = batch["reward"].view(-1, batch["group_size"])
        SpreadSpy.seen.append((groups.shape[0], int((groups.max(1).values != groups.min(1).values).sum())))


def rl_config(**grpo) -> dict:
    return {
        "countdown": {"mode": "rl", "batch_size": 4, "val_problems": 0},
        "tiny_policy": TINY,
        "grpo": {**CAPS, **grpo},
        "adamw": {"lr": 1e-3},
    }


def test_dynamic_sampling_fills_the_batch_with_groups_that_train():
    SpreadSpy.seen = []
    res = train([*RL, EvenTargetReward, "grpo", SpreadSpy], rl_config(dynamic_sampling=3), steps=3, log_interval=1)
    varied = [m["train/rl/dynamic_varied_frac"] for m in res.metrics if "train/rl/dynamic_varied_frac" in m]
    assert [n for n, _ in SpreadSpy.seen] == [4, 4, 4]  # the batch keeps its size: n prompts' groups
    assert varied == [s / 4 for _, s in SpreadSpy.seen]  # what it logs is what the loss sees
    SpreadSpy.seen = []
    train([*RL, EvenTargetReward, "grpo", SpreadSpy], rl_config(), steps=3, log_interval=1)
    plain = sum(s for _, s in SpreadSpy.seen) / 12
    # 12 groups drawn per step instead of 4: about half the targets are even, so nearly every kept group trains
    assert sum(varied) / 3 > plain and sum(varied) / 3 >= 0.75


def test_overlong_term_is_a_named_reward():
    res = train([*RL, EvenTargetReward, "grpo"], rl_config(overlong_cache=6), steps=2, log_interval=1)
    logged = [m for m in res.metrics if "train/reward/even" in m]
    assert logged and all(-1.0 <= m["train/reward/overlong"] <= 0.0 for m in logged)


def test_dapo_recipe_options_resume_bit_exactly():
    cfg = rl_config(dynamic_sampling=2, overlong_cache=6, loss_type="dapo", clip_eps_high=0.28, minibatches=2)
    assert_resumes_exactly([*RL, EvenTargetReward, "grpo"], config=cfg, steps=3, split=1, threads=1)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"dynamic_sampling": 1}, "dynamic_sampling=1 draws nothing more"),
        ({"overlong_cache": 40}, "exceeds the response budget 17"),
    ],
)
def test_bad_dapo_options_are_one_line_errors(options, message):
    with pytest.raises(BadInput, match=message):
        train([*RL, EvenTargetReward, "grpo"], rl_config(**options), steps=1)


def test_countdown_variants_writes_its_section_and_keeps_the_rest(tmp_path):
    from engine.cli.main import main
    from plugins.soft_grpo.variants import END, START

    doc = tmp_path / "countdown.md"
    doc.write_text("# Written by countdown-compare\n\nits table\n")
    shrink = ["plugins.tiny_policy.d_model=32", "plugins.tiny_policy.n_layers=1", "plugins.tiny_policy.n_heads=2"]
    rl = [*shrink, "run.steps=1", "plugins.countdown.batch_size=2"]
    rl += [f"plugins.{arm}.group_size=2" for arm in ("grpo", "soft_grpo")]
    args = ["countdown-variants", "--out", str(tmp_path / "runs"), "--seeds", "0", "--variants", "grpo,dapo"]
    args += ["--problems", "2", "--samples", "4", "--doc", str(doc)]
    args += [x for s in [*shrink, "run.steps=2", "plugins.countdown.batch_size=4"] for x in ("--sft-set", s)]
    args += [x for s in rl for x in ("--set", s)]
    assert main(args) == 0
    text = doc.read_text()
    assert text.startswith("# Written by countdown-compare\n\nits table\n") and text.count(START) == 1
    assert "| `dapo` | soft | 1 |" in text and "| `dapo` − `grpo` (discrete) | pass@4 |" in text
    assert main(args) == 0  # a second invocation reuses the runs and replaces the section, once
    again = doc.read_text()
    assert again.count(START) == again.count(END) == 1 and again == text
