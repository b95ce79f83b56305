"""Training-time forward and per-position log-likelihood of soft and discrete actions (spec §5).

Soft position ``t`` with stored ids ``s_1..k``, noisy logits ``g′`` and kept slots ``S``:

* ``q_j = softmax(ℓ_θ/T)[s_j] / Σ_{j′∈S} softmax(ℓ_θ/T)[s_j′]`` (renormalised over the stored kept ids;
  top-p is not re-applied);
* ``z_j = clamp((g′_j − log(q_j + 1e-6)) / λ, −1.5, 3)``: the noise that would have produced ``g′`` under θ
  (``λ = 1`` in every official script, where this is exactly the code's ``g′ − log(q + 1e-6)``);
* ``φ(z) = −z − e^{−z}`` (standard Gumbel log-density);
* ``"mean"`` (default, the official code): mean of ``φ`` over ``M = {j ∈ S : log(q_j + 1e-6) > −3}``,
  always in ``[−3.05, −1]`` with the clamp; ``"sum"`` (ablation, the exact noise log-density up to a
  θ-free constant): sum of ``φ`` over all kept slots, optionally without the clamp.

Discrete positions (prompt, ``</think>``, answer) use ``log softmax(ℓ_θ/T)[tok]``.  There is no fallback:
every soft position is scored by the soft likelihood, and an empty mask raises.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from plugins.policies.policy import as_soft_policy

from .record import Rollout, mixture_embeds, slot_log_probs, soft_weights

__all__ = [
    "LikelihoodConfig",
    "gumbel_log_density",
    "soft_loglik",
    "position_loglik",
    "rebuild_inputs_embeds",
    "teacher_forced_logits",
    "sequence_logprobs",
    "recovered_noise",
]


@dataclass
class LikelihoodConfig:
    soft_density: str = "mean"  # "mean" (official code) or "sum" (exact density over kept slots)
    clamp: tuple[float, float] | None = (-1.5, 3.0)  # clamp of the recovered noise z; None = exact
    mask_logq_min: float = -3.0  # "mean": slots with log(q + eps) > this (q > ~0.05)
    eps: float = 1e-6
    detach_inputs: bool = True  # detached mixture inputs (official code); False lets gradients flow

    def __post_init__(self) -> None:
        if self.soft_density not in ("mean", "sum"):
            raise ValueError(f"soft_density must be 'mean' or 'sum', got {self.soft_density!r}")


def gumbel_log_density(z: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel log-pdf ``φ(z) = −z − exp(−z)``."""
    return -z - torch.exp(-z)


def recovered_noise(logits, ids, gumbel_logits, slot_mask, temperature=1.0, noise_factor=1.0, eps=1e-6, clamp=None):
    """``z = (g′ − log(q + eps)) / λ`` per slot (optionally clamped), and ``log(q + eps)``."""
    x = logits.float() / temperature
    logq = slot_log_probs(x.gather(-1, ids), slot_mask)
    q = torch.where(slot_mask, logq.exp(), torch.zeros_like(logq))
    lq = torch.log(q + eps)
    z = (gumbel_logits.float() - lq) / noise_factor
    if clamp is not None:
        z = z.clamp(clamp[0], clamp[1])
    return z, lq


