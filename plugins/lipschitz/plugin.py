"""Engine wiring of the Lipschitz package: weight constraints, Muon, Lipschitz models, certificate.

Plugins (entry points in ``pyproject.toml``; docs in ``docs/lipschitz.md``):

* constraints ``spectral_normalize``, ``spectral_hammer``, ``spectral_soft_cap``, ``spectral_hard_cap``
  (each provides ``"weight_constraint"`` and conflicts with it: at most one of them per run) and
  ``spectral_weight_decay`` (a regulariser, ordered *before* the caps, conflicts with the hammer);
* the optimizer ``muon`` (``MuonAdamW``: Muon for hidden matrices, AdamW for the rest), which provides
  ``"update_norm_bound"`` for the soft cap;
* the models ``lipschitz_gpt`` and ``lipschitz_mlp``, which also log the certified bound at every
  evaluation and ship the ``hookmix lipschitz-check / lipschitz-sweep / lipschitz-bench`` commands.

Where each constraint runs. ``hookmix_setup_model`` projects once at init (spec §1 item 5; a resume
then overwrites the weights with the checkpoint's) and ``hookmix_after_optimizer_step`` after every
real optimizer step (the engine calls it once per step, after all accumulation micro-batches, under
``no_grad``, before the scheduler step, evaluation and checkpointing). Targets come from the model's
``weight_groups()`` -- ``hidden`` / ``head`` matrices get the spectral method with ``w_max`` /
``head_w_max``; the ``embedding`` rows are projected to RMS <= ``emb_max_rms`` after every step
whatever the spectral method (spec §4.8). A model without ``weight_groups()`` is bad input.

Design choices (spec §1), made deliberately:

1. **Soft-cap coupling includes the orthogonalizer's overshoot.** The soft cap reads
   ``optimizer.max_update_norm(p)`` = nominal lr x NS overshoot (1.2024 for torch.optim.Muon's Keller
   NS5) x 1.05 margin (bf16 Newton-Schulz measured 1.2039), recorded at ``step()`` time, and
   ``optimizer.decay_fraction(p)`` (lr x wd). Without the overshoot the cap is not a certificate.
2. **Update scale** ``lr * sqrt(fan_out/fan_in) * NS(m)`` for every shape (``MuonAdamW`` sets a
   per-matrix lr factor on top of torch.optim.Muon), so ``lr`` is the RMS->RMS size of the update.
3. **eta, not eta/s, in the coupling**: the true RMS->RMS bound of the update (the JAX code passes
   eta/s, which under-caps wide matrices and over-caps tall ones).
4. **Projections in fp32.** Master weights stay fp32 (bf16 is autocast only); every map upcasts,
   computes in fp32 and writes back (``spectral`` module). A bf16 run keeps the invariant (tested).
5. **Project at init** in ``hookmix_setup_model``. Every method uses its own map there, except the
   soft cap, which has no update to couple to and uses the exact SVD clip once (only matrices above the cap).
6. **Hard cap: the polynomial, with a guarded validity range.** The 4-round polynomial (12 matmuls)
   diverges for sigma > ~3.5 w_max; before applying it a rigorous cheap upper bound on sigma_max is
   computed and, when it exceeds 3 w_max, the exact SVD clip is used instead (``form="exact"``
   selects the exact msign clip formula for every step). The polynomial overshoots by <= 1.1%.
7. **The hammer is not a cap** under Muon's full-rank updates (sigma_2 can exceed w_max). It is
   offered (paired with AdamW as the authors did), never used to certify anything.
8. **Certificate from measured norms.** ``lipschitz/bound`` is computed at every evaluation from the
   exact (SVD) RMS->RMS norms of the current weights, never from w_max.
9. **softmax_scale multiplies the whole attention term** (V path included), as the official formula.
10. **Convex residuals** ``(1 - 1/(2L)) x + 1/(2L) block(x)`` as both official codes (not x + block/L).
11. **Embedding constraint by explicit projection of every row** after every step (not
    ``nn.Embedding(max_norm)``, which only renormalises looked-up rows).
12. **Weight decay 0 with the soft cap** (``muon.weight_decay`` defaults to 0, unlike torch's 0.1);
    a non-zero decay is still handled exactly by the coupling (``k = w_max (1 - lr wd) + eta``).

Power iteration (normalize / hammer / spectral weight decay): **warm start** by default -- each
matrix keeps its vector between steps (16 iterations per step on top of all earlier ones), stored in
the plugin state and checkpointed, so a resume is bit-exact. Chosen over the JAX code's fresh start
(``warm_start = false``: start vector seeded by the matrix shape, stateless) because Muon's flat
spectra make 16 fresh iterations converge poorly (fresh starts overshot the cap several times more
than warm starts in exploratory runs; the tests hold warm-started normalization within 5% of the cap
after every step). Power iteration *under*-estimates
sigma_max, so spectral normalization caps only to its convergence error (``estimator = "exact"``
measures by SVD and caps exactly).
"""

