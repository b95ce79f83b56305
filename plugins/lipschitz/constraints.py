"""The weight-constraint plugins: ``spectral_normalize``, ``spectral_hammer``, ``spectral_soft_cap``,
``spectral_hard_cap`` (each provides the engine's ``WeightConstraint`` and ``"spectral_cap"``, and conflicts with
``"spectral_cap"``: at most one cap per run) and
``spectral_weight_decay`` (a regulariser, ordered before the caps, conflicts with the hammer).

Each projects once at init (``hookmix_setup_model``) and after every optimizer step
(``hookmix_after_optimizer_step``) the matrices of the model's ``weight_groups()``; the maps are in
:mod:`plugins.lipschitz.spectral`. Design choices and their reasons: docs/lipschitz.md, "Design choices".
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch

from engine import BadInput, Plugin, TrainingFailure, WeightConstraint, field, hookimpl
from engine.validators import finite_non_negative, finite_positive, in_range, int_range, subset_of

from . import constraint_maps as cm
from . import spectral as sp
from .capabilities import SPECTRAL_CAP, UpdateNormBound

RECIPES = "plugins.lipschitz.recipes"
GROUPS = ("hidden", "embedding", "head")
MATRIX_GROUPS = ("hidden", "head")
MAX_ITERS = 10_000  # power-iteration steps per matrix per step: beyond this a typo
CAPS = ("spectral_normalize", "spectral_hammer", "spectral_soft_cap", "spectral_hard_cap")


def weight_groups(model: torch.nn.Module, who: str) -> dict[str, list[tuple[str, torch.nn.Parameter]]]:
    """The model's ``weight_groups()`` (``{"hidden"|"embedding"|"head": [(name, param), ...]}``)."""
    fn = getattr(model, "weight_groups", None)
    if not callable(fn):
        raise BadInput(
            f"{who} needs a model with weight_groups() (hidden / embedding / head matrices), "
            f"but {type(model).__name__} has none; use lipschitz_gpt or lipschitz_mlp"
        )
    groups = fn()
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise BadInput(
            f"{who}: the model's weight_groups() returned unknown group {unknown[0]!r}; groups are {', '.join(GROUPS)}"
        )
    return groups


@attrs.define
class CapConfig:
    w_max: float = field(1.0, "cap on the RMS->RMS norm of every hidden matrix", validator=finite_positive)
    head_w_max: float = field(0.0, "cap on the head matrix (0: w_max)", validator=finite_non_negative)
    emb_max_rms: float = field(
        1.0, "max RMS of every embedding row, projected after every step (0: off)", validator=finite_non_negative
    )
    groups: list[str] = field(
        ["hidden", "embedding", "head"], "weight groups to constrain", validator=subset_of(*GROUPS)
    )
    project_at_init: bool = field(True, "also project once at initialization (spec §1 item 5)")


@attrs.define
class PowerCapConfig(CapConfig):
    power_iters: int = field(16, "power-iteration steps per matrix per step", validator=int_range(1, MAX_ITERS))
    warm_start: bool = field(
        True,
        "keep each matrix's power-iteration vector between steps (checkpointed); "
        "false: fresh seeded start every step (JAX)",
    )


@attrs.define
class SpectralNormalizeConfig(PowerCapConfig):
    estimator: Literal["power", "exact"] = field(
        "power", "sigma_max estimate: power (iteration, JAX default) or exact (SVD)"
    )


@attrs.define
class HardCapConfig(CapConfig):
    form: Literal["polynomial", "exact"] = field(
        "polynomial", "polynomial (4 rounds, guarded validity) or exact (msign clip formula)"
    )


@attrs.define
class SpectralWeightDecayConfig:
    strength: float = field(
        0.1,
        "fraction of the top singular value removed every step (not scaled by lr)",
        validator=in_range(0, 1, high_open=True),
    )
    emb_max_rms: float = field(
        1.0, "max RMS of every embedding row, projected after every step (0: off)", validator=finite_non_negative
    )
    groups: list[str] = field(["hidden", "embedding", "head"], "weight groups to act on", validator=subset_of(*GROUPS))
    power_iters: int = field(16, "power-iteration steps per matrix per step", validator=int_range(1, MAX_ITERS))
    warm_start: bool = field(
        True,
        "keep each matrix's power-iteration vector between steps (checkpointed); "
        "false: fresh seeded start every step (JAX)",
    )
    project_at_init: bool = field(False, "also apply once at initialization (the embedding projection)")