def soft_loglik(
    logits,
    ids,
    gumbel_logits,
    slot_mask,
    temperature=1.0,
    noise_factor=1.0,
    cfg: LikelihoodConfig | None = None,
    check: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft-token log-likelihood over the last dims: ``logits (..., V)``, slot tensors ``(..., K)``.

    ``check`` (bool ``(...)``) marks the positions that are really soft; an empty mean-mask there raises.
    """
    cfg = cfg or LikelihoodConfig()
    if noise_factor <= 0:
        raise ValueError("the Gumbel likelihood needs noise_factor > 0 (no noise = no density)")
    z, lq = recovered_noise(logits, ids, gumbel_logits, slot_mask, temperature, noise_factor, cfg.eps, cfg.clamp)
    phi = gumbel_log_density(z)
    zero = torch.zeros_like(phi)
    if cfg.soft_density == "sum":
        return torch.where(slot_mask, phi, zero).sum(-1)
    m = slot_mask & (lq > cfg.mask_logq_min)
    n = m.sum(-1)
    empty = n == 0
    if check is not None:
        empty = empty & check
    if bool(empty.any()):
        raise ValueError("empty likelihood mask at a soft position (more than 20 kept slots?)")
    return torch.where(m, phi, zero).sum(-1) / n.clamp_min(1)


def position_loglik(
    logits,
    tokens,
    ids,
    gumbel_logits,
    slot_mask,
    is_soft,
    temperature=1.0,
    noise_factor=1.0,
    cfg: LikelihoodConfig | None = None,
) -> torch.Tensor:
    """Log-likelihood of the action at each position, from the logits that predict it.

    ``logits (..., V)``, ``tokens/is_soft (...)``, slot tensors ``(..., K)``.  Soft positions: Gumbel
    density (``cfg``); others: categorical log-prob of ``tokens``.
    """
    cfg = cfg or LikelihoodConfig()
    x = logits.float() / temperature
    disc = torch.log_softmax(x, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    if not bool(is_soft.any()):
        return disc
    soft = soft_loglik(logits, ids, gumbel_logits, slot_mask, temperature, noise_factor, cfg, check=is_soft)
    return torch.where(is_soft, soft, disc)


def rebuild_inputs_embeds(policy, rollout: Rollout, detach: bool = True) -> torch.Tensor:
    """Input embeddings of every position, rebuilt from the record (bitwise equal to rollout time in fp32).

    Soft positions: ``Σ_j softmax(g′/τ)_j · E_θ[s_j]``; other positions: ``E_θ[tok]``.
    """
    pol = as_soft_policy(policy)
    with torch.set_grad_enabled(torch.is_grad_enabled() and not detach):
        plain = pol.embed(rollout.input_ids)
        if bool(rollout.is_soft.any()):
            w = soft_weights(rollout.topk_gumbel, rollout.slot_mask, rollout.tau)
            mix = mixture_embeds(pol, rollout.topk_ids, w)
            plain = torch.where(rollout.is_soft.unsqueeze(-1), mix, plain)
    return plain.detach() if detach else plain


def teacher_forced_logits(policy, rollout: Rollout, detach_inputs: bool = True) -> torch.Tensor:
    """Logits ``(B, L, V)`` of one full forward over the rebuilt inputs (no cache)."""
    pol = as_soft_policy(policy)
    emb = rebuild_inputs_embeds(pol, rollout, detach=detach_inputs)
    return pol.forward_embeds(emb, attention_mask=rollout.attention_mask, position_ids=rollout.position_ids)


def sequence_logprobs(policy, rollout: Rollout, cfg: LikelihoodConfig | None = None, return_logits: bool = False):
    """Per-position log-likelihood ``(B, L)`` of the recorded actions under ``policy`` (0 off ``loss_mask``).

    Differentiable w.r.t. the policy parameters through the output logits only (inputs detached by
    default).  Use it for the current policy, the old policy (under ``torch.no_grad()``) and the
    reference policy alike.
    """
    cfg = cfg or LikelihoodConfig()
    logits = teacher_forced_logits(policy, rollout, detach_inputs=cfg.detach_inputs)
    pred = logits[:, :-1]  # logits at t-1 score the action at t
    lp = position_loglik(
        pred,
        rollout.input_ids[:, 1:],
        rollout.topk_ids[:, 1:],
        rollout.topk_gumbel[:, 1:],
        rollout.slot_mask[:, 1:],
        rollout.is_soft[:, 1:] & rollout.loss_mask[:, 1:],
        rollout.temperature,
        rollout.noise_factor,
        cfg,
    )
    lp = torch.cat([torch.zeros_like(lp[:, :1]), lp], dim=1)
    lp = torch.where(rollout.loss_mask, lp, torch.zeros_like(lp))
    return (lp, logits) if return_logits else lp
