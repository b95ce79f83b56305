"""Rebuild, likelihood and ratio checks (spec §12, items 7-14)."""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from plugins.countdown import task as cd  # noqa: E402
from plugins.policies.policy import TinyPolicy, TinyPolicyConfig  # noqa: E402
from plugins.soft_grpo.likelihood import (  # noqa: E402
    LikelihoodConfig,
    gumbel_log_density,
    position_loglik,
    rebuild_inputs_embeds,
    recovered_noise,
    sequence_logprobs,
    soft_loglik,
    teacher_forced_logits,
)
from plugins.soft_grpo.objective import ObjectiveConfig, policy_loss  # noqa: E402
from plugins.soft_grpo.sampling import SamplingConfig, generate_rollouts  # noqa: E402

TOK = cd.CharTokenizer()
V = TOK.vocab_size
PHI_MIN = -3.0 - torch.exp(torch.tensor(-3.0)).item()  # φ(3) = -3.0498


def _policy(seed=0, sharpen=30.0):
    torch.manual_seed(seed)
    pol = TinyPolicy(TinyPolicyConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, max_len=64))
    with torch.no_grad():  # less uniform next-token distributions than a fresh init
        pol.lm_head.weight.mul_(sharpen)
    return pol


@pytest.fixture(scope="module")
def soft_rollout():
    pol = _policy()
    prompts = [TOK.encode(cd.prompt_text(p)) for p in cd.generate_problems(6, seed=1)]
    r = generate_rollouts(
        pol,
        prompts,
        SamplingConfig(think_cap=10, answer_cap=8),
        think_end_id=TOK.think_end_id,
        eos_id=TOK.eos_id,
        generator=torch.Generator().manual_seed(0),
        keep_debug=True,
    )
    assert r.is_soft.sum() >= 10
    return pol, r


def test_round_trip_embeddings_bitwise_and_logits(soft_rollout):
    pol, r = soft_rollout
    emb = rebuild_inputs_embeds(pol, r)
    assert emb.dtype == torch.float32 and torch.equal(emb, r.inputs_embeds)
    lg = teacher_forced_logits(pol, r)
    assert (lg[:, :-1] - r.gen_logits[:, :-1]).abs().max() < 1e-4
    # rollout-time log-likelihoods agree with the teacher-forced recomputation
    with torch.no_grad():
        lp = sequence_logprobs(pol, r)
    assert (lp - r.rollout_logprobs)[r.loss_mask].abs().max() < 1e-4


def test_recovered_noise_equals_sampled_noise_at_theta_old(soft_rollout):
    pol, r = soft_rollout
    with torch.no_grad():
        lg = teacher_forced_logits(pol, r)[:, :-1]
    soft = r.is_soft[:, 1:]
    z, _ = recovered_noise(
        lg[soft],
        r.topk_ids[:, 1:][soft],
        r.topk_gumbel[:, 1:][soft],
        r.slot_mask[:, 1:][soft],
        r.temperature,
        r.noise_factor,
    )
    keep = r.slot_mask[:, 1:][soft]
    assert (z - r.noise[:, 1:][soft])[keep].abs().max() < 1e-5


def test_ratio_exactly_one_on_first_minibatch(soft_rollout):
    pol, r = soft_rollout
    with torch.no_grad():
        old = sequence_logprobs(pol, r)
    new = sequence_logprobs(pol, r)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0])
    loss, stats = policy_loss(new, old, adv, r.loss_mask, ObjectiveConfig(kl_coef=0.0))
    assert torch.equal(new.detach(), old)
    assert stats["ratio_mean"] == 1.0 and stats["ratio_max"] == 1.0 and stats["ratio_min"] == 1.0
    assert stats["clip_frac"] == 0.0 and stats["dual_clip_frac"] == 0.0
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in pol.parameters())


def test_loglik_range_and_masks(soft_rollout):
    pol, r = soft_rollout
    with torch.no_grad():
        lp = sequence_logprobs(pol, r)
    assert torch.isfinite(lp).all()
    soft = lp[r.is_soft]
    assert (soft >= PHI_MIN - 1e-6).all() and (soft <= -1.0 + 1e-6).all()
    # discrete response positions (</think>, answer) use the categorical log-prob and are in the loss
    with torch.no_grad():
        lg = teacher_forced_logits(pol, r).float()
    disc = r.loss_mask & ~r.is_soft
    disc[:, 0] = False
    cat = torch.log_softmax(lg[:, :-1], -1).gather(-1, r.input_ids[:, 1:, None]).squeeze(-1)
    assert disc.any() and torch.allclose(lp[:, 1:][disc[:, 1:]], cat[disc[:, 1:]], atol=1e-6)
    # prompt and padding positions are excluded
    assert (lp[:, : r.prompt_length] == 0).all() and (lp[~r.loss_mask] == 0).all()
    assert not r.loss_mask[:, : r.prompt_length].any()


