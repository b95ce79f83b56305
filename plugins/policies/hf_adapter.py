"""Adapter from Hugging Face ``transformers`` causal LMs to the :class:`~.policy.SoftPolicy` protocol.

``transformers`` is an optional dependency.  This module imports it lazily: wrapping an already built
model needs nothing beyond the model object (duck typing on ``get_input_embeddings()`` and the usual
``forward(inputs_embeds=..., attention_mask=..., position_ids=..., past_key_values=..., use_cache=...)``
signature), while :func:`load_hf_policy` and :func:`tiny_random_hf_policy` raise a clear
``ImportError`` when the package is missing.

Notes for real checkpoints:

* id 0 is a real token in many vocabularies (``"!"`` in Qwen).  The rollout record stores an explicit
  ``is_soft`` flag and a per-slot ``slot_mask``, so nothing relies on id 0 being ``<pad>``; do not add
  the HF pad id to ``SamplingConfig.suppress_ids`` unless it is truly unused.
* ``embed`` calls the model's own input-embedding module, so models that scale embeddings (Gemma)
  get the scaled rows; the soft mixture is linear, so ``sum_j w_j * embed(id_j)`` stays exact.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["HFCausalLMAdapter", "HFCache", "require_transformers", "load_hf_policy", "tiny_random_hf_policy"]

_MISSING = (
    "the Hugging Face adapter needs the optional dependency `transformers` "
    "(pip install transformers); it is not installed in this environment"
)


def require_transformers():
    """Import and return the ``transformers`` module, or raise ``ImportError`` with instructions."""
    try:
        import transformers  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(_MISSING) from exc
    return transformers


class HFCache:
    """Holds ``past_key_values`` between incremental calls (``None`` before the first call)."""

    def __init__(self) -> None:
        self.past_key_values: Any = None
        self.length = 0


class HFCausalLMAdapter:
    """Wrap a ``transformers`` causal LM (or any module with the same interface) as a SoftPolicy."""

    def __init__(self, model: Any) -> None:
        if not hasattr(model, "get_input_embeddings"):
            raise TypeError("expected a Hugging Face causal LM exposing get_input_embeddings()")
        self.model = model

    # protocol ---------------------------------------------------------------------------------
    @property
    def embedding_matrix(self) -> torch.Tensor:
        return self.model.get_input_embeddings().weight

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[0])

    @property
    def max_positions(self) -> int | None:
        cfg = getattr(self.model, "config", None)
        return getattr(cfg, "max_position_embeddings", None)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids)

    def new_cache(self, batch_size: int = 0) -> HFCache:
        return HFCache()

    def forward_embeds(self, inputs_embeds, attention_mask=None, position_ids=None, kv_cache=None):
        B, T, _ = inputs_embeds.shape
        past = kv_cache.length if kv_cache is not None else 0
        if position_ids is None and attention_mask is not None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)[:, -T:]
        kwargs = dict(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids)
        if kv_cache is not None:
            kwargs.update(past_key_values=kv_cache.past_key_values, use_cache=True)
        else:
            kwargs.update(use_cache=False)
        out = self.model(**kwargs)
        if kv_cache is not None:
            kv_cache.past_key_values = out.past_key_values
            kv_cache.length = past + T
        return out.logits

    # passthroughs so the adapter can stand in for the module in optimisers / train() calls
    def parameters(self, *a, **k):
        return self.model.parameters(*a, **k)

    def train(self, mode: bool = True):
        self.model.train(mode)
        return self

    def eval(self):
        self.model.eval()
        return self

    def __call__(self, *a, **k):
        return self.model(*a, **k)


def load_hf_policy(name_or_path: str, **kwargs) -> HFCausalLMAdapter:
    """``AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)`` wrapped as a SoftPolicy."""
    tr = require_transformers()
    return HFCausalLMAdapter(tr.AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs))


def tiny_random_hf_policy(
    vocab_size: int = 24,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    max_positions: int = 128,
    seed: int = 0,
) -> HFCausalLMAdapter:
    """A randomly initialised tiny Llama-architecture model, for adapter tests (no download)."""
    tr = require_transformers()
    torch.manual_seed(seed)
    cfg = tr.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=4,
        tie_word_embeddings=False,
    )
    model = tr.LlamaForCausalLM(cfg)
    model.eval()
    return HFCausalLMAdapter(model)