from __future__ import annotations


import attrs
import torch

from engine import BadInput, Command, Plugin, TrainingFailure, field, hookimpl
from plugins.core.plugin import schedule_factor

from . import spectral as sp

RECIPES = "plugins.lipschitz.recipes"
GROUPS = ("hidden", "embedding", "head")
MATRIX_GROUPS = ("hidden", "head")
CAPS = ("spectral_normalize", "spectral_hammer", "spectral_soft_cap", "spectral_hard_cap")


def weight_groups(model: torch.nn.Module, who: str) -> dict[str, list[tuple[str, torch.nn.Parameter]]]:
    """The model's ``weight_groups()`` (``{"hidden"|"embedding"|"head": [(name, param), ...]}``)."""
    fn = getattr(model, "weight_groups", None)
    if not callable(fn):
        raise BadInput(f"{who} needs a model with weight_groups() (hidden / embedding / head matrices), "
                       f"but {type(model).__name__} has none; use lipschitz_gpt or lipschitz_mlp")
    groups = fn()
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise BadInput(f"{who}: the model's weight_groups() returned unknown group {unknown[0]!r}; "
                       f"groups are {', '.join(GROUPS)}")
    return groups


# --- constraints -------------------------------------------------------------------------------


def _check_groups(who: str, groups: list[str]) -> None:
    for g in groups:
        if g not in GROUPS:
            raise BadInput(f"plugins.{who}.groups: unknown group {g!r}; choose from {', '.join(GROUPS)}")


@attrs.define
class CapConfig:
    w_max: float = field(1.0, "cap on the RMS->RMS norm of every hidden matrix")
    head_w_max: float = field(0.0, "cap on the head matrix (0: w_max)")
    emb_max_rms: float = field(1.0, "max RMS of every embedding row, projected after every step (0: off)")
    groups: list[str] = field(["hidden", "embedding", "head"], "weight groups to constrain (hidden, embedding, head)")
    project_at_init: bool = field(True, "also project once at initialization (spec §1 item 5)")


@attrs.define
class PowerCapConfig(CapConfig):
    power_iters: int = field(16, "power-iteration steps per matrix per step")
    warm_start: bool = field(True, "keep each matrix's power-iteration vector between steps (checkpointed); "
                                   "false: fresh seeded start every step (JAX)")


@attrs.define
class SpectralNormalizeConfig(PowerCapConfig):
    estimator: str = field("power", "sigma_max estimate: power (iteration, JAX default) or exact (SVD)")


@attrs.define
class HardCapConfig(CapConfig):
    form: str = field("polynomial", "polynomial (4 rounds, guarded validity) or exact (msign clip formula)")


@attrs.define
class SpectralWeightDecayConfig:
    strength: float = field(0.1, "fraction of the top singular value removed every step (not scaled by lr)")
    emb_max_rms: float = field(1.0, "max RMS of every embedding row, projected after every step (0: off)")
    groups: list[str] = field(["hidden", "embedding", "head"], "weight groups to act on (hidden, embedding, head)")
    power_iters: int = field(16, "power-iteration steps per matrix per step")
    warm_start: bool = field(True, "keep each matrix's power-iteration vector between steps (checkpointed); "
                                   "false: fresh seeded start every step (JAX)")
    project_at_init: bool = field(False, "also apply once at initialization (the embedding projection)")