def test_loglik_finite_in_range_under_underflow_and_extremes():
    g = torch.Generator().manual_seed(0)
    N, K = 2000, 5
    logits = torch.randn(N, V, generator=g) * 4
    logits[: N // 2, :12] = -1e4  # q underflows for some stored ids
    ids = torch.randint(1, V, (N, K), generator=g)
    gp = torch.randn(N, K, generator=g) * 20  # far outside the noise range
    mask = torch.rand(N, K, generator=g) < 0.7
    mask[:, 0] = True
    ll = soft_loglik(logits, ids, gp, mask)
    assert torch.isfinite(ll).all() and (ll >= PHI_MIN - 1e-6).all() and (ll <= -1 + 1e-6).all()
    ll_sum = soft_loglik(logits, ids, gp / 20, mask, cfg=LikelihoodConfig(soft_density="sum", clamp=None))
    assert torch.isfinite(ll_sum).all()
    # the mean-mask is never empty for k <= 20 kept slots
    many = torch.randint(1, V, (N, 20), generator=g)
    soft_loglik(logits, many, torch.zeros(N, 20), torch.ones(N, 20, dtype=torch.bool))


def test_no_silent_fallback():
    logits = torch.randn(4, V)
    ids = torch.randint(1, V, (4, 3))
    gp = torch.zeros(4, 3)
    mask = torch.ones(4, 3, dtype=torch.bool)
    tokens = ids[:, 0]
    is_soft = torch.tensor([True, False, True, False])
    out = position_loglik(logits, tokens, ids, gp, mask, is_soft)
    cat = torch.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1)
    assert torch.equal(out[~is_soft], cat[~is_soft])
    assert torch.equal(out[is_soft], soft_loglik(logits, ids, gp, mask)[is_soft])
    with pytest.raises(ValueError):
        position_loglik(logits, tokens, ids, gp, mask, is_soft, noise_factor=0.0)
    with pytest.raises(ValueError):  # more than 20 near-uniform slots: the mean-mask can be empty
        big = torch.zeros(1, 40)
        soft_loglik(big, torch.arange(40)[None], torch.zeros(1, 40), torch.ones(1, 40, dtype=torch.bool))


def test_zero_mean_score_unclamped():
    N, K = 20_000, 5
    g = -torch.log(torch.empty(N, K).exponential_(generator=torch.Generator().manual_seed(1)))
    q = torch.tensor([0.4, 0.25, 0.15, 0.12, 0.08])
    lq = torch.log(q).expand(N, K).clone().requires_grad_(True)
    gp = lq.detach() + g  # the rollout's noisy logits
    z = gp - lq
    gumbel_log_density(z).sum().backward()
    assert torch.allclose(lq.grad, 1 - torch.exp(-g), atol=1e-5)  # ∂φ/∂log q_j = 1 − e^{−g_j}
    assert lq.grad.mean(0).abs().max() < 0.05  # E[1 − e^{−g}] = 0; SE ≈ 0.007
    # same through the package likelihood ("sum", unclamped), gradient w.r.t. the logits
    logits = torch.full((N, V), -30.0)
    logits[:, 1:6] = q.log()
    logits.requires_grad_(True)
    ids = torch.arange(1, 6).expand(N, K)
    ll = soft_loglik(
        logits,
        ids,
        torch.log(q + 1e-6) + g,
        torch.ones(N, K, dtype=torch.bool),
        cfg=LikelihoodConfig(soft_density="sum", clamp=None),
    )
    ll.sum().backward()
    assert logits.grad[:, 1:6].mean(0).abs().max() < 0.05


def test_sign_of_update_on_one_soft_token():
    q0 = torch.tensor([0.3, 0.25, 0.2, 0.15, 0.1])
    noise = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0])
    ids = torch.arange(5)[None]
    gp = (torch.log(q0 + 1e-6) + noise)[None]
    logits = torch.full((1, V), -30.0)
    logits[0, :5] = q0.log()
    logits.requires_grad_(True)
    mask = torch.ones(1, 5, dtype=torch.bool)
    adv = 1.0
    (-adv * soft_loglik(logits, ids, gp, mask)).sum().backward()
    with torch.no_grad():
        new = logits - 1e-3 * logits.grad
        d = torch.log_softmax(new[0, :5], -1) - torch.log_softmax(logits[0, :5], -1)
    assert torch.equal(torch.sign(d), torch.sign(noise))


def test_detached_mixture_gives_no_embedding_gradient(soft_rollout):
    _, r = soft_rollout
    pol = _policy()
    sequence_logprobs(pol, r).sum().backward()
    assert pol.tok_emb.weight.grad is None or (pol.tok_emb.weight.grad == 0).all()
    assert pol.lm_head.weight.grad.abs().sum() > 0
    pol.zero_grad(set_to_none=True)
    sequence_logprobs(pol, r, LikelihoodConfig(detach_inputs=False)).sum().backward()
    assert pol.tok_emb.weight.grad.abs().sum() > 0  # the variant lets gradients flow


def test_sum_mode_is_exact_noise_density_at_theta_old(soft_rollout):
    pol, r = soft_rollout
    with torch.no_grad():
        lp = sequence_logprobs(pol, r, LikelihoodConfig(soft_density="sum", clamp=None))
    g = torch.where(r.slot_mask, r.noise, torch.zeros_like(r.noise))
    exact = torch.where(r.slot_mask, -g - torch.exp(-g), torch.zeros_like(g)).sum(-1)
    assert (lp - exact)[r.is_soft].abs().max() < 1e-4
