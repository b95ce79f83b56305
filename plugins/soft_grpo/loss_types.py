"""The GRPO loss family of TRL's ``GRPOTrainer`` (``loss_type``), as pure per-token losses and normalisers.

Every function works on one micro-batch: ``logp / old_logp / mask (B, L)`` with any padding, advantages
``(B,)`` or ``(B, L)``.  SofT-GRPO's Gumbel likelihood enters as ``logp``, so the same functions serve the
discrete and the soft arm.  The formulas, their papers and the TRL names are tabled in docs/soft-grpo.md.

* importance weights: ``"token"``: ``r_t = exp(ℓ_θ − ℓ_old)``; ``"sequence"`` (GSPO): one
  ``r_i = exp(Σ_t m·(ℓ_θ − ℓ_old) / max(Σ_t m, 1))`` per row.  The log-ratio is clamped to ±20 (verl's guard,
  kept for every type; TRL has none, so the two agree whenever ``|log r| <= 20``).
* per-token losses: the PPO clip (``grpo, bnpo, dr_grpo, dapo, luspo``) with clip-higher, the optional
  ``delta`` cap of the unclipped ratio and hookmix's optional dual clip; ``cispo``, ``sapo`` and ``vespo``.
* normalisers: :func:`normalise`; the plugins pass the optimizer step's global counts (``batch["step_totals"]``),
  so a step is the same loss on 1 rank or W, with or without accumulation.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "LOSS_TYPES",
    "CLIP_TYPES",
    "IS_LEVELS",
    "importance_weights",
    "clipped_token_losses",
    "cispo_token_losses",
    "sapo_token_losses",
    "vespo_weights",
    "vespo_token_losses",
    "token_losses",
    "normalise",
]

#: The loss types TRL 1.16 offers.
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")
#: The types whose per-token loss is the PPO clip (the only ones ``delta`` and the dual clip act on).
CLIP_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
IS_LEVELS = ("token", "sequence")
_LOG_RATIO_CLAMP = 20.0


def importance_weights(logp, old_logp, mask, level: str = "token") -> torch.Tensor:
    """The ratio ``r``: ``(B, L)`` for ``"token"``, ``(B, 1)`` for ``"sequence"`` (GSPO); ``old_logp`` is a constant."""
    if level == "token":
        # the exact ops of the pre-loss_type code, so the default configuration trains bit-identically
        return torch.exp((logp - old_logp).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP))
    if level == "sequence":
        m = mask.bool()
        # where, not a product: padded positions may hold any value (inf included) and must not leak
        lr = torch.where(m, logp - old_logp, torch.zeros_like(logp))
        seq = lr.sum(-1, keepdim=True) / m.sum(-1, keepdim=True).to(logp.dtype).clamp_min(1.0)
        return torch.exp(seq.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP))
    raise ValueError(f"importance_sampling_level must be one of {IS_LEVELS}, got {level!r}")


def _expand(adv: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return adv if adv.dim() == like.dim() else adv.unsqueeze(-1).expand_as(like)


def clipped_token_losses(ratio, adv, eps_low=0.2, eps_high=None, delta=None, dual_clip_c=None):
    """PPO clip ``max(−A·min(r, δ), −A·clip(r, 1−ε_low, 1+ε_high))`` and, for ``A < 0``, ``min(·, −c·A)``.

    ``adv`` is already shaped like the loss; ``ratio`` broadcasts to it.  Returns ``(loss, clipped, dual)``.
    """
    hi = eps_low if eps_high is None else eps_high
    # delta caps only the unclipped branch (TRL): the clipped branch keeps the raw ratio
    l1 = -adv * (ratio if delta is None else ratio.clamp(max=delta))
    l2 = -adv * ratio.clamp(1.0 - eps_low, 1.0 + hi)
    loss = torch.maximum(l1, l2)
    clipped = l2 > l1
    dual = torch.zeros_like(clipped)
    if dual_clip_c is not None:
        l3 = -adv * dual_clip_c
        capped = torch.minimum(loss, l3)
        dual = (adv < 0) & (loss > l3)
        loss = torch.where(adv < 0, capped, loss)
    return loss, clipped, dual


def cispo_token_losses(logp, ratio, adv, eps_high):
    """CISPO: ``−sg(min(r, ε_high))·A·ℓ_θ``; ``ε_high`` is an absolute cap on ``r``, not ``1 + ε``."""
    capped = ratio.clamp(max=eps_high).detach()
    return -capped * adv * logp, (ratio > eps_high).expand_as(logp)


def sapo_token_losses(ratio, adv, tau_pos=1.0, tau_neg=1.05):
    """SAPO: ``−(4/τ)·σ(τ(r − 1))·A`` with ``τ_pos`` where ``A > 0``, else (``A = 0`` included) ``τ_neg``."""
    tau = torch.where(adv > 0, torch.full_like(adv, tau_pos), torch.full_like(adv, tau_neg))
    return -(4.0 / tau) * torch.sigmoid(tau * (ratio - 1.0)) * adv


def vespo_weights(logp, old_logp, mask, adv, k_pos=2.0, lambda_pos=3.0, k_neg=3.0, lambda_neg=2.0):
    """VESPO's gamma weight per row, ``(B, 1)``, a constant (no gradient): ``φ(w) = exp(λ + k·log w − λ·w)``.

    ``log w = clamp(Σ_t m·clamp(ℓ_θ − ℓ_old, ±20), log 1e-8, 20)``: the *sum* of the token log-ratios (not GSPO's
    mean), whatever the importance-sampling level; ``(k, λ) = (k_pos, λ_pos)`` where the row's advantage is
    ``>= 0``, else the negative pair; ``λ`` floored at 1e-4; ``φ(1) = 1``; a non-finite ``φ`` is 0.
    """
    with torch.no_grad():
        lr = torch.where(mask.bool(), (logp - old_logp).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP), 0.0)
        log_w = lr.sum(-1, keepdim=True).clamp(math.log(1e-8), _LOG_RATIO_CLAMP)
        a = adv if adv.dim() == 1 else adv[:, 0]  # one advantage per row
        nonneg = (a >= 0).unsqueeze(-1)
        k = torch.where(nonneg, k_pos, k_neg).to(log_w.dtype)
        lam = torch.where(nonneg, lambda_pos, lambda_neg).to(log_w.dtype).clamp_min(1e-4)
        phi = torch.exp(lam + k * log_w - lam * torch.exp(log_w))
        return phi.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def vespo_token_losses(logp, old_logp, adv, mask, **gamma):
    """VESPO: ``−φ_i·A·ℓ_θ`` per token with the row's gamma weight ``φ_i`` (:func:`vespo_weights`)."""
    phi = vespo_weights(logp, old_logp, mask, adv, **gamma)
    return -phi * _expand(adv, logp) * logp, phi