class _Constraint(Plugin):
    """Shared machinery: targets from weight_groups(), init + per-step application, embedding rows."""

    recipes = RECIPES

    def __init__(self) -> None:
        super().__init__()
        self.targets: list[tuple[str, str, torch.nn.Parameter]] = []
        self.pi: dict[str, dict] = {}

    # hooks

    @hookimpl
    def hookmix_configure(self, state):
        c = self.config
        _check_groups(self.name, c.groups)
        if getattr(c, "emb_max_rms", 0.0) < 0:
            raise BadInput(f"plugins.{self.name}.emb_max_rms={c.emb_max_rms} must be >= 0 (0 disables it)")
        if hasattr(c, "power_iters") and c.power_iters < 1:
            raise BadInput(f"plugins.{self.name}.power_iters={c.power_iters} must be >= 1")
        self.validate(state)

    @hookimpl
    def hookmix_setup_model(self, model, state):
        groups = weight_groups(model, self.name)
        self.targets = [(g, n, p) for g in self.config.groups for n, p in groups.get(g, [])]
        if self.config.project_at_init:
            with torch.no_grad():
                self._apply(None, init=True)

    @hookimpl
    def hookmix_on_train_start(self, state):
        self.check_optimizer(state.optimizer)

    @hookimpl
    def hookmix_after_optimizer_step(self, model, optimizer, state):
        self._apply(optimizer, init=False)

    @hookimpl
    def hookmix_plugin_state(self, state):
        if not getattr(self.config, "warm_start", False):
            return None
        return {"pi": {name: {k: v.detach().cpu().clone() for k, v in s.items()} for name, s in self.pi.items()}}

    @hookimpl
    def hookmix_load_plugin_state(self, plugin_state, state):
        devices = {name: p.device for _, name, p in self.targets}
        self.pi = {name: {k: v.to(devices.get(name, "cpu")) for k, v in s.items()}
                   for name, s in plugin_state.get("pi", {}).items()}

    # helpers

    def _apply(self, optimizer, init: bool) -> None:
        emb = getattr(self.config, "emb_max_rms", 0.0)
        for group, name, p in self.targets:
            if group == "embedding":
                if emb > 0 and p.ndim == 2:
                    p.copy_(sp.project_embedding_rows(p, emb))
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
        c = self.config
        if hasattr(c, "w_max"):
            if c.w_max <= 0:
                raise BadInput(f"plugins.{self.name}.w_max={c.w_max} must be > 0")
            if c.head_w_max < 0:
                raise BadInput(f"plugins.{self.name}.head_w_max={c.head_w_max} must be >= 0 (0: w_max)")

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
    provides = ("weight_constraint",)
    conflicts = ("weight_constraint",)

    def validate(self, state):
        super().validate(state)
        if self.config.estimator not in ("power", "exact"):
            raise BadInput(f"plugins.spectral_normalize.estimator={self.config.estimator!r}; choose power or exact")

    def step_map(self, p, group, name, optimizer):
        c = self.config
        return sp.spectral_normalize(p, self.cap(group), iters=c.power_iters, pi_state=self.pi_state(name),
                                     exact=c.estimator == "exact")


class SpectralHammer(_Constraint):
    """Spectral hammer: sets the top singular value to w_max every step (not a cap under Muon)."""

    name = "spectral_hammer"
    Config = PowerCapConfig
    provides = ("weight_constraint",)
    conflicts = ("weight_constraint",)

    def step_map(self, p, group, name, optimizer):
        return sp.spectral_hammer(p, self.cap(group), iters=self.config.power_iters, pi_state=self.pi_state(name))


class SpectralHardCap(_Constraint):
    """Spectral hard cap: sigma -> ~min(w_max, sigma) by an odd polynomial (guarded) or the exact formula."""

    name = "spectral_hard_cap"
    Config = HardCapConfig
    provides = ("weight_constraint",)
    conflicts = ("weight_constraint",)

    def validate(self, state):
        super().validate(state)
        if self.config.form not in ("polynomial", "exact"):
            raise BadInput(f"plugins.spectral_hard_cap.form={self.config.form!r}; choose polynomial or exact")

    def step_map(self, p, group, name, optimizer):
        if self.config.form == "exact":
            return sp.spectral_clip_exact(p, self.cap(group))
        return sp.spectral_hard_cap(p, self.cap(group))


