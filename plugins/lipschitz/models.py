"""Lipschitz transformer and Lipschitz MLP (spec ``lipschitz.md`` §6), pure PyTorch.

``LipschitzGPT`` -- the Modula GPT of the official code:

* no LayerNorm / QK-norm / logit softcap;
* convex residuals ``x <- (1 - r/(2L))·x + (r/(2L))·block(x)``, separately for attention and MLP
  (r = ``residual_scale`` = 1, L = ``n_layers``), as in both official implementations;
* attention scores ``softmax_scale · q·k^T / d_head`` (**1/d**, not 1/sqrt(d)), causal mask, RoPE on q and
  k (a per-token rotation: sensitivity 1, no learned positions), output ``W_o((1/3)·softmax·V)``;
* MLP ``W_out · GELU(W_in x) / 1.1289``, hidden ``4·d_model``;
* embedding ``nn.Embedding`` (rows = token vectors, RMS <= 1 kept by the *explicit* projection
  :meth:`LipschitzGPT.project_embedding_` -- not ``max_norm``, which only touches looked-up rows);
* output: a bias-free ``nn.Linear(d_model, vocab)``, spectrally constrained like the hidden matrices.

Init (spec §3 item 6): hidden matrices ``msign(Gaussian)·sqrt(fan_out/fan_in)`` with the *exact* polar
factor (every RMS->RMS singular value = 1); output-side matrices (W_o, MLP ``w_out``, head) zero, so the
initial logits are exactly 0; embedding Gaussian with every row rescaled to RMS exactly 1.

``LipschitzMLP`` -- bias-free ReLU MLP (3072 -> 256 -> 256 -> 10 for CIFAR-10: 854,528 parameters).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import bound as _bound
from . import constraint_maps as _cm
from . import spectral as _sp

__all__ = ["LipschitzGPT", "LipschitzMLP", "GELU_DIVISOR"]

GELU_DIVISOR = _bound.GELU_DIVISOR

NamedParams = List[Tuple[str, nn.Parameter]]


def _orthogonal_init_(weight: torch.Tensor, generator: Optional[torch.Generator]) -> None:
    """``W <- msign(G)·sqrt(fan_out/fan_in)``, G Gaussian, exact polar factor (SVD, fp32)."""
    G = torch.randn(weight.shape, generator=generator, dtype=torch.float32)
    O = _sp.msign_accurate(G) * _sp.rms_scale(G)
    with torch.no_grad():
        weight.copy_(O.to(device=weight.device, dtype=weight.dtype))


def _rope_tables(block_size: int, d_head: int, base: float) -> Tuple[torch.Tensor, torch.Tensor]:
    half = d_head // 2
    inv_freq = 1.0 / (base ** (torch.arange(half, dtype=torch.float64) / half))
    ang = torch.arange(block_size, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return ang.cos().float(), ang.sin().float()


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[i], x[i + d/2]) by position-dependent angles: orthogonal per token."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos = cos.to(x.dtype)
    sin = sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class LipschitzAttention(nn.Module):
    """Causal multi-head attention with 1/d scores, RoPE and the (1/3) output scaling."""

    def __init__(
        self, d_model: int, n_heads: int, block_size: int, softmax_scale: float, rope_base: float, attn_impl: str
    ):
        super().__init__()
        if d_model % n_heads:
            raise ValueError("d_model must be divisible by n_heads")
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        if self.d_head % 2:
            raise ValueError("d_head must be even for RoPE")
        if attn_impl not in ("sdpa", "math"):
            raise ValueError("attn_impl must be 'sdpa' or 'math'")
        self.softmax_scale = float(softmax_scale)
        self.attn_impl = attn_impl
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.o = nn.Linear(d_model, d_model, bias=False)
        cos, sin = _rope_tables(block_size, self.d_head, rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        H, dh = self.n_heads, self.d_head

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, T, H, dh).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        scale = self.softmax_scale / dh  # 1/d attention (not 1/sqrt(d))
        if self.attn_impl == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        else:  # explicit softmax: supports forward-mode AD (torch.func.jvp) on every backend
            att = (q @ k.transpose(-2, -1)) * scale
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
            att = att.masked_fill(mask, float("-inf")).softmax(dim=-1)
            y = att @ v
        y = y.transpose(1, 2).reshape(B, T, D) / 3.0
        return self.o(y)


class LipschitzMLPBlock(nn.Module):
    """``w_out(GELU(w_in x) / 1.1289)``, hidden width ``mult·d_model``."""

    def __init__(self, d_model: int, mult: int = 4):
        super().__init__()
        self.w_in = nn.Linear(d_model, mult * d_model, bias=False)
        self.w_out = nn.Linear(mult * d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_out(F.gelu(self.w_in(x)) / GELU_DIVISOR)


class LipschitzBlock(nn.Module):
    def __init__(self, d_model, n_heads, block_size, softmax_scale, rope_base, attn_impl, alpha):
        super().__init__()
        self.alpha = float(alpha)
        self.attn = LipschitzAttention(d_model, n_heads, block_size, softmax_scale, rope_base, attn_impl)
        self.mlp = LipschitzMLPBlock(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.alpha
        x = (1.0 - a) * x + a * self.attn(x)
        x = (1.0 - a) * x + a * self.mlp(x)
        return x


class LipschitzGPT(nn.Module):
    """Lipschitz transformer: ``idx (B, T) int64 -> logits (B, T, vocab_size)``.

    Args:
        vocab_size, d_model, n_layers, n_heads, block_size: usual GPT shapes (d_head = d_model/n_heads, even).
        softmax_scale: s in ``s·q·k^T/d_head`` (1 for Shakespeare, 24 in the NanoGPT run).
        residual_scale: r in the convex residual ``1 - r/(2L)`` (1 in all official configs).
        rope_base: RoPE frequency base.
        attn_impl: ``"sdpa"`` (fast, default) or ``"math"`` (explicit softmax; needed for
            ``torch.func.jvp`` on CPU, whose flash kernel lacks forward AD).
        zero_init_output: zero-init W_o, MLP ``w_out`` and the head (official ``zero_init=True``).
        seed: optional seed for a dedicated init generator (else the global RNG).
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        n_layers: int,
        n_heads: int,
        block_size: int,
        softmax_scale: float = 1.0,
        residual_scale: float = 1.0,
        rope_base: float = 10000.0,
        attn_impl: str = "sdpa",
        zero_init_output: bool = True,
        seed: Optional[int] = None,
    ):
        super().__init__()
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.n_layers = n_layers
        self.block_size = block_size
        self.softmax_scale = float(softmax_scale)
        self.residual_scale = float(residual_scale)
        self.zero_init_output = zero_init_output
        alpha = residual_scale / (2.0 * n_layers)
        self.embed = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(
            LipschitzBlock(d_model, n_heads, block_size, softmax_scale, rope_base, attn_impl, alpha)
            for _ in range(n_layers)
        )
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.reset_parameters(seed)

    # ---------------------------------------------------------------- init / forward

    def fsdp_units(self) -> list[nn.Module]:
        """The blocks FSDP shards as separate units (run.strategy='fsdp'; see docs/distributed.md)."""
        return list(self.blocks)

    @torch.no_grad()
    def reset_parameters(self, seed: Optional[int] = None) -> None:
        g = None
        if seed is not None:
            g = torch.Generator().manual_seed(int(seed))
        E = torch.randn(self.embed.weight.shape, generator=g)
        self.embed.weight.copy_(_cm.normalize_embedding_rows(E, 1.0))
        for blk in self.blocks:
            for lin in (blk.attn.q, blk.attn.k, blk.attn.v, blk.mlp.w_in):
                _orthogonal_init_(lin.weight, g)
            for lin in (blk.attn.o, blk.mlp.w_out):
                if self.zero_init_output:
                    lin.weight.zero_()
                else:
                    _orthogonal_init_(lin.weight, g)
        if self.zero_init_output:
            self.head.weight.zero_()
        else:
            _orthogonal_init_(self.head.weight, g)

    def forward_embedded(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from an already embedded sequence ``x`` (B, T, d) (for Lipschitz estimates)."""
        if x.shape[1] > self.block_size:
            raise ValueError(f"sequence length {x.shape[1]} > block_size {self.block_size}")
        for blk in self.blocks:
            x = blk(x)
        return self.head(x)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.forward_embedded(self.embed(idx))

    # ---------------------------------------------------------------- constraint plumbing

    def weight_groups(self) -> Dict[str, NamedParams]:
        """Parameters by constraint group: ``hidden`` (q, k, v, o, MLP in/out of every block; Muon +
        spectral constraint), ``embedding`` (row RMS projection; Adam), ``head`` (own w_max/lr)."""
        hidden: NamedParams = []
        for i, blk in enumerate(self.blocks):
            for name, lin in (
                ("attn.q", blk.attn.q),
                ("attn.k", blk.attn.k),
                ("attn.v", blk.attn.v),
                ("attn.o", blk.attn.o),
                ("mlp.w_in", blk.mlp.w_in),
                ("mlp.w_out", blk.mlp.w_out),
            ):
                hidden.append((f"blocks.{i}.{name}.weight", lin.weight))
        return {
            "hidden": hidden,
            "embedding": [("embed.weight", self.embed.weight)],
            "head": [("head.weight", self.head.weight)],
        }

    def block_norms(self) -> List[_bound.BlockNorms]:
        """Measured RMS->RMS norms of every block's matrices (exact, fp32)."""
        out = []
        for blk in self.blocks:
            n = _sp.rms_to_rms_norm
            out.append(
                _bound.BlockNorms(
                    q=n(blk.attn.q.weight),
                    k=n(blk.attn.k.weight),
                    v=n(blk.attn.v.weight),
                    o=n(blk.attn.o.weight),
                    mlp_in=n(blk.mlp.w_in.weight),
                    mlp_out=n(blk.mlp.w_out.weight),
                )
            )
        return out

    def group_max_norms(self) -> Dict[str, float]:
        """Max measured norm per group: RMS->RMS for matrices, max row RMS for the embedding."""
        groups = self.weight_groups()
        return {
            "hidden": max(_sp.rms_to_rms_norm(p) for _, p in groups["hidden"]),
            "embedding": _sp.max_row_rms(self.embed.weight),
            "head": _sp.rms_to_rms_norm(self.head.weight),
        }

    def certified_bound(self, include_embedding: bool = True, **kw) -> float:
        """Certified Lipschitz bound from the *measured* current weights (bound.transformer_lipschitz_bound).

        ``include_embedding=False`` gives the bound w.r.t. the embedded sequence (token RMS <= 1) in the
        max-over-tokens RMS norm; True multiplies by the embedding norm (tokens -> logits)."""
        emb = _sp.max_row_rms(self.embed.weight) if include_embedding else 1.0
        return _bound.transformer_lipschitz_bound(
            self.block_norms(),
            emb,
            _sp.rms_to_rms_norm(self.head.weight),
            softmax_scale=self.softmax_scale,
            residual_scale=self.residual_scale,
            **kw,
        )

    @torch.no_grad()
    def project_embedding_(self, max_rms: float = 1.0) -> "LipschitzGPT":
        """Every token vector (embedding row) ``<- row / max(1, rms/max_rms)``, in place."""
        self.embed.weight.copy_(_cm.project_embedding_rows(self.embed.weight, max_rms))
        return self

    @torch.no_grad()
    def project_(
        self,
        method: str = "svd_clip",
        w_max: float = 1.0,
        head_w_max: Optional[float] = None,
        emb_max_rms: float = 1.0,
    ) -> "LipschitzGPT":
        """Apply a ``constraint_maps.PROJECTIONS`` map to every hidden matrix and the head, and project the
        embedding rows. (The soft cap needs the optimizer's eta; the engine plugin applies it.)"""
        fn = _cm.PROJECTIONS[method]
        groups = self.weight_groups()
        for _, p in groups["hidden"]:
            p.copy_(fn(p, w_max))
        hw = w_max if head_w_max is None else head_w_max
        for _, p in groups["head"]:
            p.copy_(fn(p, hw))
        return self.project_embedding_(emb_max_rms)


class LipschitzMLP(nn.Module):
    """Bias-free ReLU MLP ``in_dim -> hidden -> ... -> out_dim`` with ``n_hidden_layers`` hidden layers
    (``n_hidden_layers + 1`` Linear maps). Inputs are flattened from dim 1.

    ``zero_init``: which layer starts at zero -- ``"last"`` (default), ``"first"`` or ``"none"``.
    The spec (§3 item 6) reports the official MLP zero-inits its *first* layer ``mlp_in``; in PyTorch
    (ReLU'(0) = 0) a zero first layer makes every gradient exactly zero, so the network could never
    train (tested). We therefore zero the output-side layer, consistent with the GPT's zero-init of
    output-side matrices; ``"first"`` is kept for comparison. Other layers: ``msign(Gaussian)·s``.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        out_dim: int,
        n_hidden_layers: int = 2,
        zero_init: str = "last",
        seed: Optional[int] = None,
    ):
        super().__init__()
        if n_hidden_layers < 1:
            raise ValueError("n_hidden_layers must be >= 1")
        if zero_init not in ("last", "first", "none"):
            raise ValueError("zero_init must be 'last', 'first' or 'none'")
        dims = [in_dim] + [hidden] * n_hidden_layers + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(dims[:-1], dims[1:]))
        self.zero_init = zero_init
        self.reset_parameters(seed)

    @torch.no_grad()
    def reset_parameters(self, seed: Optional[int] = None) -> None:
        g = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        n = len(self.layers)
        zero_idx = {"last": n - 1, "first": 0, "none": -1}[self.zero_init]
        for i, lin in enumerate(self.layers):
            if i == zero_idx:
                lin.weight.zero_()
            else:
                _orthogonal_init_(lin.weight, g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for i, lin in enumerate(self.layers):
            x = lin(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x

    def weight_groups(self) -> Dict[str, NamedParams]:
        """``hidden``: all layers but the last; ``embedding``: none; ``head``: the output layer."""
        named = [(f"layers.{i}.weight", lin.weight) for i, lin in enumerate(self.layers)]
        return {"hidden": named[:-1], "embedding": [], "head": named[-1:]}

    def layer_norms(self) -> List[float]:
        return [_sp.rms_to_rms_norm(lin.weight) for lin in self.layers]

    def group_max_norms(self) -> Dict[str, float]:
        norms = self.layer_norms()
        return {"hidden": max(norms[:-1]), "head": norms[-1]}

    def certified_bound(self) -> float:
        """RMS->RMS Lipschitz bound ``prod_l |W_l|`` from the measured weights (ReLU is 1-Lipschitz)."""
        return _bound.mlp_lipschitz_bound(self.layer_norms())

    @torch.no_grad()
    def project_(self, method: str = "svd_clip", w_max: float = 1.0, head_w_max: Optional[float] = None):
        fn = _cm.PROJECTIONS[method]
        for i, lin in enumerate(self.layers):
            wm = head_w_max if (head_w_max is not None and i == len(self.layers) - 1) else w_max
            lin.weight.copy_(fn(lin.weight, wm))
        return self