class _Constraint(Plugin):
    """Shared machinery: targets from weight_groups(), init + per-step application, embedding rows."""

    recipes = RECIPES
    needs_full_weights = True  # spectral norms of whole matrices: under FSDP the engine gathers them

    def __init__(self) -> None:
        super().__init__()
        self.targets: list[tuple[str, str, torch.nn.Parameter]] = []
        self.param_of: dict[str, torch.nn.Parameter] = {}  # name -> the optimizer's parameter object
        self.pi: dict[str, dict] = {}

    def constrained_parameters(self, model: torch.nn.Module) -> list[str]:
        """WeightConstraint: the parameters this plugin rewrites (set up in hookmix_setup_model)."""
        return [name for _, name, _ in self.targets]

    # hooks

    @hookimpl
    def hookmix_configure(self, state):
        self.validate(state)  # the per-field rules are the configs' validators; this checks across plugins

    @hookimpl
    def hookmix_setup_model(self, model, state):
        groups = weight_groups(model, self.name)
        self.targets = [(g, n, p) for g in self.config.groups for n, p in groups.get(g, [])]
        if self.config.project_at_init:
            with torch.no_grad():
                self._apply(None, init=True)

    @hookimpl
    def hookmix_on_train_start(self, state):
        # FSDP replaced the parameters after setup_model (sharded DTensors): follow them by name
        live = dict(state.model.named_parameters())
        self.targets = [(g, n, live.get(n, p)) for g, n, p in self.targets]
        self.param_of = {n: p for _, n, p in self.targets}
        self.check_optimizer(state.optimizer)

    @hookimpl
    def hookmix_after_optimizer_step(self, model, optimizer, state):
        self._apply(optimizer, init=False, model=model)

    @hookimpl
    def hookmix_plugin_state(self, state):
        if not getattr(self.config, "warm_start", False):
            return None
        return {"pi": {name: {k: v.detach().cpu().clone() for k, v in s.items()} for name, s in self.pi.items()}}

    @hookimpl
    def hookmix_load_plugin_state(self, plugin_state, state):
        devices = {name: p.device for _, name, p in self.targets}
        self.pi = {
            name: {k: v.to(devices.get(name, "cpu")) for k, v in s.items()}
            for name, s in plugin_state.get("pi", {}).items()
        }

    # helpers

    def _apply(self, optimizer, init: bool, model=None) -> None:
        # the model's current tensor of each target: under FSDP the engine's gathered full matrix
        live = dict(model.named_parameters()) if model is not None else {}
        emb = getattr(self.config, "emb_max_rms", 0.0)
        for group, name, p in self.targets:
            p = live.get(name, p)
            if group == "embedding":
                if emb > 0 and p.ndim == 2:
                    p.copy_(cm.project_embedding_rows(p, emb))
                continue
            if p.ndim != 2:
                continue
            new = self.init_map(p, group, name) if init else self.step_map(p, group, name, optimizer)
            if new is not None:
                p.copy_(new)

    def cap(self, group: str) -> float:
        c = self.config
        return c.head_w_max if group == "head" and c.head_w_max > 0 else c.w_max

    def pi_state(self, name: str) -> dict | None:
        if not getattr(self.config, "warm_start", False):
            return None
        return self.pi.setdefault(name, {})

    def validate(self, state) -> None:
        """Checks that need the other plugins (the config's own rules are its field validators)."""

    def check_optimizer(self, optimizer) -> None:
        pass

    def step_map(self, p, group: str, name: str, optimizer) -> torch.Tensor | None:
        raise NotImplementedError

    def init_map(self, p, group: str, name: str) -> torch.Tensor | None:
        return self.step_map(p, group, name, None)


class SpectralNormalize(_Constraint):
    """Spectral normalization as a projection: W <- W / max(1, sigma_max/w_max) after every step."""

    name = "spectral_normalize"
    Config = SpectralNormalizeConfig
    provides = (WeightConstraint, SPECTRAL_CAP)
    conflicts = (SPECTRAL_CAP,)

    def step_map(self, p, group, name, optimizer):
        c = self.config
        return cm.spectral_normalize(
            p, self.cap(group), iters=c.power_iters, pi_state=self.pi_state(name), exact=c.estimator == "exact"
        )


class SpectralHammer(_Constraint):
    """Spectral hammer: sets the top singular value to w_max every step (not a cap under Muon)."""

    name = "spectral_hammer"
    Config = PowerCapConfig
    provides = (WeightConstraint, SPECTRAL_CAP)
    conflicts = (SPECTRAL_CAP,)

    def step_map(self, p, group, name, optimizer):
        return cm.spectral_hammer(p, self.cap(group), iters=self.config.power_iters, pi_state=self.pi_state(name))


