"""The Lipschitz model plugins ``lipschitz_gpt`` and ``lipschitz_mlp``: they log the certified bound at every
evaluation (the ``hookmix lipschitz-*`` commands are in :mod:`.commands`)."""

from __future__ import annotations

from typing import Literal

import attrs
import torch

from engine import BadInput, Plugin, field, hookimpl
from engine.validators import MAX_WIDTH, check_parameter_count, finite_positive, int_range, width

from . import spectral as sp

RECIPES = "plugins.lipschitz.recipes"
MAX_DEPTH = 1024  # layers / heads: a sane bound, checked before anything is allocated


def certificate_metrics(model: torch.nn.Module, per_matrix: bool = False) -> dict[str, float]:
    """``lipschitz/bound`` (from the measured norms) and ``lipschitz/max_norm/<group>``."""
    out = {"lipschitz/bound": float(model.certified_bound())}
    for group, value in model.group_max_norms().items():
        out[f"lipschitz/max_norm/{group}"] = float(value)
    if per_matrix:
        for group, named in model.weight_groups().items():
            for name, p in named:
                if p.ndim == 2:
                    value = sp.max_row_rms(p) if group == "embedding" else sp.rms_to_rms_norm(p)
                    out[f"lipschitz/norm/{name.removesuffix('.weight')}"] = value
    return out


@attrs.define
class LipschitzGPTConfig:
    d_model: int = field(256, "model width", validator=width)
    n_layers: int = field(3, "transformer blocks", validator=int_range(1, MAX_DEPTH))
    n_heads: int = field(
        4, "attention heads (d_model / n_heads must be even, for RoPE)", validator=int_range(1, MAX_DEPTH)
    )
    block_size: int = field(0, "context length (0: the data's block size)", validator=int_range(0, MAX_WIDTH))
    softmax_scale: float = field(1.0, "s in the 1/d attention scores s q.k / d_head", validator=finite_positive)
    residual_scale: float = field(
        1.0, "r in the convex residual (1 - r/2L) x + r/2L block(x)", validator=finite_positive
    )
    zero_init_output: bool = field(True, "zero-init W_o, MLP out and the head (official)")
    certify: bool = field(True, "log lipschitz/bound and lipschitz/max_norm/* at every evaluation")
    log_matrix_norms: bool = field(False, "also log lipschitz/norm/<matrix> for every matrix")


class _CertifiedModel(Plugin):
    """A Lipschitz model plugin: logs its certified bound at every evaluation (config ``certify``)."""

    needs_full_weights = True  # the bound multiplies whole-matrix spectral norms: gathered under FSDP

    @hookimpl
    def hookmix_eval_metrics(self, model, state):
        if self.config.certify:
            return certificate_metrics(model, self.config.log_matrix_norms)
        return None


class LipschitzGPTModel(_CertifiedModel):
    """Lipschitz transformer (no norms, convex residuals, 1/d attention); logs its certified bound."""

    name = "lipschitz_gpt"
    Config = LipschitzGPTConfig
    recipes = RECIPES

    @hookimpl
    def hookmix_configure(self, state):
        c = self.config
        if c.d_model % c.n_heads or (c.d_model // c.n_heads) % 2:
            raise BadInput(
                f"plugins.lipschitz_gpt: d_model={c.d_model} / n_heads={c.n_heads} must be an even "
                f"integer (RoPE); change one"
            )
        check_parameter_count("plugins.lipschitz_gpt", 12 * c.n_layers * c.d_model**2)  # before any data

    @hookimpl
    def hookmix_model(self, state):
        from .models import LipschitzGPT

        c = self.config
        vocab = state.data_info("vocab_size", needed_by=self.name, what="a language-model data plugin")
        block = c.block_size or state.data_info("block_size", needed_by=self.name, what="a context length")
        check_parameter_count("plugins.lipschitz_gpt", 12 * c.n_layers * c.d_model**2 + (vocab + block) * c.d_model)
        return LipschitzGPT(
            vocab,
            c.d_model,
            c.n_layers,
            c.n_heads,
            block,
            softmax_scale=c.softmax_scale,
            residual_scale=c.residual_scale,
            zero_init_output=c.zero_init_output,
        )


@attrs.define
class LipschitzMLPConfig:
    hidden: int = field(256, "hidden width", validator=width)
    n_hidden_layers: int = field(
        2, "hidden layers (n_hidden_layers + 1 linear maps)", validator=int_range(1, MAX_DEPTH)
    )
    zero_init: Literal["last", "first", "none"] = field(
        "last", "zero-initialized layer: last, first (official; dead with ReLU) or none"
    )
    certify: bool = field(True, "log lipschitz/bound and lipschitz/max_norm/* at every evaluation")
    log_matrix_norms: bool = field(False, "also log lipschitz/norm/<matrix> for every matrix")


class LipschitzMLPModel(_CertifiedModel):
    """Bias-free ReLU MLP with spectrally constrainable layers; logs its certified bound (prod of norms)."""

    name = "lipschitz_mlp"
    Config = LipschitzMLPConfig
    recipes = RECIPES

    @hookimpl
    def hookmix_configure(self, state):
        c = self.config
        check_parameter_count("plugins.lipschitz_mlp", (c.n_hidden_layers - 1) * c.hidden**2)  # before any data

    @hookimpl
    def hookmix_model(self, state):
        from .models import LipschitzMLP

        c = self.config
        in_dim = state.data_info("input_dim", needed_by=self.name, what="a classification data plugin")
        classes = state.data_info("num_classes", needed_by=self.name, what="a class count")
        check_parameter_count(
            "plugins.lipschitz_mlp", (in_dim + classes + (c.n_hidden_layers - 1) * c.hidden) * c.hidden
        )
        try:
            return LipschitzMLP(in_dim, c.hidden, classes, c.n_hidden_layers, zero_init=c.zero_init)
        except ValueError as exc:
            raise BadInput(f"plugins.lipschitz_mlp: {exc}; fix the config") from None
