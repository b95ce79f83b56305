"""Tiny policy: KV-cache decoding equals full recompute; HF adapter path; optional dependency."""

import importlib.util
import os
import sys
from types import SimpleNamespace

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from plugins.countdown import task as cd  # noqa: E402
from plugins.policies.hf_adapter import HFCausalLMAdapter, require_transformers, tiny_random_hf_policy  # noqa: E402
from plugins.policies.policy import SoftPolicy, TinyPolicy, TinyPolicyConfig, as_soft_policy, left_pad  # noqa: E402
from plugins.soft_grpo.sampling import SamplingConfig, generate_rollouts  # noqa: E402


def _policy(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=24, d_model=32, n_layers=2, n_heads=4, max_len=64)
    cfg.update(kw)
    return TinyPolicy(TinyPolicyConfig(**cfg)).eval()


def test_protocol_and_shapes():
    pol = _policy()
    assert isinstance(pol, SoftPolicy) and as_soft_policy(pol) is pol
    assert pol.embedding_matrix.shape == (24, 32)
    ids = torch.randint(1, 24, (3, 10))
    assert pol(input_ids=ids).shape == (3, 10, 24)
    assert torch.equal(pol(input_ids=ids), pol(inputs_embeds=pol.embed(ids)))
    with pytest.raises(ValueError):
        pol(input_ids=torch.zeros(1, 65, dtype=torch.long))
    tied = _policy(tie_embeddings=True)
    assert tied.lm_head.weight is tied.tok_emb.weight


@pytest.mark.parametrize("padded", [False, True])
def test_kv_cache_decoding_equals_full_recompute(padded):
    pol = _policy(1)
    B, T = 4, 20
    ids = torch.randint(1, 24, (B, T))
    mask = torch.ones(B, T, dtype=torch.bool)
    if padded:  # left padding of different lengths
        for b, n in enumerate([0, 3, 5, 1]):
            mask[b, :n] = False
            ids[b, :n] = 0
    full = pol(input_ids=ids, attention_mask=mask)
    cache = pol.new_cache(B)
    P = 7
    steps = [pol(input_ids=ids[:, :P], attention_mask=mask[:, :P], kv_cache=cache)]
    for t in range(P, T):
        steps.append(pol(input_ids=ids[:, t : t + 1], attention_mask=mask[:, : t + 1], kv_cache=cache))
    inc = torch.cat(steps, dim=1)
    assert cache.length == T
    real = mask
    assert torch.allclose(inc[real], full[real], atol=1e-5, rtol=0)
    assert torch.isfinite(inc).all() and torch.isfinite(full).all()
    if padded:  # left padding does not change the real tokens' logits
        b, n = 1, 3
        alone = pol(input_ids=ids[b : b + 1, n:])
        assert torch.allclose(alone[0], full[b, n:], atol=1e-5, rtol=0)


class _FakeHFModel(torch.nn.Module):
    """Mimics the transformers causal-LM call convention on top of TinyPolicy."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = SimpleNamespace(max_position_embeddings=inner.cfg.max_len)

    def get_input_embeddings(self):
        return self.inner.tok_emb

    def forward(
        self, inputs_embeds=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False
    ):
        cache = past_key_values
        if use_cache and cache is None:
            cache = self.inner.new_cache()
        logits = self.inner(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            kv_cache=cache if use_cache else None,
        )
        return SimpleNamespace(logits=logits, past_key_values=cache if use_cache else None)


def test_hf_adapter_path_gives_identical_rollouts():
    tok = cd.CharTokenizer()
    pol = _policy(2)
    adapter = as_soft_policy(_FakeHFModel(pol))
    assert isinstance(adapter, HFCausalLMAdapter) and isinstance(adapter, SoftPolicy)
    assert adapter.max_positions == 64 and adapter.vocab_size == 24
    prompts = [tok.encode(cd.prompt_text(p)) for p in cd.generate_problems(4, seed=0)]
    cfg = SamplingConfig(think_cap=6, answer_cap=5)
    kw = dict(think_end_id=tok.think_end_id, eos_id=tok.eos_id)
    r1 = generate_rollouts(pol, prompts, cfg, generator=torch.Generator().manual_seed(0), **kw)
    r2 = generate_rollouts(adapter, prompts, cfg, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(r1.topk_ids, r2.topk_ids) and torch.equal(r1.topk_gumbel, r2.topk_gumbel)
    assert torch.allclose(r1.rollout_logprobs, r2.rollout_logprobs)
    ids, mask = left_pad(prompts)
    assert torch.equal(
        adapter.forward_embeds(adapter.embed(ids), attention_mask=mask), pol(input_ids=ids, attention_mask=mask)
    )


@pytest.mark.skipif(importlib.util.find_spec("transformers") is not None, reason="transformers is installed")
def test_hf_adapter_clear_error_without_transformers():
    with pytest.raises(ImportError, match="transformers"):
        require_transformers()
    with pytest.raises(ImportError, match="pip install transformers"):
        tiny_random_hf_policy()
    with pytest.raises(TypeError):
        as_soft_policy(object())


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers not installed")
def test_hf_tiny_random_llama_rollout():  # pragma: no cover - runs only where transformers exists
    tok = cd.CharTokenizer()
    adapter = tiny_random_hf_policy(vocab_size=tok.vocab_size)
    prompts = [tok.encode(cd.prompt_text(p)) for p in cd.generate_problems(3, seed=0)]
    r = generate_rollouts(
        adapter,
        prompts,
        SamplingConfig(think_cap=4, answer_cap=4),
        think_end_id=tok.think_end_id,
        eos_id=tok.eos_id,
        generator=torch.Generator().manual_seed(0),
        keep_debug=True,
    )
    from plugins.soft_grpo.likelihood import rebuild_inputs_embeds, teacher_forced_logits

    assert torch.equal(rebuild_inputs_embeds(adapter, r), r.inputs_embeds)
    lg = teacher_forced_logits(adapter, r)
    real = r.attention_mask[:, :-1]
    assert torch.allclose(lg[:, :-1][real], r.gen_logits[:, :-1][real], atol=1e-4, rtol=0)