class SpectralHardCap(_Constraint):
    """Spectral hard cap: sigma -> ~min(w_max, sigma) by an odd polynomial (guarded) or the exact formula."""

    name = "spectral_hard_cap"
    Config = HardCapConfig
    provides = (WeightConstraint, SPECTRAL_CAP)
    conflicts = (SPECTRAL_CAP,)

    def step_map(self, p, group, name, optimizer):
        if self.config.form == "exact":
            return cm.spectral_clip_exact(p, self.cap(group))
        return cm.spectral_hard_cap(p, self.cap(group))


class SpectralSoftCap(_Constraint):
    """Spectral soft cap coupled to Muon's update norm: a certified cap at w_max (co-designed method)."""

    name = "spectral_soft_cap"
    Config = CapConfig
    provides = (WeightConstraint, SPECTRAL_CAP)
    conflicts = (SPECTRAL_CAP,)
    requires = (UpdateNormBound,)

    def __init__(self) -> None:
        super().__init__()
        self._alpha_cache: dict[tuple[float, float, float], float] = {}

    def validate(self, state):
        super().validate(state)
        provider = state.provider(UpdateNormBound)  # required: the engine checked it is enabled
        bound = provider.peak_update_norm
        for group in MATRIX_GROUPS:
            if group not in self.config.groups:
                continue
            eta = bound(group)
            if eta is None:
                raise BadInput(
                    f"spectral_soft_cap: the {group} matrices are not updated by {provider.name}'s "
                    f"bounded (Muon) update; enable it there (e.g. plugins.muon.claim_head=true) "
                    f"or remove {group!r} from plugins.spectral_soft_cap.groups"
                )
            ratio = eta / self.cap(group)
            if ratio > sp.SOFT_CAP_MAX_RATIO:
                raise BadInput(
                    f"spectral_soft_cap: eta/w_max = {eta:.4g}/{self.cap(group):g} = {ratio:.3f} > "
                    f"{sp.SOFT_CAP_MAX_RATIO} for the {group} matrices (eta = peak lr x NS overshoot "
                    f"x margin), so the cap would not be a certificate; lower plugins.{provider.name}.lr "
                    f"or raise the cap"
                )

    def check_optimizer(self, optimizer):
        fn = getattr(optimizer, "max_update_norm", None)
        if fn is None:
            raise BadInput(
                f"spectral_soft_cap: the optimizer {type(optimizer).__name__} has no "
                f"max_update_norm(param); use the muon plugin"
            )
        for group, name, p in self.targets:
            if group in MATRIX_GROUPS and p.ndim == 2:
                try:
                    fn(p)
                except KeyError:
                    raise BadInput(
                        f"spectral_soft_cap: {name} is not updated by Muon, so its update norm is "
                        f"unbounded; remove {group!r} from plugins.spectral_soft_cap.groups"
                    ) from None

    def init_map(self, p, group, name):
        if sp.rms_to_rms_norm(p) <= self.cap(group):
            return None  # already within the cap: leave the init bit-identical
        return cm.svd_clip(p, self.cap(group))  # no update to couple to: clip exactly once

    def step_map(self, p, group, name, optimizer):
        owned = self.param_of.get(name, p)  # the optimizer knows its own parameter object, not a gathered copy
        eta = float(optimizer.max_update_norm(owned))
        decay = getattr(optimizer, "decay_fraction", None)
        wd = float(decay(owned)) if decay is not None else 0.0  # 0 is conservative: k = w_max + eta
        key = (self.cap(group), wd, eta)
        alpha = self._alpha_cache.get(key)
        if alpha is None:
            try:
                alpha = cm.soft_cap_coupling(*key)
            except ValueError as exc:
                raise TrainingFailure(f"spectral_soft_cap on {name}: {exc}") from None
            if len(self._alpha_cache) > 4096:
                self._alpha_cache.clear()
            self._alpha_cache[key] = alpha
        return cm.soft_cap(p, alpha) if alpha > 0 else None


class SpectralWeightDecay(_Constraint):
    """Spectral weight decay: shrinks only the top singular value by a fixed fraction every step."""

    name = "spectral_weight_decay"
    Config = SpectralWeightDecayConfig
    before = (WeightConstraint,)
    conflicts = ("spectral_hammer",)  # the hammer resets sigma_1 to w_max right after: the decay is void

    def init_map(self, p, group, name):
        return None  # only the embedding rows are projected at init

    def step_map(self, p, group, name, optimizer):
        c = self.config
        return cm.spectral_weight_decay(p, c.strength, iters=c.power_iters, pi_state=self.pi_state(name))
