"""plugins/gkd/sequences.py: the rollout record rebuilt from token lists is the sampler's own, and the left-aligned
LM batch gives the logits the sampler's left-padded, masked layout gives."""

from __future__ import annotations

import random

import torch

from plugins.countdown import task as cd
from plugins.gkd.sequences import discrete_record, from_rollout, gold_sequences, lm_batch
from plugins.policies.policy import TinyPolicy, TinyPolicyConfig
from plugins.soft_grpo.likelihood import teacher_forced_logits
from plugins.soft_grpo.sampling import SamplingConfig, generate_rollouts

TOK = cd.CharTokenizer()
PROBLEMS = [
    cd.Problem((3, 7, 12), 33),
    cd.Problem((1, 2, 3), 9),
    cd.Problem((15, 20, 4), 95),
    cd.Problem((5, 6, 9), 39),
]


def sample(policy, think_cap=6, answer_cap=5):
    prompts = [TOK.encode(cd.prompt_text(p)) for p in PROBLEMS for _ in range(3)]
    cfg = SamplingConfig(mode="discrete", think_cap=think_cap, answer_cap=answer_cap, suppress_ids=(TOK.pad_id,))
    gen = torch.Generator().manual_seed(0)
    return generate_rollouts(
        policy, prompts, cfg, think_end_id=TOK.think_end_id, eos_id=TOK.eos_id, generator=gen, decode=TOK.decode
    )


def policy(seed=0):
    torch.manual_seed(seed)
    return TinyPolicy(TinyPolicyConfig(vocab_size=TOK.vocab_size, d_model=32, n_layers=2, n_heads=2, max_len=64)).eval()


def test_the_record_rebuilt_from_tokens_is_the_samplers():
    pol = policy()
    # nudge </think> and <eos> up (their head rows along the final norm's signs) so some rows finish and some run out
    with torch.no_grad():
        pol.lm_head.weight[TOK.think_end_id] += 0.025 * pol.ln_f.weight.sign()
        pol.lm_head.weight[TOK.eos_id] += 0.025 * pol.ln_f.weight.sign()
    r = sample(pol)
    prompts, responses = from_rollout(r)
    rec = discrete_record(
        prompts, responses, pad_id=TOK.pad_id, think_end_id=TOK.think_end_id, eos_id=TOK.eos_id, decode=TOK.decode
    )
    for key in ("input_ids", "attention_mask", "position_ids", "response_mask", "think_lengths", "answer_lengths"):
        assert torch.equal(getattr(rec, key), getattr(r, key)), key
    assert torch.equal(rec.finished, r.finished)
    assert rec.answer_text == r.answer_text and rec.answer_ids == r.answer_ids
    assert rec.prompt_length == r.prompt_length
    assert 0 < int(r.finished.sum()) < len(PROBLEMS) * 3  # both kinds of row were checked


def test_the_left_aligned_batch_gives_the_samplers_logits():
    pol = policy(1)
    r = sample(pol)
    prompts, responses = from_rollout(r)
    batch = lm_batch(prompts, responses, TOK.pad_id)
    with torch.no_grad():
        aligned = pol(batch["input"])  # no mask, positions 0.., padding only after the last real token
        padded = teacher_forced_logits(pol, r)  # the sampler's layout: left-padded prompts, masked
    for b, (p, resp) in enumerate(zip(prompts, responses)):
        keep = batch["target"][b] >= 0
        assert batch["target"][b][keep].tolist() == resp  # the targets are the response tokens, in order
        # in the record the logits at t - 1 score the token at t: response positions P .. P + len - 1
        want = padded[b, r.prompt_length - 1 : r.prompt_length - 1 + len(resp)]
        # float32, the same weights and tokens, different sequence lengths and masks: 1e-5 covers the reduction order
        torch.testing.assert_close(aligned[b][keep], want, rtol=1e-5, atol=1e-5)


def test_gold_sequences_are_the_sft_traces():
    rngs = [random.Random(i) for i in range(len(PROBLEMS))]
    prompts, responses = gold_sequences(PROBLEMS, TOK, rngs)
    for problem, p, resp in zip(PROBLEMS, prompts, responses):
        assert p == TOK.encode(cd.prompt_text(problem))
        assert resp[-1] == TOK.eos_id and cd.reward(problem, TOK.decode(resp)) == 1.0
    batch = lm_batch(prompts, responses, TOK.pad_id)
    assert batch["input"].shape == batch["target"].shape
    assert int((batch["target"] >= 0).sum()) == sum(map(len, responses))