class SpectralSoftCap(_Constraint):
    """Spectral soft cap coupled to Muon's update norm: a certified cap at w_max (co-designed method)."""

    name = "spectral_soft_cap"
    Config = CapConfig
    provides = ("weight_constraint",)
    conflicts = ("weight_constraint",)
    requires = ("update_norm_bound",)

    def __init__(self) -> None:
        super().__init__()
        self._alpha_cache: dict[tuple[float, float, float], float] = {}

    def validate(self, state):
        super().validate(state)
        provider = state.provider("update_norm_bound")
        bound = getattr(provider, "peak_update_norm", None)
        if bound is None:
            raise BadInput("spectral_soft_cap needs an optimizer plugin with peak_update_norm(group) "
                           "(provides 'update_norm_bound'); use muon")
        for group in MATRIX_GROUPS:
            if group not in self.config.groups:
                continue
            eta = bound(group)
            if eta is None:
                raise BadInput(f"spectral_soft_cap: the {group} matrices are not updated by {provider.name}'s "
                               f"bounded (Muon) update; enable it there (e.g. plugins.muon.claim_head=true) "
                               f"or remove {group!r} from plugins.spectral_soft_cap.groups")
            ratio = eta / self.cap(group)
            if ratio > sp.SOFT_CAP_MAX_RATIO:
                raise BadInput(f"spectral_soft_cap: eta/w_max = {eta:.4g}/{self.cap(group):g} = {ratio:.3f} > "
                               f"{sp.SOFT_CAP_MAX_RATIO} for the {group} matrices (eta = peak lr x NS overshoot "
                               f"x margin), so the cap would not be a certificate; lower plugins.{provider.name}.lr "
                               f"or raise the cap")

    def check_optimizer(self, optimizer):
        fn = getattr(optimizer, "max_update_norm", None)
        if fn is None:
            raise BadInput(f"spectral_soft_cap: the optimizer {type(optimizer).__name__} has no "
                           f"max_update_norm(param); use the muon plugin")
        for group, name, p in self.targets:
            if group in MATRIX_GROUPS and p.ndim == 2:
                try:
                    fn(p)
                except KeyError:
                    raise BadInput(f"spectral_soft_cap: {name} is not updated by Muon, so its update norm is "
                                   f"unbounded; remove {group!r} from plugins.spectral_soft_cap.groups") from None

    def init_map(self, p, group, name):
        if sp.rms_to_rms_norm(p) <= self.cap(group):
            return None  # already within the cap: leave the init bit-identical
        return sp.svd_clip(p, self.cap(group))  # no update to couple to: clip exactly once

    def step_map(self, p, group, name, optimizer):
        eta = float(optimizer.max_update_norm(p))
        decay = getattr(optimizer, "decay_fraction", None)
        wd = float(decay(p)) if decay is not None else 0.0  # 0 is conservative: k = w_max + eta
        key = (self.cap(group), wd, eta)
        alpha = self._alpha_cache.get(key)
        if alpha is None:
            try:
                alpha = sp.soft_cap_coupling(*key)
            except ValueError as exc:
                raise TrainingFailure(f"spectral_soft_cap on {name}: {exc}") from None
            if len(self._alpha_cache) > 4096:
                self._alpha_cache.clear()
            self._alpha_cache[key] = alpha
        return sp.soft_cap(p, alpha) if alpha > 0 else None


class SpectralWeightDecay(_Constraint):
    """Spectral weight decay: shrinks only the top singular value by a fixed fraction every step."""

    name = "spectral_weight_decay"
    Config = SpectralWeightDecayConfig
    before = CAPS
    conflicts = ("spectral_hammer",)  # the hammer resets sigma_1 to w_max right after: the decay is void

    def validate(self, state):
        if not 0.0 <= self.config.strength < 1.0:
            raise BadInput(f"plugins.spectral_weight_decay.strength={self.config.strength} must be in [0, 1)")

    def init_map(self, p, group, name):
        return None  # only the embedding rows are projected at init

    def step_map(self, p, group, name, optimizer):
        c = self.config
        return sp.spectral_weight_decay(p, c.strength, iters=c.power_iters, pi_state=self.pi_state(name))


