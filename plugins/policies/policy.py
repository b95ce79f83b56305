"""Tiny decoder-only policy and the minimal policy protocol used by the soft-thinking code.

The sampler (:mod:`plugins.soft_grpo.sampling`) and the likelihood (:mod:`plugins.soft_grpo.likelihood`) only talk to a
:class:`SoftPolicy`:

* ``embed(ids) -> (..., d)``: input embeddings of token ids (what the model would feed itself);
* ``embedding_matrix``: the ``(V, d)`` input-embedding weight;
* ``vocab_size`` and ``max_positions`` (``None`` = unbounded);
* ``new_cache(batch_size)``: an empty incremental-decoding cache;
* ``forward_embeds(inputs_embeds, attention_mask=None, position_ids=None, kv_cache=None) -> logits``.

``attention_mask`` follows the Hugging Face convention: shape ``(B, past + T)``, 1/True for real
tokens and 0/False for (left) padding.  ``position_ids`` default to the running count of real tokens,
so left-padded prompts get the same positions as unpadded ones.

:class:`TinyPolicy` implements the protocol natively; :func:`as_soft_policy` wraps Hugging Face causal
LMs through :mod:`.hf_adapter`. :func:`left_pad` batches prompts the way the protocol reads them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "SoftPolicy",
    "TinyPolicyConfig",
    "TinyPolicy",
    "KVCache",
    "as_soft_policy",
    "default_position_ids",
    "left_pad",
]


@runtime_checkable
class SoftPolicy(Protocol):
    """What soft-thinking rollouts and the Gumbel likelihood need from a policy."""

    @property
    def embedding_matrix(self) -> torch.Tensor: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def max_positions(self) -> int | None: ...

    def embed(self, ids: torch.Tensor) -> torch.Tensor: ...

    def new_cache(self, batch_size: int) -> Any: ...

    def forward_embeds(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        kv_cache: Any = None,
    ) -> torch.Tensor: ...


def default_position_ids(attention_mask: torch.Tensor | None, past: int, T: int, batch: int, device) -> torch.Tensor:
    """Positions of the last ``T`` tokens: running count of real tokens minus 1 (clamped at 0)."""
    if attention_mask is None:
        return torch.arange(past, past + T, device=device).unsqueeze(0).expand(batch, T)
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp_min(0)[:, -T:]


@dataclass
class TinyPolicyConfig:
    vocab_size: int = 24
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int | None = None  # default 4 * d_model
    max_len: int = 64
    dropout: float = 0.0
    tie_embeddings: bool = False  # separate input embedding and LM head by default (spec §11)
    init_std: float = 0.02


class KVCache:
    """Per-layer key/value tensors ``(B, H, S, hd)`` plus the key-padding mask seen so far."""

    def __init__(self, n_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self.length = 0

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys[layer] is None:
            self.keys[layer], self.values[layer] = k, v
        else:
            self.keys[layer] = torch.cat([self.keys[layer], k], dim=2)
            self.values[layer] = torch.cat([self.values[layer], v], dim=2)
        return self.keys[layer], self.values[layer]


class _Block(nn.Module):
    def __init__(self, cfg: TinyPolicyConfig) -> None:
        super().__init__()
        d, ff = cfg.d_model, cfg.d_ff or 4 * cfg.d_model
        self.n_heads = cfg.n_heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, ff)
        self.fc2 = nn.Linear(ff, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.dropout_p = cfg.dropout

    def forward(self, x, mask, cache: KVCache | None, layer: int):
        B, T, d = x.shape
        H = self.n_heads
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (t.view(B, T, H, d // H).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.append(layer, k, v)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout_p if self.training else 0.0)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(B, T, d)))
        x = x + self.drop(self.fc2(F.gelu(self.fc1(self.ln2(x)))))
        return x


class TinyPolicy(nn.Module):
    """Pre-LN decoder-only transformer with learned absolute positions (GPT-2 style).

    ``forward(input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None,
    kv_cache=None) -> logits (B, T, V)``.  With a :class:`KVCache`, new keys/values are appended in
    place and ``T`` may be 1 (incremental decoding) or more (prefill).
    """

    # run.strategy='fsdp' (docs/distributed.md): the blocks are sharded as separate units, and rollouts call
    # embed / forward_embeds instead of forward, so those gather the root's weights too
    fsdp_forward_methods = ("embed", "forward_embeds")

    def fsdp_units(self) -> list[nn.Module]:
        return list(self.blocks)

    def __init__(self, cfg: TinyPolicyConfig) -> None:
        super().__init__()
        if cfg.d_model % cfg.n_heads:
            raise ValueError("d_model must be divisible by n_heads")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init)
        for blk in self.blocks:  # GPT-2 residual scaling
            nn.init.normal_(blk.proj.weight, std=cfg.init_std / math.sqrt(2 * cfg.n_layers))
            nn.init.normal_(blk.fc2.weight, std=cfg.init_std / math.sqrt(2 * cfg.n_layers))
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    def _init(self, m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=self.cfg.init_std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    # ---- SoftPolicy protocol -------------------------------------------------------------------
    @property
    def embedding_matrix(self) -> torch.Tensor:
        return self.tok_emb.weight

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    @property
    def max_positions(self) -> int:
        return self.cfg.max_len

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.tok_emb(ids)

    def new_cache(self, batch_size: int = 0) -> KVCache:
        return KVCache(self.cfg.n_layers)

    def forward_embeds(self, inputs_embeds, attention_mask=None, position_ids=None, kv_cache=None):
        return self.forward(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, kv_cache=kv_cache
        )

    # ---- forward -------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids / inputs_embeds")
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        B, T, _ = x.shape
        past = kv_cache.length if kv_cache is not None else 0
        S = past + T
        if attention_mask is not None and attention_mask.shape != (B, S):
            raise ValueError(f"attention_mask must be (B, past+T) = {(B, S)}, got {tuple(attention_mask.shape)}")
        if position_ids is None:
            position_ids = default_position_ids(attention_mask, past, T, B, x.device)
        if int(position_ids.max()) >= self.cfg.max_len or S > self.cfg.max_len:
            raise ValueError(f"sequence length {S} exceeds the context ({self.cfg.max_len})")
        x = x + self.pos_emb(position_ids)

        qpos = torch.arange(past, S, device=x.device).view(T, 1)
        kpos = torch.arange(S, device=x.device).view(1, S)
        allowed = (kpos <= qpos).unsqueeze(0)  # (1, T, S)
        if attention_mask is not None:
            allowed = allowed & attention_mask.bool().unsqueeze(1)
            allowed = allowed | (kpos == qpos).unsqueeze(0)  # a padded query still sees itself (no NaN)
        mask = allowed.unsqueeze(1)  # (B|1, 1, T, S)

        for i, blk in enumerate(self.blocks):
            x = blk(x, mask, kv_cache, i)
        if kv_cache is not None:
            kv_cache.length = S
        return self.lm_head(self.ln_f(x))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def as_soft_policy(model: Any) -> SoftPolicy:
    """Return ``model`` if it already implements :class:`SoftPolicy`, else a Hugging Face adapter."""
    if isinstance(model, SoftPolicy):
        return model
    if hasattr(model, "get_input_embeddings"):
        from .hf_adapter import HFCausalLMAdapter

        return HFCausalLMAdapter(model)
    raise TypeError(f"{type(model).__name__} implements neither SoftPolicy nor the HF causal-LM interface")


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into ``(ids, mask)``, both ``(B, P)``."""
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), P), dtype=torch.bool)
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError("empty prompt")
        ids[i, P - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, P - len(p) :] = True
    return ids, mask
