"""The generalized Jensen-Shannon divergence of GKD (Agarwal et al., ICLR 2024), with TRL's conventions.

Pure PyTorch, no engine import. Docs: docs/gkd.md.

Per position, over the vocabulary, with ``p_s = softmax(z_s / T)`` and ``p_t = softmax(z_t / T)`` (no ``T²``
factor; the GKD trainer uses ``T = 1`` for the loss, its configured temperature is the sampling one):

* ``beta = 0``: the forward KL, ``KL(p_t || p_s) = Σ_v p_t (log p_t - log p_s)``;
* ``beta = 1``: the reverse KL, ``KL(p_s || p_t)``;
* otherwise, with the mixture ``m = (1 - beta) p_s + beta p_t``:
  ``JSD_beta = beta KL(p_t || m) + (1 - beta) KL(p_s || m)``.

(The endpoints are special cases: the formula of the middle would give 0 at ``beta = 0`` and ``1``.)

Reduction ``"batchmean"`` with labels: the sum over the unmasked positions (label ``!= -100``) and the
vocabulary, divided by the number of unmasked positions; without labels, by the number of positions. The
caller aligns the tensors: logits at position ``t`` score the label at ``t`` (TRL takes ``logits[:, :-1]``
against ``labels[:, 1:]``; the countdown LM batches are already shifted that way).
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor

__all__ = ["IGNORE_INDEX", "generalized_jsd", "generalized_jsd_loss"]

IGNORE_INDEX = -100


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``Σ_v p (log p - log q)`` over the last dim; a zero-probability entry of ``p`` contributes 0."""
    p = log_p.exp()
    # the difference is masked, not the product: at p = 0 (a -inf logit) it is -inf or nan, and 0 * it in the
    # backward would be nan even where the forward discards it
    diff = torch.where(p > 0, log_p - log_q, torch.zeros_like(p))
    return (p * diff).sum(-1)


def generalized_jsd(student_logits: Tensor, teacher_logits: Tensor, beta: float, temperature: float = 1.0) -> Tensor:
    """The divergence at every position: logits ``(..., V)`` -> ``(...)``.

    Computed in float32 (float64 inputs stay float64); the teacher's logits carry no gradient of their own
    here only if the caller detaches them (a frozen teacher's do not require grad).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} differ")
    dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    log_s = torch.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
    log_t = torch.log_softmax(teacher_logits.to(dtype) / temperature, dim=-1)
    if beta == 0.0:
        return _kl(log_t, log_s)
    if beta == 1.0:
        return _kl(log_s, log_t)
    # log m = logsumexp(log p_s + log(1 - beta), log p_t + log beta): the mixture without leaving log space. An id
    # impossible for both (a -inf logit in each) is -inf in m too; logaddexp's backward would be nan there
    a, b = log_s + math.log(1.0 - beta), log_t + math.log(beta)
    both = torch.isneginf(a) & torch.isneginf(b)
    zero = torch.zeros_like(a)
    log_m = torch.logaddexp(torch.where(both, zero, a), torch.where(both, zero, b))
    log_m = torch.where(both, torch.full_like(a, float("-inf")), log_m)
    return beta * _kl(log_t, log_m) + (1.0 - beta) * _kl(log_s, log_m)


def generalized_jsd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None = None,
    beta: float = 0.5,
    temperature: float = 1.0,
    reduction: str = "batchmean",
) -> Tensor:
    """TRL's ``generalized_jsd_loss``: :func:`generalized_jsd` per position, masked by ``labels != -100``, reduced.

    ``reduction``: ``"batchmean"`` (sum / unmasked positions; sum / positions without labels), ``"sum"``,
    ``"mean"`` (over the unmasked (position, vocabulary) entries, as ``torch.mean`` of TRL's masked tensor) or
    ``"none"`` (the per-position divergence, 0 at masked positions).
    """
    jsd = generalized_jsd(student_logits, teacher_logits, beta, temperature)
    if labels is None:
        mask = torch.ones_like(jsd, dtype=torch.bool)
    else:
        if labels.shape != jsd.shape:
            raise ValueError(f"labels {tuple(labels.shape)} must be the logits' leading shape {tuple(jsd.shape)}")
        mask = labels != IGNORE_INDEX
    jsd = torch.where(mask, jsd, torch.zeros_like(jsd))
    if reduction == "none":
        return jsd
    total = jsd.sum()
    if reduction == "sum":
        return total
    count = mask.sum()
    if reduction == "batchmean":
        return total / count
    if reduction == "mean":
        return total / (count * student_logits.shape[-1])
    raise ValueError(f"reduction must be batchmean, sum, mean or none, got {reduction!r}")