def token_losses(
    loss_type,
    logp,
    old_logp,
    advantages,
    mask,
    *,
    level="token",
    eps_low=0.2,
    eps_high=None,
    delta=None,
    dual_clip_c=None,
    sapo_tau_pos=1.0,
    sapo_tau_neg=1.05,
    vespo=None,
):
    """Per-token losses of ``loss_type`` before normalisation (``vespo``: a dict of ``k_pos, lambda_pos, k_neg,
    lambda_neg``, TRL's defaults when ``None``).

    Returns ``(loss, ratio, clipped, dual)``: ``ratio`` is ``(B, L)`` or ``(B, 1)`` (sequence level), the
    indicators are ``(B, L)`` (``clipped``: the clip / cap acted; ``dual``: the dual clip acted).
    """
    old_logp = old_logp.detach()
    ratio = importance_weights(logp, old_logp, mask, level)
    adv = _expand(advantages, logp)
    if loss_type in CLIP_TYPES:
        loss, clipped, dual = clipped_token_losses(ratio, adv, eps_low, eps_high, delta, dual_clip_c)
        return loss, ratio, clipped, dual
    no_dual = torch.zeros_like(mask, dtype=torch.bool)
    if loss_type == "cispo":
        if eps_high is None:
            raise ValueError("cispo needs an explicit epsilon_high (an absolute cap on r, e.g. 5)")
        loss, capped = cispo_token_losses(logp, ratio, adv, eps_high)
        return loss, ratio, capped, no_dual
    if loss_type == "vespo":
        if level != "token":
            raise ValueError("vespo weighs whole sequences itself; use importance_sampling_level 'token'")
        loss, _ = vespo_token_losses(logp, old_logp, advantages, mask, **(vespo or {}))
        return loss, ratio, torch.zeros_like(no_dual), no_dual  # a smooth weight, no clip: nothing counts as clipped
    if loss_type == "sapo":
        # a soft gate, no hard clip: nothing to count as clipped
        loss = sapo_token_losses(ratio, adv, sapo_tau_pos, sapo_tau_neg)
        return loss, ratio, torch.zeros_like(no_dual), no_dual
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")


def normalise(
    values: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str,
    num_tokens: float | None = None,
    num_sequences: int | None = None,
    max_completion_length: int | None = None,
) -> torch.Tensor:
    """Reduce per-token ``values (B, L)`` over ``mask`` the way ``loss_type`` does in TRL, for one micro-batch.

    * ``grpo``, ``sapo``: ``Σ_i (Σ_t m·v / max(|o_i|, 1)) / N`` (a row without tokens counts, as 0);
    * ``bnpo``: ``Σ m·v / max(Σ m, 1)``: always this micro-batch's own token count;
    * ``dr_grpo``: ``Σ m·v / (N · L_max)``, a constant (``L_max = max_completion_length``, default ``L``);
    * ``dapo``, ``cispo``, ``vespo``: ``Σ m·v / max(T, 1)`` with ``T = num_tokens`` (the global count) or ``Σ m``;
    * ``luspo``: ``Σ m·v / N``.

    ``N = num_sequences`` (default ``B``).  TRL's division by the accumulation steps is the engine's
    business (it averages micro-batches), not done here.
    """
    m = mask.bool()
    v = torch.where(m, values, torch.zeros_like(values))
    n_seq = v.shape[0] if num_sequences is None else num_sequences
    if loss_type in ("dapo", "cispo", "vespo"):
        # the same ops as objective.aggregate("token-mean"): dapo is the default and stays bit-identical
        denom = m.to(values.dtype).sum() if num_tokens is None else torch.as_tensor(num_tokens, dtype=values.dtype)
        return v.sum() / denom.clamp_min(1.0)
    if loss_type == "bnpo":
        return v.sum() / m.to(values.dtype).sum().clamp_min(1.0)
    if loss_type in ("grpo", "sapo"):
        per_seq = v.sum(-1) / m.to(values.dtype).sum(-1).clamp_min(1.0)
        return per_seq.sum() / n_seq
    if loss_type == "dr_grpo":
        length = v.shape[-1] if max_completion_length is None else max_completion_length
        return v.sum() / (n_seq * length)
    if loss_type == "luspo":
        return v.sum() / n_seq
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
