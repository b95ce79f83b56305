"""GRPO objective checks (spec §12, items 15-19) and an end-to-end loss step."""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from plugins.countdown import task as cd  # noqa: E402
from plugins.policies.policy import TinyPolicy, TinyPolicyConfig  # noqa: E402
from plugins.soft_grpo.likelihood import sequence_logprobs  # noqa: E402
from plugins.soft_grpo.objective import (  # noqa: E402
    ObjectiveConfig,
    aggregate,
    group_advantages,
    k3_kl,
    policy_loss,
    ppo_clip_token_losses,
    rollout_loss,
)
from plugins.soft_grpo.sampling import SamplingConfig, generate_rollouts  # noqa: E402


def test_advantages_zero_mean_unit_std_and_equal_groups_zero():
    r = torch.tensor([1.0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0.3, 0.7, 0.1, 0.9])
    a = group_advantages(r, group_size=4)
    groups = a.view(4, 4)
    assert groups.mean(1).abs().max() < 1e-6
    assert torch.equal(groups[1], torch.zeros(4)) and torch.equal(groups[2], torch.zeros(4))
    for i in (0, 3):
        assert groups[i].std(unbiased=True).item() == pytest.approx(1.0, abs=1e-5)
    # group ids instead of blocks; singleton group -> Â = R / (1 + eps)
    a2 = group_advantages(torch.tensor([1.0, 0.0, 0.7]), group_ids=torch.tensor([5, 5, 9]))
    assert a2[2].item() == pytest.approx(0.7, abs=1e-5) and a2[0] == -a2[1]
    # exactly zero even when float rounding would leave a residue
    a3 = group_advantages(torch.full((3,), 0.1), group_size=3)
    assert torch.equal(a3, torch.zeros(3))
    # Dr. GRPO: no std scaling
    assert torch.allclose(
        group_advantages(torch.tensor([1.0, 0, 0, 0]), group_size=4, scale=False),
        torch.tensor([0.75, -0.25, -0.25, -0.25]),
    )


def test_equal_reward_groups_have_zero_policy_gradient():
    torch.manual_seed(0)
    logp = (torch.randn(8, 6) * 0.1 - 1).requires_grad_(True)
    old = logp.detach() + 0.05 * torch.randn(8, 6)
    adv = group_advantages(torch.tensor([1.0, 1, 1, 1, 1, 0, 0, 1]), group_size=4)
    mask = torch.ones(8, 6, dtype=torch.bool)
    loss, _ = policy_loss(logp, old, adv, mask, ObjectiveConfig(kl_coef=0.0))
    loss.backward()
    assert torch.equal(logp.grad[:4], torch.zeros(4, 6))
    assert logp.grad[4:].abs().sum() > 0
    # only the KL term can move an equal-reward group
    logp.grad = None
    loss, _ = policy_loss(logp, old, adv, mask, ObjectiveConfig(kl_coef=0.1), ref_logp=old)
    loss.backward()
    assert logp.grad[:4].abs().sum() > 0


@pytest.mark.parametrize(
    "ratio,adv,zero_grad",
    [(1.5, 1.0, True), (0.5, 1.0, False), (0.5, -1.0, True), (1.5, -1.0, False), (1.1, 1.0, False), (5.0, -1.0, True)],
)
def test_ppo_clip_gradients(ratio, adv, zero_grad):
    logp = torch.tensor([float(torch.log(torch.tensor(ratio)))], requires_grad=True)
    loss, _, _, _ = ppo_clip_token_losses(logp, torch.zeros(1), torch.tensor([adv]), 0.2, None, 3.0)
    loss.sum().backward()
    assert (logp.grad.abs().item() == 0.0) == zero_grad


