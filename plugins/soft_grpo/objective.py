"""Group-relative advantages, PPO-clip surrogate with dual clip, k3 KL, aggregation (spec §6).

Conventions follow the official code (verl ``core_algos``):

* ``Â_i = (R_i − mean_g R) / (std_g R + 1e-6)`` with the Bessel (unbiased) std; broadcast to every
  response token; a group of size 1 gets mean 0 and std 1 (``Â = R``); groups whose rewards are all
  equal get ``Â = 0`` exactly (forced, not left to float rounding).
* ``r_t = exp(clamp(ℓ̂_θ − ℓ̂_old, −20, 20))``; per-token loss ``max(−Â·r, −Â·clip(r, 1−ε_low, 1+ε_high))``,
  and for ``Â < 0`` additionally ``min(·, −c·Â)`` (dual clip, ``c = 3``).
* k3 ("low_var_kl"): ``d = clamp(ℓ̂_ref − ℓ̂_θ, −20, 20)``, ``k3 = exp(d) − d − 1`` clamped to ``[−10, 10]``;
  added to the loss with ``β = 0.001`` (not to the reward).
* aggregation ``"token-mean"`` (default: mean over every active token of the micro-batch, DAPO-style,
  optionally over a caller-given global token count) or ``"seq-mean"`` (mean over tokens within each
  sequence, then over sequences: GRPO's ``1/|o_i|``).

``ObjectiveConfig.loss_type`` selects any loss of TRL's GRPO family (``loss_types.py``); left at ``None`` it
follows ``agg``: ``"token-mean"`` is ``"dapo"`` and ``"seq-mean"`` is ``"grpo"``, with the verl guards above
(dual clip, ±20 log-ratio clamp, k3 clamp) kept, so the pre-``loss_type`` configurations are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .loss_types import CLIP_TYPES, IS_LEVELS, LOSS_TYPES, clipped_token_losses, normalise, token_losses

__all__ = [
    "ObjectiveConfig",
    "group_advantages",
    "ppo_clip_token_losses",
    "k3_kl",
    "aggregate",
    "policy_loss",
    "policy_loss_terms",
    "rollout_loss",
]


@dataclass
class ObjectiveConfig:
    clip_eps: float = 0.2
    clip_eps_high: float | None = None  # None -> clip_eps (symmetric, as in the official scripts)
    dual_clip_c: float | None = 3.0  # None disables the dual clip
    kl_coef: float = 0.001  # β; 0 disables the KL term
    agg: str = "token-mean"  # or "seq-mean"; the older name of loss_type "dapo" / "grpo"
    loss_type: str | None = None  # one of loss_types.LOSS_TYPES; None: from agg
    importance_sampling_level: str = "token"  # or "sequence" (GSPO)
    delta: float | None = None  # cap of the unclipped ratio (PPO-clip types only); None: off
    kl_bias_correction: bool = False  # multiply k3 by the ratio (TRL's use_bias_correction_kl, on there)
    sapo_tau_pos: float = 1.0
    sapo_tau_neg: float = 1.05
    vespo_k_pos: float = 2.0  # VESPO's gamma weight (TRL's defaults)
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0

    def __post_init__(self) -> None:
        if self.agg not in ("token-mean", "seq-mean"):
            raise ValueError(f"agg must be 'token-mean' or 'seq-mean', got {self.agg!r}")
        if self.dual_clip_c is not None and self.dual_clip_c <= 1.0:
            raise ValueError("dual_clip_c must be > 1")
        implied = "dapo" if self.agg == "token-mean" else "grpo"
        if self.loss_type is None:
            self.loss_type = implied
        elif self.agg == "seq-mean" and self.loss_type != implied:
            # two names for one choice: refuse a contradiction rather than pick one silently
            raise ValueError(f"agg='seq-mean' is loss_type='grpo'; it contradicts loss_type={self.loss_type!r}")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.importance_sampling_level not in IS_LEVELS:
            raise ValueError(f"importance_sampling_level must be one of {IS_LEVELS}")
        if self.delta is not None and self.loss_type not in CLIP_TYPES:
            # an option that would be silently ignored is refused (TRL applies delta to the clip types only)
            raise ValueError(f"delta applies to the PPO-clip loss types {CLIP_TYPES}, not {self.loss_type!r}")
        if self.loss_type == "vespo" and self.importance_sampling_level != "token":
            # TRL refuses it too: VESPO's weight is already a sequence-level one
            raise ValueError("loss_type 'vespo' weighs whole sequences itself; keep importance_sampling_level 'token'")
        if self.loss_type == "cispo" and self.clip_eps_high is None:
            # cispo's epsilon_high is an absolute cap on r: inheriting clip_eps (0.2) would cap r at 0.2
            raise ValueError("loss_type 'cispo' needs clip_eps_high: an absolute cap on the ratio (e.g. 5)")


def group_advantages(
    rewards: torch.Tensor,
    group_size: int | None = None,
    group_ids: torch.Tensor | None = None,
    eps: float = 1e-6,
    scale: bool | str = True,
) -> torch.Tensor:
    """Per-sample advantages ``(N,)`` from rewards ``(N,)``.

    Groups are consecutive blocks of ``group_size`` (the layout of ``repeat_interleave``d prompts) or
    given by integer ``group_ids``.  ``scale`` is TRL's ``scale_rewards``: ``True`` / ``"group"`` divides by
    the group's Bessel std + ``eps``, ``"batch"`` by the Bessel std of all ``N`` rewards + ``eps`` (after the
    per-group centring), ``False`` / ``"none"`` gives Dr. GRPO's mean-only baseline.
    The ``grpo`` and ``soft_grpo`` plugins return it from ``hookmix_advantages`` as a default: an enabled
    plugin that implements that hook replaces it (docs/authoring.md, "Replacing a default").
    """
    r = rewards.detach().to(torch.float64).flatten()
    if group_ids is None:
        if group_size is None or group_size < 1 or r.numel() % group_size:
            raise ValueError("pass group_ids, or a group_size dividing the number of rewards")
        group_ids = torch.arange(r.numel(), device=r.device) // group_size
    gid = torch.as_tensor(group_ids, device=r.device).flatten()
    _, inv, counts = torch.unique(gid, return_inverse=True, return_counts=True)
    G = counts.numel()
    n = counts.to(torch.float64)
    s = torch.zeros(G, dtype=torch.float64, device=r.device).index_add_(0, inv, r)
    mean = s / n
    dev = r - mean[inv]
    var = torch.zeros(G, dtype=torch.float64, device=r.device).index_add_(0, inv, dev * dev) / (n - 1).clamp_min(1)
    std = var.sqrt()
    single = counts == 1
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(std), std)
    rmax = torch.full((G,), float("-inf"), dtype=torch.float64, device=r.device).scatter_reduce(0, inv, r, "amax")
    rmin = torch.full((G,), float("inf"), dtype=torch.float64, device=r.device).scatter_reduce(0, inv, r, "amin")
    adv = r - mean[inv]
    if scale not in (True, False, "group", "batch", "none"):
        raise ValueError(f"scale must be a bool or 'group' | 'batch' | 'none', got {scale!r}")
    if scale is True or scale == "group":
        adv = adv / (std[inv] + eps)
    elif scale == "batch":
        # one std for the whole batch; a single reward has no spread, so it is left unscaled (std 1)
        adv = adv / ((r.std() if r.numel() > 1 else torch.ones((), dtype=r.dtype)) + eps)
    equal = (rmax == rmin) & ~single
    adv = torch.where(equal[inv], torch.zeros_like(adv), adv)
    return adv.to(torch.float32)


def ppo_clip_token_losses(logp, old_logp, advantages, clip_eps=0.2, clip_eps_high=None, dual_clip_c=3.0):
    """Per-token PPO-clip (+ dual-clip) losses and indicator tensors (the token-level clip of ``loss_types``).

    Returns ``(loss, ratio, clipped, dual_clipped)``, all shaped like ``logp``.
    """
    adv = advantages if advantages.dim() == logp.dim() else advantages.unsqueeze(-1).expand_as(logp)
    ratio = torch.exp((logp - old_logp).clamp(-20.0, 20.0))
    loss, clipped, dual = clipped_token_losses(ratio, adv, clip_eps, clip_eps_high, None, dual_clip_c)
    return loss, ratio, clipped, dual


def k3_kl(logp, ref_logp):
    """Per-token k3 estimator of KL(π_θ ‖ π_ref) (verl ``low_var_kl``): ``≥ 0``, ``0`` when equal."""
    d = (ref_logp - logp).clamp(-20.0, 20.0)
    return (torch.exp(d) - d - 1.0).clamp(-10.0, 10.0)


def aggregate(
    values: torch.Tensor, mask: torch.Tensor, agg: str = "token-mean", num_tokens: float | None = None
) -> torch.Tensor:
    """Reduce per-token ``values (B, L)`` over ``mask``.

    ``"token-mean"``: ``Σ values / Σ mask`` (or ``/ num_tokens`` when given, e.g. the global token count
    over gradient-accumulation micro-batches).  ``"seq-mean"``: mean over each sequence's tokens, then
    mean over sequences that have tokens.
    """
    m = mask.to(values.dtype)
    v = torch.where(mask.bool(), values, torch.zeros_like(values))
    if agg == "token-mean":
        denom = m.sum() if num_tokens is None else torch.as_tensor(num_tokens, dtype=values.dtype)
        return v.sum() / denom.clamp_min(1.0)
    if agg == "seq-mean":
        per = m.sum(-1)
        has = per > 0
        seq = v.sum(-1) / per.clamp_min(1.0)
        return (seq * has).sum() / has.sum().clamp_min(1)
    raise ValueError(f"unknown aggregation {agg!r}")


def policy_loss_terms(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: ObjectiveConfig | None = None,
    ref_logp: torch.Tensor | None = None,
    num_tokens: float | None = None,
    num_sequences: int | None = None,
    max_completion_length: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, float]]:
    """``(pg, kl, stats)``: the normalised surrogate of ``cfg.loss_type`` and the normalised (unweighted) k3.

    ``kl`` is ``None`` without ``ref_logp`` or with ``kl_coef = 0``.  Both use the loss type's normaliser, so
    ``pg + β·kl`` is TRL's per-token ``β·KL`` added before aggregation.  The optional counts are global ones
    (see :func:`~.loss_types.normalise`); without them the micro-batch's own counts are used.
    """
    cfg = cfg or ObjectiveConfig()
    mask = mask.bool()
    old_logp = old_logp.detach()
    tok_loss, ratio, clipped, dual = token_losses(
        cfg.loss_type,
        logp,
        old_logp,
        advantages,
        mask,
        level=cfg.importance_sampling_level,
        eps_low=cfg.clip_eps,
        eps_high=cfg.clip_eps_high,
        delta=cfg.delta,
        dual_clip_c=cfg.dual_clip_c,
        sapo_tau_pos=cfg.sapo_tau_pos,
        sapo_tau_neg=cfg.sapo_tau_neg,
        vespo=dict(
            k_pos=cfg.vespo_k_pos,
            lambda_pos=cfg.vespo_lambda_pos,
            k_neg=cfg.vespo_k_neg,
            lambda_neg=cfg.vespo_lambda_neg,
        ),
    )
    counts = dict(num_tokens=num_tokens, num_sequences=num_sequences, max_completion_length=max_completion_length)
    pg = normalise(tok_loss, mask, cfg.loss_type, **counts)
    n = mask.sum().clamp_min(1)
    with torch.no_grad():
        r = ratio.expand_as(logp)  # a sequence-level ratio (B, 1) counts once per token in the stats
        stats = {
            "pg_loss": float(pg.detach()),
            "clip_frac": float((clipped & mask).sum() / n),
            "dual_clip_frac": float((dual & mask).sum() / n),
            "ratio_mean": float(torch.where(mask, r, torch.zeros_like(r)).sum() / n),
            "ratio_max": float(r[mask].max()) if bool(mask.any()) else 1.0,
            "ratio_min": float(r[mask].min()) if bool(mask.any()) else 1.0,
            "ppo_kl": float(torch.where(mask, old_logp - logp, torch.zeros_like(logp)).sum() / n),
            "tokens": float(mask.sum()),
        }
    kl = None
    if ref_logp is not None and cfg.kl_coef != 0.0:
        kl_tok = k3_kl(logp, ref_logp.detach())
        if cfg.kl_bias_correction:
            # TRL multiplies by the (unclipped, undetached) ratio: the importance weight of the off-policy sample
            kl_tok = kl_tok * ratio
        kl = normalise(kl_tok, mask, cfg.loss_type, **counts)
        stats["kl"] = float(kl.detach())
    return pg, kl, stats


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: ObjectiveConfig | None = None,
    ref_logp: torch.Tensor | None = None,
    num_tokens: float | None = None,
    num_sequences: int | None = None,
    max_completion_length: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Surrogate of ``cfg.loss_type`` (default: PPO-clip/dual-clip, token-mean) plus ``β·k3``; ``(loss, stats)``.

    ``logp/old_logp/ref_logp/mask (B, L)``; ``advantages (B,)`` or ``(B, L)``.  ``old_logp`` and
    ``ref_logp`` are treated as constants.
    """
    cfg = cfg or ObjectiveConfig()
    pg, kl, stats = policy_loss_terms(
        logp, old_logp, advantages, mask, cfg, ref_logp, num_tokens, num_sequences, max_completion_length
    )
    loss = pg if kl is None else pg + cfg.kl_coef * kl
    stats["loss"] = float(loss.detach())
    return loss, stats


def rollout_loss(
    policy,
    rollout,
    advantages: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None = None,
    obj_cfg: ObjectiveConfig | None = None,
    lik_cfg=None,
    num_tokens: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Convenience: teacher-forced log-likelihood of ``rollout`` under ``policy`` + :func:`policy_loss`.

    ``old_logp`` / ``ref_logp`` come from :func:`~.likelihood.sequence_logprobs` under ``torch.no_grad()``
    with the old / reference policy (same likelihood config).
    """
    from .likelihood import sequence_logprobs

    logp = sequence_logprobs(policy, rollout, lik_cfg)
    return policy_loss(logp, old_logp, advantages, rollout.loss_mask, obj_cfg, ref_logp, num_tokens)
