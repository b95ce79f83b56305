"""The core plugins everything else stands on: data, models, AdamW, cross-entropy."""

from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F

from engine import BadInput, Plugin, field, hookimpl, one_of

RECIPES = "plugins.core.recipes"


# --- data ------------------------------------------------------------------------------------


@attrs.define
class TinyShakespeareConfig:
    path: str = field("", "fsspec URL of a UTF-8 text file; empty: the embedded tinyshakespeare corpus")
    block_size: int = field(128, "characters per training window")
    batch_size: int = field(32, "windows per micro-batch")
    val_fraction: float = field(0.1, "the last fraction of the text is the validation split")
    eval_batches: int = field(16, "validation batches per evaluation")


class TinyShakespeare(Plugin):
    """Character-level language-model data from a text file (tinyshakespeare embedded)."""

    name = "tinyshakespeare"
    Config = TinyShakespeareConfig
    provides = ("data", "data:lm")
    recipes = RECIPES

    @hookimpl
    def hookmix_data(self, state):
        from plugins.core.data import CharText, default_text_path, load_text

        c = self.config
        try:
            text = load_text(c.path or default_text_path())
            return CharText(text, c.block_size, c.batch_size, c.val_fraction, c.eval_batches)
        except ValueError as exc:
            raise BadInput(f"plugins.tinyshakespeare: {exc}") from None


@attrs.define
class MNIST1DConfig:
    batch_size: int = field(100, "examples per micro-batch")
    num_train: int = field(4000, "training examples")
    num_test: int = field(1000, "test examples (the validation set)")
    seed: int = field(42, "generation seed of the mnist1d package")


class MNIST1DData(Plugin):
    """The MNIST-1D benchmark, generated locally with the mnist1d package and cached."""

    name = "mnist1d"
    Config = MNIST1DConfig
    provides = ("data", "data:classification")
    recipes = RECIPES

    @hookimpl
    def hookmix_data(self, state):
        from plugins.core.data import MNIST1D

        c = self.config
        try:
            return MNIST1D(c.batch_size, c.num_train, c.num_test, c.seed, cache_dir=f"{state.cache_dir}/mnist1d")
        except ValueError as exc:
            raise BadInput(f"plugins.mnist1d: {exc}") from None


# --- models ----------------------------------------------------------------------------------


@attrs.define
class GPTConfig:
    n_layer: int = field(4, "transformer blocks")
    n_head: int = field(4, "attention heads")
    n_embd: int = field(128, "model width")
    block_size: int = field(0, "context length (0: the data's block size)")
    dropout: float = field(0.0, "dropout probability")
    tie_weights: bool = field(True, "share the token embedding with the output head")


class GPTModel(Plugin):
    """A small pre-LN decoder-only transformer (nanoGPT-style) for language modelling."""

    name = "gpt"
    Config = GPTConfig
    provides = ("model",)

    @hookimpl
    def hookmix_model(self, state):
        from plugins.core.models import GPT

        c = self.config
        vocab = state.data_info("vocab_size", needed_by="gpt", what="a language-model data plugin")
        block = c.block_size or state.data_info("block_size", needed_by="gpt", what="a context length")
        if c.n_embd % c.n_head:
            raise BadInput(f"plugins.gpt: n_embd={c.n_embd} is not divisible by n_head={c.n_head}; change one")
        return GPT(vocab, block, c.n_layer, c.n_head, c.n_embd, c.dropout, tie_weights=c.tie_weights)


@attrs.define
class MLPConfig:
    hidden: list[int] = field([256, 256], "hidden layer widths")
    activation: str = field("relu", "relu, gelu, tanh or silu")


class MLPModel(Plugin):
    """A multi-layer perceptron classifier; its penultimate feature is the module `features`."""

    name = "mlp"
    Config = MLPConfig
    provides = ("model",)

    @hookimpl
    def hookmix_model(self, state):
        from plugins.core.models import MLP

        c = self.config
        in_dim = state.data_info("input_dim", needed_by="mlp", what="a classification data plugin")
        try:
            return MLP(in_dim, state.data_info("num_classes", needed_by="mlp", what="a class count"), tuple(c.hidden), c.activation)
        except (ValueError, KeyError) as exc:
            raise BadInput(f"plugins.mlp: {exc}; fix the config") from None


