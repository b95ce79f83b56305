"""Soft token and rollout checks (spec §12, items 1-6)."""

import math
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from plugins.countdown import task as cd  # noqa: E402
from plugins.policies.policy import TinyPolicy, TinyPolicyConfig  # noqa: E402
from plugins.soft_grpo.record import mixture_embeds  # noqa: E402
from plugins.soft_grpo.sampling import (  # noqa: E402
    SamplingConfig,
    filter_probs,
    generate_rollouts,
    soft_token_step,
)

TOK = cd.CharTokenizer()
V = TOK.vocab_size


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _random_logits(B=64, seed=0, scale=2.0):
    g = _gen(seed)
    x = torch.randn(B, V, generator=g) * scale
    x[:, 0] = -5.0  # pad is also suppressed by the sampler
    return x


def _embedder(seed=0):
    torch.manual_seed(seed)
    return TinyPolicy(TinyPolicyConfig(vocab_size=V, d_model=16, n_layers=1, n_heads=2, max_len=64))


def test_tau_to_zero_without_noise_gives_argmax_embedding():
    logits = _random_logits()
    cfg = SamplingConfig(tau=1e-3, noise_factor=0.0, top_k=5, top_p=1.0)
    st = soft_token_step(logits, cfg, _gen(1))
    ids, pbar, _ = filter_probs(logits, 1.0, 5, 1.0, suppress_ids=(0,))
    assert torch.equal(st.token, ids[:, 0])  # argmax of p̄
    assert torch.allclose(st.weights[:, 0], torch.ones(64), atol=1e-6)
    pol = _embedder()
    e = mixture_embeds(pol, st.ids, st.weights)
    assert (e - pol.embed(ids[:, 0])).abs().max() < 1e-4


def test_tau_one_without_noise_gives_pbar():
    logits = _random_logits(seed=1)
    st = soft_token_step(logits, SamplingConfig(tau=1.0, noise_factor=0.0, top_k=5, top_p=0.95), _gen(1))
    assert torch.allclose(st.weights, st.pbar, atol=1e-5, rtol=0)


def test_tau_to_infinity_gives_uniform_over_kept_slots():
    logits = _random_logits(seed=2)
    st = soft_token_step(logits, SamplingConfig(tau=1e6, top_k=5, top_p=0.9), _gen(2))
    n = st.keep.sum(-1, keepdim=True).float()
    expected = torch.where(st.keep, 1.0 / n, torch.zeros_like(st.weights))
    assert torch.allclose(st.weights, expected, atol=1e-5, rtol=0)
    assert (n < 5).any()  # top-p really dropped slots in this batch


def _five_way_logits(N):
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])
    x = torch.full((N, V), -30.0)
    x[:, 5:10] = p.log()
    return p, x


def test_gumbel_max_law_without_clamp_matches_pbar():
    N = 100_000
    p, x = _five_way_logits(N)
    st = soft_token_step(x, SamplingConfig(top_k=5, top_p=1.0, gumbel_clamp=None), _gen(3))
    counts = torch.bincount(st.token - 5, minlength=5).double()
    expected = N * (p.double() + 1e-6) / (1 + 5e-6)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 18.47  # chi-square, 4 d.o.f., p = 0.001


def test_gumbel_clamp_shifts_argmax_toward_top_token():
    N = 100_000
    _, x = _five_way_logits(N)
    st = soft_token_step(x, SamplingConfig(top_k=5, top_p=1.0, gumbel_clamp=(-1.5, 3.0)), _gen(4))
    f_top = float((st.token == 5).double().mean())
    assert abs(f_top - 0.517) < 0.006  # 0.5 without clamp; spec §4: ≈0.517
    assert float(st.noise.min()) >= -1.5 and float(st.noise.max()) <= 3.0