# --- Muon ----------------------------------------------------------------------------------------


@attrs.define
class MuonConfig:
    lr: float = field(0.02, "nominal Muon lr = RMS->RMS norm of each matrix update (before NS overshoot)")
    head_lr: float = field(0.0, "Muon lr of the head matrix (0: lr)")
    momentum: float = field(0.95, "momentum (EMA m <- mu m + (1-mu) g); the JAX reference uses 0.9")
    nesterov: bool = field(True, "Nesterov momentum (torch/Keller default); the JAX reference uses false")
    weight_decay: float = field(0.0, "decoupled weight decay tied to the lr: W <- W (1 - lr wd); 0 for the soft cap")
    ns_coefficients: list[float] = field([3.4445, -4.775, 2.0315], "Newton-Schulz (a, b, c) of torch.optim.Muon")
    ns_steps: int = field(5, "Newton-Schulz rounds")
    overshoot_margin: float = field(1.05, "safety factor on the NS overshoot in the update-norm bound")
    claim_head: bool = field(True, "optimize the head matrix with Muon (else AdamW, and the soft cap cannot cap it)")
    adam_lr: float = field(3e-3, "AdamW lr for everything Muon does not take (embeddings, gains, biases)")
    adam_betas: list[float] = field([0.9, 0.95], "AdamW betas")
    adam_eps: float = field(1e-8, "AdamW epsilon")
    adam_weight_decay: float = field(0.0, "AdamW decoupled weight decay")
    warmup_steps: int = field(0, "linear warm-up steps")
    schedule: str = field("linear", "after warm-up: linear, cosine or constant")
    final_lr_ratio: float = field(0.0, "final lr as a fraction of the peak (0 as in the paper)")


class Muon(Plugin):
    """Muon for hidden 2-D matrices + AdamW for the rest, shape-correct update scale, update-norm bound."""

    name = "muon"
    Config = MuonConfig
    provides = ("optimizer", "update_norm_bound")
    recipes = RECIPES

    @hookimpl
    def hookmix_configure(self, state):
        c = self.config
        if c.lr <= 0 or c.head_lr < 0 or c.adam_lr < 0:
            raise BadInput("plugins.muon: lr must be > 0 and head_lr, adam_lr >= 0; fix the values")
        if c.schedule not in ("linear", "cosine", "constant"):
            raise BadInput(f"plugins.muon.schedule={c.schedule!r}; choose linear, cosine or constant")
        if len(c.ns_coefficients) != 3 or len(c.adam_betas) != 2:
            raise BadInput("plugins.muon: ns_coefficients needs 3 numbers (a, b, c) and adam_betas 2")
        if not 0.0 <= c.final_lr_ratio <= 1.0 or c.weight_decay < 0:
            raise BadInput("plugins.muon: final_lr_ratio must be in [0, 1] and weight_decay >= 0")

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
            hidden = [p for p in model.parameters() if p.ndim == 2 and p.requires_grad
                      and id(p) not in embeds and id(p) != last]
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
        return MuonAdamW(muon, adam, lr=c.lr, adam_lr=c.adam_lr, momentum=c.momentum, nesterov=c.nesterov,
                         weight_decay=c.weight_decay, adam_betas=tuple(c.adam_betas), adam_eps=c.adam_eps,
                         adam_weight_decay=c.adam_weight_decay, ns_coefficients=tuple(c.ns_coefficients),
                         ns_steps=c.ns_steps, overshoot_margin=c.overshoot_margin)

    @hookimpl
    def hookmix_lr_scheduler(self, optimizer, state):
        c = self.config
        total = state.run.steps
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: schedule_factor(s, total, c.warmup_steps, c.schedule, c.final_lr_ratio))


# --- models and the certificate --------------------------------------------------------------------


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
    d_model: int = field(256, "model width")
    n_layers: int = field(3, "transformer blocks")
    n_heads: int = field(4, "attention heads (d_model / n_heads must be even, for RoPE)")
    block_size: int = field(0, "context length (0: the data's block size)")
    softmax_scale: float = field(1.0, "s in the 1/d attention scores s q.k / d_head")
    residual_scale: float = field(1.0, "r in the convex residual (1 - r/2L) x + r/2L block(x)")
    zero_init_output: bool = field(True, "zero-init W_o, MLP out and the head (official)")
    certify: bool = field(True, "log lipschitz/bound and lipschitz/max_norm/* at every evaluation")
    log_matrix_norms: bool = field(False, "also log lipschitz/norm/<matrix> for every matrix")


