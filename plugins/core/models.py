"""Plain PyTorch models used by hookmix's core plugin.

Three small models, each readable top to bottom:

- GPT:   a pre-LayerNorm, decoder-only transformer for character-level LM.
- MLP:   a fully connected classifier.
- CNN1D: the convolutional baseline from the MNIST-1D paper.

Nothing here knows about the engine. Every model returns raw logits (no loss),
and its submodules have stable names, so a plugin can read an intermediate
feature with a forward hook instead of changing the model:

    GPT:   "blocks.0" ... "blocks.{n_layer-1}" (residual stream, (B, T, C)),
           "ln_f" (final normalised features, (B, T, C))
    MLP:   "features" (last hidden activation, (B, hidden[-1]))
    CNN1D: "features" (flattened conv features, (B, channels * L_out))
"""

import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# GPT


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool):
        super().__init__()
        if n_embd % n_head != 0:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        self.n_head = n_head
        self.dropout = dropout
        # One matmul makes queries, keys and values for every head at once.
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        # Output projection back into the residual stream (gets the scaled init).
        self.proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim): SDPA treats the leading dims as batch.
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        # is_causal=True applies the lower-triangular mask without building it ourselves,
        # and lets PyTorch pick a fused (flash / memory-efficient) kernel where one exists.
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # put the heads side by side again
        return self.resid_drop(self.proj(y))


class FeedForward(nn.Module):
    """The transformer's per-position MLP: widen 4x, GELU, project back."""

    def __init__(self, n_embd: int, dropout: float, bias: bool):
        super().__init__()
        self.fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.proj = nn.Linear(4 * n_embd, n_embd, bias=bias)  # residual projection
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """One pre-LN transformer block.

    LayerNorm sits *before* each sublayer and the residual path is left untouched,
    which keeps small models stable without learning-rate warmup tricks.
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = FeedForward(n_embd, dropout, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))  # tokens exchange information
        x = x + self.mlp(self.ln_2(x))  # each token is processed on its own
        return x


class GPT(nn.Module):
    """A small decoder-only transformer: idx (B, T) int64 -> logits (B, T, vocab_size).

    Weight tying: by default lm_head shares its weight with the token embedding
    (as in GPT-2). For a character vocabulary this saves little, but it is the
    standard choice, it ties "what a token means" to "how it is predicted", and
    it is what most published baselines do. Pass tie_weights=False for separate
    matrices, e.g. when a method regularises the output layer on its own.
    Note that with tying, lm_head.weight and tok_emb.weight are the same Parameter,
    so model.parameters() lists it once.
    """

    def __init__(
        self,
        vocab_size: int,
        block_size: int = 128,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 128,
        dropout: float = 0.0,
        bias: bool = False,
        tie_weights: bool = True,
    ):
        super().__init__()
        self.vocab_size = vocab_size
        self.block_size = block_size
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd)  # learned absolute positions
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout, bias) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        if tie_weights:
            self.lm_head.weight = self.tok_emb.weight

        self.apply(self._init_weights)
        # Every block adds two projections onto the residual stream, so its variance
        # grows with depth; shrinking those projections by 1/sqrt(2 * n_layer) keeps
        # the stream's scale roughly independent of n_layer at init (GPT-2 recipe).
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # Small normal weights (std 0.02) rather than PyTorch's fan-in defaults:
        # the usual GPT init, which starts with near-uniform predictions.
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        # LayerNorm keeps its default: weight 1, bias 0.

    def fsdp_units(self) -> list[nn.Module]:
        """The blocks FSDP shards as separate units (run.strategy='fsdp'; see docs/distributed.md)."""
        return list(self.blocks)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        if T > self.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, C) + (T, C) broadcasts
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


# -----------------------------------------------------------------------------
# MLP

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


class MLP(nn.Module):
    """Fully connected classifier: x (B, in_dim) -> logits (B, num_classes).

    The hidden layers live in `features` as fc0, act0, fc1, act1, ..., so a hook on
    "features" (or on its last act) sees the penultimate representation, and `head`
    is the final linear layer. With hidden=() the model is logistic regression and
    "features" returns its input unchanged. Weights keep PyTorch's default init.
    """

    def __init__(self, in_dim: int, num_classes: int, hidden=(256, 256), activation: str = "relu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        layers = OrderedDict()
        width = in_dim
        for i, h in enumerate(hidden):
            layers[f"fc{i}"] = nn.Linear(width, h)
            layers[f"act{i}"] = ACTIVATIONS[activation]()
            width = h
        self.features = nn.Sequential(layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# -----------------------------------------------------------------------------
# CNN1D


class CNN1D(nn.Module):
    """The MNIST-1D paper's CNN baseline: x (B, in_len) -> logits (B, num_classes).

    Defaults follow the reference model (Greydanus, "Scaling down deep learning",
    2020): three Conv1d layers with 25 channels, kernel sizes 5, 3, 3, stride 2 and
    padding 1, each followed by ReLU, then one Linear layer on the flattened maps.
    For in_len=40 the length goes 40 -> 19 -> 10 -> 5, so the head sees 25 * 5 = 125
    features. Trained with Adam it reaches roughly 94% test accuracy on MNIST-1D.
    """

    def __init__(
        self,
        in_len: int = 40,
        num_classes: int = 10,
        channels: int = 25,
        kernel_sizes=(5, 3, 3),
        stride: int = 2,
        padding: int = 1,
    ):
        super().__init__()
        layers = OrderedDict()
        length, in_ch = in_len, 1
        for i, k in enumerate(kernel_sizes):
            layers[f"conv{i}"] = nn.Conv1d(in_ch, channels, k, stride=stride, padding=padding)
            layers[f"act{i}"] = nn.ReLU()
            length = (length + 2 * padding - k) // stride + 1  # standard Conv1d output length
            in_ch = channels
        if length < 1:
            raise ValueError(f"in_len={in_len} is too short for kernel_sizes={tuple(kernel_sizes)}")
        layers["flatten"] = nn.Flatten()
        self.features = nn.Sequential(layers)  # output: (B, channels * length)
        self.head = nn.Linear(channels * length, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Inputs are plain (B, in_len) signals; Conv1d wants a channel axis.
        return self.head(self.features(x.unsqueeze(1)))