@pytest.mark.parametrize("top_k,top_p,min_p", [(5, 0.95, 0.0), (5, 0.6, 0.0), (3, 1.0, 0.0), (8, 0.9, 0.05)])
def test_filtering_keeps_at_most_k_and_renormalises(top_k, top_p, min_p):
    logits = _random_logits(B=256, seed=5)
    ids, pbar, keep = filter_probs(logits, 1.0, top_k, top_p, min_p, suppress_ids=(0,))
    assert ids.shape == (256, top_k)
    assert (pbar >= 0).all() and (keep.sum(-1) <= top_k).all() and keep[:, 0].all()
    assert torch.allclose(pbar.sum(-1), torch.ones(256), atol=1e-6)
    assert (pbar[~keep] == 0).all()
    assert not (ids[keep] == 0).any()  # pad is never a candidate
    # kept slots form a prefix of the sorted list, and the prefix is the shortest reaching top_p
    assert (keep[:, 1:] <= keep[:, :-1]).all()
    full = torch.softmax(logits, -1)
    p_k = full.gather(-1, ids)
    p_k = p_k / p_k.sum(-1, keepdim=True)
    if top_p < 1 and min_p == 0:
        mass = (p_k * keep).sum(-1)
        n = keep.sum(-1)
        assert ((mass >= top_p - 1e-6) | (n == top_k)).all()
        before_last = mass - p_k.gather(-1, (n - 1).unsqueeze(-1)).squeeze(-1)
        assert (before_last < top_p + 1e-6).all()
    # after noise: dropped slots have weight exactly 0 and hold the pad id
    st = soft_token_step(logits, SamplingConfig(top_k=top_k, top_p=top_p, min_p=min_p), _gen(6))
    assert (st.weights[~st.keep] == 0).all() and (st.ids[~st.keep] == 0).all()
    assert torch.allclose(st.weights.sum(-1), torch.ones(256), atol=1e-6)
    assert (st.gumbel_logits[:, :-1] >= st.gumbel_logits[:, 1:])[st.keep[:, 1:]].all()  # sorted by g′


class ScriptedPolicy:
    """A SoftPolicy whose next-token logits are fixed: probability ``probs`` over given token ids."""

    def __init__(self, probs: dict[int, float], seed=0):
        torch.manual_seed(seed)
        self.emb = torch.nn.Embedding(V, 8)
        self.logits = torch.full((V,), -40.0)
        for i, p in probs.items():
            self.logits[i] = math.log(p)

    embedding_matrix = property(lambda self: self.emb.weight)
    vocab_size = V
    max_positions = None

    def embed(self, ids):
        return self.emb(ids)

    def new_cache(self, batch_size=0):
        return None

    def forward_embeds(self, inputs_embeds, attention_mask=None, position_ids=None, kv_cache=None):
        B, T, _ = inputs_embeds.shape
        return self.logits.expand(B, T, V).clone()


def _prompts(n):
    return [TOK.encode(cd.prompt_text(p)) for p in cd.generate_problems(n, seed=0)]


def _check_structure(r, cfg):
    P = r.prompt_length
    for b in range(r.batch_size):
        resp = r.response_mask[b].nonzero().flatten()
        assert resp.min() == P  # generation starts right after the prompt
        soft = r.is_soft[b, P:].tolist()
        toks = r.input_ids[b, P:].tolist()
        n_soft = sum(soft)
        assert soft[:n_soft] == [True] * n_soft and not any(soft[n_soft:])  # one switch only
        assert n_soft == int(r.think_lengths[b])
        # soft positions never carry </think> as their Gumbel-max id; the next token is </think>
        assert TOK.think_end_id not in toks[:n_soft]
        assert toks[n_soft] == TOK.think_end_id
        assert not r.is_soft[b, P + n_soft]
        assert r.topk_ids[b, P + n_soft, 1:].eq(0).all() and r.topk_gumbel[b, P + n_soft].eq(0).all()
        if r.forced_mask[b].any():
            assert n_soft == cfg.think_cap and r.forced_mask[b].nonzero().flatten().tolist() == [P + n_soft]
        # after </think>: discrete (tok, 0, ..., 0) positions until <eos> or the answer cap
        after = slice(P + n_soft + 1, None)
        assert r.topk_ids[b, after, 1:].eq(0).all() and not r.slot_mask[b, after, 1:].any()
        assert int(r.answer_lengths[b]) == int(r.response_mask[b, after].sum())
        if r.finished[b]:
            last = int(resp.max())
            assert int(r.input_ids[b, last]) == TOK.eos_id
        # soft positions: slot 0 id is the Gumbel-max id; top-1 weight recorded
        for t in range(P, P + n_soft):
            assert r.topk_ids[b, t, 0] == r.input_ids[b, t]
            assert 0 < float(r.top1_weight[b, t]) <= 1