class _CertifiedModel(Plugin):
    """A Lipschitz model plugin: logs its certified bound at every evaluation (config ``certify``)."""

    @hookimpl
    def hookmix_eval_metrics(self, model, state):
        if self.config.certify:
            return certificate_metrics(model, self.config.log_matrix_norms)
        return None


class LipschitzGPTModel(_CertifiedModel):
    """Lipschitz transformer (no norms, convex residuals, 1/d attention); logs its certified bound."""

    name = "lipschitz_gpt"
    Config = LipschitzGPTConfig
    provides = ("model", "lipschitz_certificate")
    recipes = RECIPES

    @hookimpl
    def hookmix_model(self, state):
        from .models import LipschitzGPT

        c = self.config
        vocab = state.data_info("vocab_size", needed_by=self.name, what="a language-model data plugin")
        block = c.block_size or state.data_info("block_size", needed_by=self.name, what="a context length")
        if c.d_model % c.n_heads or (c.d_model // c.n_heads) % 2:
            raise BadInput(f"plugins.lipschitz_gpt: d_model={c.d_model} / n_heads={c.n_heads} must be an even "
                           f"integer (RoPE); change one")
        if min(c.d_model, c.n_layers, c.n_heads) < 1 or c.softmax_scale <= 0:
            raise BadInput("plugins.lipschitz_gpt: d_model, n_layers, n_heads must be >= 1, softmax_scale > 0")
        return LipschitzGPT(vocab, c.d_model, c.n_layers, c.n_heads, block, softmax_scale=c.softmax_scale,
                            residual_scale=c.residual_scale, zero_init_output=c.zero_init_output)

    @hookimpl
    def hookmix_commands(self):
        from . import commands

        return {
            "lipschitz-check": Command("compare a run's certified Lipschitz bound with an empirical estimate",
                                       commands.check_arguments, commands.check),
            "lipschitz-sweep": Command("sweep constraint methods on the CPU recipe; plot accuracy vs bound",
                                       commands.sweep_arguments, commands.sweep),
            "lipschitz-bench": Command("cost of each weight constraint vs an SVD clip and a Muon step",
                                       commands.bench_arguments, commands.bench),
        }


@attrs.define
class LipschitzMLPConfig:
    hidden: int = field(256, "hidden width")
    n_hidden_layers: int = field(2, "hidden layers (n_hidden_layers + 1 linear maps)")
    zero_init: str = field("last", "zero-initialized layer: last, first (official; dead with ReLU) or none")
    certify: bool = field(True, "log lipschitz/bound and lipschitz/max_norm/* at every evaluation")
    log_matrix_norms: bool = field(False, "also log lipschitz/norm/<matrix> for every matrix")


class LipschitzMLPModel(_CertifiedModel):
    """Bias-free ReLU MLP with spectrally constrainable layers; logs its certified bound (prod of norms)."""

    name = "lipschitz_mlp"
    Config = LipschitzMLPConfig
    provides = ("model", "lipschitz_certificate")
    recipes = RECIPES

    @hookimpl
    def hookmix_model(self, state):
        from .models import LipschitzMLP

        c = self.config
        in_dim = state.data_info("input_dim", needed_by=self.name, what="a classification data plugin")
        classes = state.data_info("num_classes", needed_by=self.name, what="a class count")
        try:
            return LipschitzMLP(in_dim, c.hidden, classes, c.n_hidden_layers, zero_init=c.zero_init)
        except ValueError as exc:
            raise BadInput(f"plugins.lipschitz_mlp: {exc}; fix the config") from None


__all__ = ["LipschitzGPTModel", "LipschitzMLPModel", "Muon", "SpectralHammer", "SpectralHardCap",
           "SpectralNormalize", "SpectralSoftCap", "SpectralWeightDecay", "certificate_metrics",
           "weight_groups"]