@attrs.define
class CNN1DConfig:
    channels: int = field(25, "channels of each of the three conv layers")


class CNN1DModel(Plugin):
    """The MNIST-1D reference 1-D CNN (three strided convolutions, then a linear head)."""

    name = "cnn1d"
    Config = CNN1DConfig
    provides = ("model",)

    @hookimpl
    def hookmix_model(self, state):
        from plugins.core.models import CNN1D

        in_len = state.data_info("input_dim", needed_by="cnn1d", what="a 1-D classification data plugin")
        return CNN1D(in_len, state.data_info("num_classes", needed_by="cnn1d", what="a class count"), channels=self.config.channels)


# --- optimization ----------------------------------------------------------------------------


def schedule_factor(step: int, total: int, warmup: int, kind: str, min_ratio: float) -> float:
    """LR multiplier: linear warm-up, then cosine / linear decay to ``min_ratio`` or constant."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return min_ratio + (1 - min_ratio) * (1 - progress)


@attrs.define
class AdamWConfig:
    lr: float = field(1e-3, "peak learning rate")
    betas: list[float] = field([0.9, 0.95], "Adam betas")
    eps: float = field(1e-8, "Adam epsilon")
    weight_decay: float = field(0.0, "decoupled weight decay")
    decay_1d: bool = field(False, "also decay 1-D parameters (biases, norm gains)")
    warmup_steps: int = field(0, "linear warm-up steps")
    schedule: str = field("cosine", "cosine, linear or constant after warm-up", validator=one_of("cosine", "linear", "constant"))
    min_lr_ratio: float = field(0.1, "final learning rate as a fraction of lr")


class AdamW(Plugin):
    """AdamW with a no-decay group for 1-D parameters and a warm-up + cosine/linear schedule."""

    name = "adamw"
    Config = AdamWConfig
    provides = ("optimizer",)

    @hookimpl
    def hookmix_param_groups(self, model, state):
        c = self.config
        if c.weight_decay == 0 or c.decay_1d:
            return None
        no_decay = [p for p in [*model.parameters(), *state.modules.parameters()] if p.requires_grad and p.ndim < 2]
        return [{"name": "no_decay", "params": no_decay, "weight_decay": 0.0}] if no_decay else None

    @hookimpl
    def hookmix_optimizer(self, param_groups, state):
        c = self.config
        groups = [{k: v for k, v in g.items() if k != "name"} for g in param_groups]
        fused = state.device.type in ("cpu", "cuda")  # one kernel for all tensors: 2-3x faster step on CPU too
        return torch.optim.AdamW(groups, lr=c.lr, betas=tuple(c.betas), eps=c.eps, weight_decay=c.weight_decay, fused=fused)

    @hookimpl
    def hookmix_lr_scheduler(self, optimizer, state):
        c = self.config
        if c.schedule == "constant" and not c.warmup_steps:
            return None  # nothing to schedule: no per-step cost
        total = state.run.steps
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: schedule_factor(s, total, c.warmup_steps, c.schedule, c.min_lr_ratio))


@attrs.define
class CrossEntropyConfig:
    weight: float = field(1.0, "weight of the term")
    label_smoothing: float = field(0.0, "label smoothing")


class CrossEntropy(Plugin):
    """Cross-entropy on the model's raw logits: the supervised loss term `ce`."""

    name = "cross_entropy"
    Config = CrossEntropyConfig
    provides = ("loss:ce",)

    @hookimpl
    def hookmix_loss_terms(self, batch, outputs, state):
        logits = state.logits(outputs["logits"], role="student", consumer=self.name, kind="supervised")
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch["target"].reshape(-1),
                               label_smoothing=self.config.label_smoothing)
        return {"ce": loss if self.config.weight == 1.0 else self.config.weight * loss}  # no extra op, node