def test_thinking_ends_at_first_gumbel_max_think_end():
    pol = ScriptedPolicy({5: 0.45, 6: 0.25, TOK.think_end_id: 0.2, TOK.eos_id: 0.1})
    cfg = SamplingConfig(think_cap=12, answer_cap=6)
    r = generate_rollouts(
        pol, _prompts(32), cfg, think_end_id=TOK.think_end_id, eos_id=TOK.eos_id, generator=_gen(7), decode=TOK.decode
    )
    _check_structure(r, cfg)
    assert (r.think_lengths < cfg.think_cap).any()  # some rows ended by Gumbel-max </think>
    assert r.finished.any() and r.is_soft.any()
    assert r.answer_text is not None and len(r.answer_text) == 32


def test_think_cap_forces_think_end():
    pol = ScriptedPolicy({5: 0.5, 6: 0.3, 7: 0.2})  # </think> has ~0 probability
    cfg = SamplingConfig(think_cap=5, answer_cap=3)
    r = generate_rollouts(pol, _prompts(6), cfg, think_end_id=TOK.think_end_id, eos_id=TOK.eos_id, generator=_gen(8))
    _check_structure(r, cfg)
    assert (r.think_lengths == 5).all() and (r.forced_mask.sum(-1) == 1).all()
    assert not (r.loss_mask & r.forced_mask).any()
    assert not r.finished.any() and (r.answer_lengths == 3).all()


def test_discrete_mode_and_determinism():
    tok_pol = _embedder(3)
    cfg = SamplingConfig(mode="discrete", think_cap=6, answer_cap=5)
    kw = dict(think_end_id=TOK.think_end_id, eos_id=TOK.eos_id)
    r = generate_rollouts(tok_pol, _prompts(8), cfg, generator=_gen(9), **kw)
    assert not r.is_soft.any() and r.num_slots == 1
    assert (r.input_ids[r.response_mask] != 0).all()  # pad never sampled
    r2 = generate_rollouts(tok_pol, _prompts(8), cfg, generator=_gen(9), **kw)
    assert torch.equal(r.input_ids, r2.input_ids)
    s1 = generate_rollouts(tok_pol, _prompts(8), SamplingConfig(think_cap=6, answer_cap=5), generator=_gen(9), **kw)
    s2 = generate_rollouts(tok_pol, _prompts(8), SamplingConfig(think_cap=6, answer_cap=5), generator=_gen(9), **kw)
    assert torch.equal(s1.topk_gumbel, s2.topk_gumbel) and s1.is_soft.any()
    sub = s1.select([1, 3])
    assert torch.equal(sub.topk_ids, s1.topk_ids[[1, 3]]) and sub.answer_ids == [s1.answer_ids[1], s1.answer_ids[3]]


def test_context_overflow_is_an_error():
    pol = _embedder()
    with pytest.raises(ValueError, match="context"):
        generate_rollouts(
            pol,
            _prompts(2),
            SamplingConfig(think_cap=40, answer_cap=20),
            think_end_id=TOK.think_end_id,
            eos_id=TOK.eos_id,
        )