def test_dual_clip_caps_negative_advantage_loss():
    ratios = torch.tensor([0.5, 1.0, 2.0, 3.0, 10.0, 100.0])
    adv = torch.full((6,), -2.0)
    loss, _, clipped, dual = ppo_clip_token_losses(ratios.log(), torch.zeros(6), adv, 0.2, None, 3.0)
    assert (loss <= 3.0 * 2.0 + 1e-6).all()
    assert torch.allclose(loss[-2:], torch.tensor([6.0, 6.0]))
    assert dual.tolist() == [False, False, False, False, True, True]
    assert clipped[0] and not clipped[1]
    no_dual, *_ = ppo_clip_token_losses(ratios.log(), torch.zeros(6), adv, 0.2, None, None)
    assert no_dual[-1] == pytest.approx(200.0)
    _, stats = policy_loss(ratios.log()[None], torch.zeros(1, 6), adv[None], torch.ones(1, 6, dtype=torch.bool))
    assert stats["dual_clip_frac"] == pytest.approx(2 / 6) and stats["clip_frac"] == pytest.approx(1 / 6)


def test_k3_kl_nonnegative_and_zero_at_reference():
    torch.manual_seed(1)
    a, b = torch.randn(1000) * 3, torch.randn(1000) * 3
    assert (k3_kl(a, b) >= 0).all()
    assert torch.equal(k3_kl(a, a), torch.zeros(1000))
    assert (k3_kl(torch.zeros(1), torch.tensor([50.0])) <= 10.0).all()


def test_token_mean_vs_seq_mean():
    vals = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    tm = aggregate(vals, mask, "token-mean")
    sm = aggregate(vals, mask, "seq-mean")
    assert tm.item() == pytest.approx(8 / 5) and sm.item() == pytest.approx(2.5)
    (g_tm,) = torch.autograd.grad(tm, vals)
    (g_sm,) = torch.autograd.grad(sm, vals)
    assert not torch.allclose(g_tm, g_sm)
    assert aggregate(vals, mask, "token-mean", num_tokens=10).item() == pytest.approx(0.8)
    # the configured mode is the one used by the loss
    logp = torch.zeros(2, 4, requires_grad=True)
    adv = torch.tensor([1.0, -1.0])
    l_tm, _ = policy_loss(logp, torch.zeros(2, 4), adv, mask, ObjectiveConfig(agg="token-mean"))
    l_sm, _ = policy_loss(logp, torch.zeros(2, 4), adv, mask, ObjectiveConfig(agg="seq-mean"))
    assert l_tm.item() == pytest.approx((-4 + 1) / 5) and l_sm.item() == pytest.approx(0.0)
    with pytest.raises(ValueError):
        ObjectiveConfig(agg="sum")


def test_one_soft_grpo_step_end_to_end():
    tok = cd.CharTokenizer()
    torch.manual_seed(0)
    pol = TinyPolicy(TinyPolicyConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4, max_len=64))
    ref = TinyPolicy(pol.cfg)
    ref.load_state_dict(pol.state_dict())
    problems = cd.generate_problems(2, seed=0)
    G = 4
    prompts = [tok.encode(cd.prompt_text(p)) for p in problems for _ in range(G)]
    r = generate_rollouts(
        pol,
        prompts,
        SamplingConfig(think_cap=8, answer_cap=8),
        think_end_id=tok.think_end_id,
        eos_id=tok.eos_id,
        generator=torch.Generator().manual_seed(0),
        decode=tok.decode,
    )
    rewards = torch.tensor(
        [cd.answer_reward(problems[i // G], r.answer_text[i], bool(r.finished[i])) for i in range(len(prompts))]
    )
    rewards[0] = 1.0  # a random policy never solves; inject a success so the group has signal
    adv = group_advantages(rewards, group_size=G)
    with torch.no_grad():
        old = sequence_logprobs(pol, r)
        ref_lp = sequence_logprobs(ref, r)
    loss, stats = rollout_loss(pol, r, adv, old, ref_lp)
    assert stats["ratio_mean"] == 1.0 and stats["clip_frac"] == 0.0 and stats["kl"] == 0.0
    loss.backward()
    torch.nn.utils.clip_grad_norm_(pol.parameters(), 1.0)
    with torch.no_grad():  # plain SGD step (torch.optim's first step is slow to import)
        for prm in pol.parameters():
            if prm.grad is not None:
                prm -= 1e-2 * prm.grad
    loss2, stats2 = rollout_loss(pol, r, adv, old, ref_lp)
    assert torch.isfinite(loss2) and stats2["kl"] > 0 and stats2["ratio_mean"] != 1.0
