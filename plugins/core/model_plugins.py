"""The core model plugins: ``gpt`` (a small decoder-only transformer), ``mlp`` and ``cnn1d`` (classifiers)."""

from __future__ import annotations

from typing import Literal

import attrs

from engine import BadInput, Plugin, field, hookimpl
from engine.validators import MAX_WIDTH, check_parameter_count, each, in_range, int_range, width

MAX_DEPTH = 1024  # layers / heads: a sane bound, checked before anything is allocated


@attrs.define
class GPTConfig:
    n_layer: int = field(4, "transformer blocks", validator=int_range(1, MAX_DEPTH))
    n_head: int = field(4, "attention heads", validator=int_range(1, MAX_DEPTH))
    n_embd: int = field(128, "model width", validator=width)
    block_size: int = field(0, "context length (0: the data's block size)", validator=int_range(0, MAX_WIDTH))
    dropout: float = field(0.0, "dropout probability", validator=in_range(0, 1, high_open=True))
    tie_weights: bool = field(True, "share the token embedding with the output head")


class GPTModel(Plugin):
    """A small pre-LN decoder-only transformer (nanoGPT-style) for language modelling."""

    name = "gpt"
    Config = GPTConfig

    @hookimpl
    def hookmix_configure(self, state):
        c = self.config
        if c.n_embd % c.n_head:
            raise BadInput(f"plugins.gpt: n_embd={c.n_embd} is not divisible by n_head={c.n_head}; change one")
        check_parameter_count("plugins.gpt", 12 * c.n_layer * c.n_embd**2)  # the blocks alone, before any data

    @hookimpl
    def hookmix_model(self, state):
        from plugins.core.models import GPT

        c = self.config
        vocab = state.data_info("vocab_size", needed_by="gpt", what="a language-model data plugin")
        block = c.block_size or state.data_info("block_size", needed_by="gpt", what="a context length")
        check_parameter_count("plugins.gpt", 12 * c.n_layer * c.n_embd**2 + (vocab + block) * c.n_embd)
        return GPT(vocab, block, c.n_layer, c.n_head, c.n_embd, c.dropout, tie_weights=c.tie_weights)


@attrs.define
class MLPConfig:
    hidden: list[int] = field([256, 256], "hidden layer widths", validator=each(width, max_items=MAX_DEPTH))
    activation: Literal["relu", "gelu", "tanh", "silu"] = field("relu", "activation between the layers")


class MLPModel(Plugin):
    """A multi-layer perceptron classifier; its penultimate feature is the module `features`."""

    name = "mlp"
    Config = MLPConfig

    @hookimpl
    def hookmix_configure(self, state):
        h = self.config.hidden
        check_parameter_count("plugins.mlp", sum(a * b for a, b in zip(h, h[1:])))  # hidden-to-hidden matrices

    @hookimpl
    def hookmix_model(self, state):
        from plugins.core.models import MLP

        c = self.config
        in_dim = state.data_info("input_dim", needed_by="mlp", what="a classification data plugin")
        try:
            return MLP(
                in_dim,
                state.data_info("num_classes", needed_by="mlp", what="a class count"),
                tuple(c.hidden),
                c.activation,
            )
        except (ValueError, KeyError) as exc:
            raise BadInput(f"plugins.mlp: {exc}; fix the config") from None


@attrs.define
class CNN1DConfig:
    channels: int = field(25, "channels of each of the three conv layers", validator=int_range(1, 2**16))


class CNN1DModel(Plugin):
    """The MNIST-1D reference 1-D CNN (three strided convolutions, then a linear head)."""

    name = "cnn1d"
    Config = CNN1DConfig

    @hookimpl
    def hookmix_model(self, state):
        from plugins.core.models import CNN1D

        in_len = state.data_info("input_dim", needed_by="cnn1d", what="a 1-D classification data plugin")
        return CNN1D(
            in_len,
            state.data_info("num_classes", needed_by="cnn1d", what="a class count"),
            channels=self.config.channels,
        )
