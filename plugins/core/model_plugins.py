"""The core model plugins: ``gpt`` (a small decoder-only transformer), ``mlp`` and ``cnn1d`` (classifiers)."""

from __future__ import annotations

import attrs

from engine import BadInput, Plugin, field, hookimpl


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

    @hookimpl
    def hookmix_model(self, state):
        from plugins.core.models import CNN1D

        in_len = state.data_info("input_dim", needed_by="cnn1d", what="a 1-D classification data plugin")
        return CNN1D(in_len, state.data_info("num_classes", needed_by="cnn1d", what="a class count"), channels=self.config.channels)
