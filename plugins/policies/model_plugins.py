"""The policy model plugins ``tiny_policy`` and ``hf_policy`` (a Hugging Face causal LM, extra ``hf``)."""

from __future__ import annotations

from typing import Literal

import attrs
import torch

from engine import BadInput, Plugin, field, hookimpl
from engine.validators import MAX_WIDTH, check_parameter_count, finite_positive, in_range, int_range, width

from .capabilities import POLICY
from .policy import TinyPolicy, TinyPolicyConfig

MAX_DEPTH = 1024  # layers / heads: a sane bound, checked before anything is allocated


def load_init(model: torch.nn.Module, source: str, plugin: str) -> None:
    """Load the model weights of a hookmix run (latest checkpoint) or of one ``RUN/checkpoints/step-N.pt``."""
    from engine import open_run

    try:
        weights = open_run(source).weights("model")
    except BadInput as exc:
        raise BadInput(f"plugins.{plugin}.init_from={source!r}: {exc}") from None
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError) as exc:
        raise BadInput(
            f"plugins.{plugin}.init_from={source!r} does not match this model "
            f"({str(exc).splitlines()[0][:160]}); use the same model config as that run"
        ) from None


@attrs.define
class TinyPolicyModelConfig:
    d_model: int = field(64, "model width", validator=width)
    n_layers: int = field(2, "transformer blocks", validator=int_range(1, MAX_DEPTH))
    n_heads: int = field(4, "attention heads", validator=int_range(1, MAX_DEPTH))
    d_ff: int = field(0, "MLP width (0: 4 * d_model)", validator=int_range(0, MAX_WIDTH))
    max_len: int = field(0, "context length (0: the data's block_size)", validator=int_range(0, MAX_WIDTH))
    dropout: float = field(
        0.0,
        "dropout probability (keep 0 for RL: θ_old is recomputed in eval mode)",
        validator=in_range(0, 1, high_open=True),
    )
    tie_embeddings: bool = field(False, "share the input embedding with the LM head")
    init_std: float = field(0.02, "initialisation std (GPT-2 style)", validator=finite_positive)
    init_from: str = field("", "start from the weights of this hookmix run directory (latest checkpoint) or .pt file")


class TinyPolicyModel(Plugin):
    """Tiny pre-LN decoder (learned positions, KV cache) that also speaks the soft-policy protocol."""

    name = "tiny_policy"
    Config = TinyPolicyModelConfig
    provides = (POLICY,)

    @hookimpl
    def hookmix_configure(self, state):
        c = self.config
        if c.d_model % c.n_heads:
            raise BadInput(f"plugins.tiny_policy: d_model={c.d_model} is not divisible by n_heads={c.n_heads}")
        ff = c.d_ff or 4 * c.d_model
        check_parameter_count("plugins.tiny_policy", c.n_layers * (4 * c.d_model**2 + 2 * c.d_model * ff))

    @hookimpl
    def hookmix_model(self, state):
        c = self.config
        info = state.data.info
        if "vocab_size" not in info:
            raise BadInput("tiny_policy needs a token data plugin (data info 'vocab_size'); enable countdown")
        model = TinyPolicy(
            TinyPolicyConfig(
                vocab_size=info["vocab_size"],
                d_model=c.d_model,
                n_layers=c.n_layers,
                n_heads=c.n_heads,
                d_ff=c.d_ff or None,
                max_len=c.max_len or info.get("block_size", 64),
                dropout=c.dropout,
                tie_embeddings=c.tie_embeddings,
                init_std=c.init_std,
            )
        )
        if c.init_from:
            load_init(model, c.init_from, self.name)
        return model


class HFPolicy(torch.nn.Module):
    """A ``transformers`` causal LM as an engine model: ``forward(ids) -> logits`` plus the soft-policy protocol."""

    # run.strategy='fsdp' (docs/distributed.md): rollouts call embed / forward_embeds, which must gather too
    fsdp_forward_methods = ("embed", "forward_embeds")

    def __init__(self, hf_model: torch.nn.Module) -> None:
        super().__init__()
        from .hf_adapter import HFCausalLMAdapter

        self.hf = hf_model
        self._adapter = HFCausalLMAdapter(hf_model)

    def fsdp_units(self) -> list[torch.nn.Module]:
        """The decoder blocks (llama: model.layers, gpt2: transformer.h), sharded as separate FSDP units."""
        inner = getattr(self.hf, "model", None) or getattr(self.hf, "transformer", None)
        return list(getattr(inner, "layers", None) or getattr(inner, "h", None) or [])

    @property
    def embedding_matrix(self) -> torch.Tensor:
        return self._adapter.embedding_matrix

    @property
    def vocab_size(self) -> int:
        return self._adapter.vocab_size

    @property
    def max_positions(self) -> int | None:
        return self._adapter.max_positions

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self._adapter.embed(ids)

    def new_cache(self, batch_size: int = 0):
        return self._adapter.new_cache(batch_size)

    def forward_embeds(self, inputs_embeds, attention_mask=None, position_ids=None, kv_cache=None):
        return self._adapter.forward_embeds(inputs_embeds, attention_mask, position_ids, kv_cache)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=input_ids, use_cache=False).logits


