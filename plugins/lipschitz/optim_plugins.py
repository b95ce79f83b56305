"""The ``muon`` optimizer plugin: :class:`~plugins.lipschitz.muon.MuonAdamW` (Muon for hidden matrices, AdamW
for the rest), which also provides ``"update_norm_bound"`` for the spectral soft cap (docs/lipschitz.md)."""

from __future__ import annotations

from typing import Literal

import attrs
import torch

from engine import Plugin, field, hookimpl
from engine.validators import MAX_MAGNITUDE, bounded, each, finite_non_negative, finite_positive, in_range, int_range
from plugins.core.schedule import schedule_factor

from . import spectral as sp
from .capabilities import UpdateNormBound

RECIPES = "plugins.lipschitz.recipes"


@attrs.define
class MuonConfig:
    lr: float = field(
        0.02, "nominal Muon lr = RMS->RMS norm of each matrix update (before NS overshoot)", validator=finite_positive
    )
    head_lr: float = field(0.0, "Muon lr of the head matrix (0: lr)", validator=finite_non_negative)
    momentum: float = field(
        0.95,
        "momentum (EMA m <- mu m + (1-mu) g); the JAX reference uses 0.9",
        validator=in_range(0, 1, high_open=True),
    )
    nesterov: bool = field(True, "Nesterov momentum (torch/Keller default); the JAX reference uses false")
    weight_decay: float = field(
        0.0,
        "decoupled weight decay tied to the lr: W <- W (1 - lr wd); 0 for the soft cap",
        validator=finite_non_negative,
    )
    ns_coefficients: list[float] = field(
        [3.4445, -4.775, 2.0315],
        "Newton-Schulz (a, b, c) of torch.optim.Muon",
        validator=each(bounded, min_items=3, max_items=3),
    )
    ns_steps: int = field(5, "Newton-Schulz rounds", validator=int_range(1, 100))
    overshoot_margin: float = field(
        1.05, "safety factor on the NS overshoot in the update-norm bound", validator=in_range(1, MAX_MAGNITUDE)
    )
    claim_head: bool = field(True, "optimize the head matrix with Muon (else AdamW, and the soft cap cannot cap it)")
    adam_lr: float = field(
        3e-3, "AdamW lr for everything Muon does not take (embeddings, gains, biases)", validator=finite_non_negative
    )
    adam_betas: list[float] = field(
        [0.9, 0.95], "AdamW betas", validator=each(in_range(0, 1, high_open=True), min_items=2, max_items=2)
    )
    adam_eps: float = field(1e-8, "AdamW epsilon", validator=finite_positive)
    adam_weight_decay: float = field(0.0, "AdamW decoupled weight decay", validator=finite_non_negative)
    warmup_steps: int = field(0, "linear warm-up steps", validator=int_range(0, 2**62))
    schedule: Literal["linear", "cosine", "constant"] = field("linear", "learning-rate decay after warm-up")
    final_lr_ratio: float = field(
        0.0, "final lr as a fraction of the peak (0 as in the paper)", validator=in_range(0, 1)
    )


class Muon(Plugin):
    """Muon for hidden 2-D matrices + AdamW for the rest, shape-correct update scale, update-norm bound."""

    name = "muon"
    Config = MuonConfig
    provides = (UpdateNormBound,)
    recipes = RECIPES
    # Newton-Schulz orthogonalises whole matrices: under FSDP torch.optim.Muon gets DTensor parameters, and
    # DTensor's matmuls gather what they need, so the update is the unsharded one (tests/distributed/test_fsdp.py)
    needs_full_weights = True

    def group_lr(self, group: str) -> float:
        c = self.config
        return c.head_lr if group == "head" and c.head_lr > 0 else c.lr

    def peak_update_norm(self, group: str) -> float | None:
        """RMS->RMS bound of the largest update of a ``group`` matrix over the run (peak lr), or None
        when that group is not Muon-updated. Used by spectral_soft_cap's eta/w_max check."""
        if group == "head" and not self.config.claim_head:
            return None
        c = self.config
        return self.group_lr(group) * sp.ns_overshoot(tuple(c.ns_coefficients), steps=c.ns_steps) * c.overshoot_margin

    @hookimpl
    def hookmix_param_groups(self, model, state):
        fn = getattr(model, "weight_groups", None)
        if callable(fn):
            groups = fn()
            hidden = [p for _, p in groups.get("hidden", []) if p.ndim == 2 and p.requires_grad]
            head = [p for _, p in groups.get("head", []) if p.ndim == 2 and p.requires_grad]
        else:  # any model: 2-D matrices, except embeddings and the last Linear (the head) -- Keller's rule
            embeds = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
            linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
            last = id(linears[-1].weight) if linears else None
            head = [linears[-1].weight] if linears and last not in embeds and linears[-1].weight.requires_grad else []
            hidden = [
                p
                for p in model.parameters()
                if p.ndim == 2 and p.requires_grad and id(p) not in embeds and id(p) != last
            ]
        out = [{"name": "muon", "params": hidden, "muon": True}] if hidden else []
        if head and self.config.claim_head:
            out.append({"name": "muon_head", "params": head, "muon": True, "lr": self.group_lr("head")})
        return out

    @hookimpl
    def hookmix_optimizer(self, param_groups, state):
        from .muon import MuonAdamW

        c = self.config
        names = {id(p): n for n, p in state.model.named_parameters()}
        muon, adam = [], []
        for g in param_groups:
            if g.get("muon"):
                spec = {"params": [(names.get(id(p)), p) for p in g["params"]]}
                if "lr" in g:
                    spec["lr"] = g["lr"]
                muon.append(spec)
            elif g["params"]:
                adam.append({k: v for k, v in g.items() if k != "muon"})
        return MuonAdamW(
            muon,
            adam,
            lr=c.lr,
            adam_lr=c.adam_lr,
            momentum=c.momentum,
            nesterov=c.nesterov,
            weight_decay=c.weight_decay,
            adam_betas=tuple(c.adam_betas),
            adam_eps=c.adam_eps,
            adam_weight_decay=c.adam_weight_decay,
            ns_coefficients=tuple(c.ns_coefficients),
            ns_steps=c.ns_steps,
            overshoot_margin=c.overshoot_margin,
        )

    @hookimpl
    def hookmix_lr_scheduler(self, optimizer, state):
        c = self.config
        total = state.run.steps
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: schedule_factor(s, total, c.warmup_steps, c.schedule, c.final_lr_ratio)
        )