@attrs.define
class HFPolicyModelConfig:
    path: str = field("", "local directory of a Hugging Face causal LM (empty: a random tiny model of `arch`)")
    arch: Literal["llama", "gpt2"] = field("llama", "random-init architecture when path is empty")
    hidden_size: int = field(64, "random init: width", validator=width)
    layers: int = field(2, "random init: blocks", validator=int_range(1, MAX_DEPTH))
    heads: int = field(4, "random init: attention heads", validator=int_range(1, MAX_DEPTH))
    intermediate_size: int = field(0, "random init: MLP width (0: 4 * hidden_size)", validator=int_range(0, MAX_WIDTH))
    max_positions: int = field(0, "random init: context (0: the data's block_size)", validator=int_range(0, MAX_WIDTH))
    dtype: Literal["float32", "bfloat16"] = field("float32", "weights dtype")
    init_from: str = field("", "start from the weights of this hookmix run directory (latest checkpoint) or .pt file")


class HFPolicyModel(Plugin):
    """A Hugging Face causal LM (local directory, or a random tiny llama/gpt2) as the policy (extra `hf`)."""

    name = "hf_policy"
    Config = HFPolicyModelConfig
    provides = (POLICY,)

    @hookimpl
    def hookmix_configure(self, state):
        c = self.config
        if not c.path:  # a random model: its size is known before anything is built
            inter = c.intermediate_size or 4 * c.hidden_size
            check_parameter_count("plugins.hf_policy", c.layers * (4 * c.hidden_size**2 + 3 * c.hidden_size * inter))

    @hookimpl
    def hookmix_model(self, state):
        from .hf_adapter import require_transformers

        try:
            tr = require_transformers()
        except ImportError as exc:
            raise BadInput(f"hf_policy: {exc}; or install the extra: pip install 'hookmix[hf]'") from None
        c, info = self.config, state.data.info
        dtype = torch.bfloat16 if c.dtype == "bfloat16" else torch.float32
        if c.path:
            try:
                hf = tr.AutoModelForCausalLM.from_pretrained(c.path, local_files_only=True, dtype=dtype)
            except (OSError, ValueError) as exc:
                raise BadInput(
                    f"plugins.hf_policy.path: cannot load a causal LM from {c.path!r} "
                    f"({str(exc).splitlines()[0][:160]}); pass a local model directory"
                ) from None
        else:
            inter = c.intermediate_size or 4 * c.hidden_size
            npos = c.max_positions or info.get("block_size", 64)
            if c.arch == "llama":
                cfg = tr.LlamaConfig(
                    vocab_size=info["vocab_size"],
                    hidden_size=c.hidden_size,
                    intermediate_size=inter,
                    num_hidden_layers=c.layers,
                    num_attention_heads=c.heads,
                    num_key_value_heads=c.heads,
                    max_position_embeddings=npos,
                    tie_word_embeddings=False,
                )
                hf = tr.LlamaForCausalLM(cfg)
            else:
                cfg = tr.GPT2Config(
                    vocab_size=info["vocab_size"],
                    n_embd=c.hidden_size,
                    n_layer=c.layers,
                    n_head=c.heads,
                    n_inner=inter,
                    n_positions=npos,
                )
                hf = tr.GPT2LMHeadModel(cfg)
            hf = hf.to(dtype)
        model = HFPolicy(hf)
        if model.vocab_size < info["vocab_size"]:
            raise BadInput(
                f"hf_policy: the model's vocabulary ({model.vocab_size}) is smaller than the data's "
                f"({info['vocab_size']}); set plugins.countdown.tokenizer to the model's directory"
            )
        if c.init_from:
            load_init(model, c.init_from, self.name)
        return model
