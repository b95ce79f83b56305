"""Logit-distillation losses: vanilla KD (Hinton et al. 2015) and DKD (Zhao et al., CVPR 2022).

Pure PyTorch, no engine imports. Docs: ``docs/distillation.md`` (kd, dkd).

Conventions shared by every loss in this module
------------------------------------------------
* ``student`` / ``teacher`` are 2-D logits ``(N, C)``. A language model's ``(B, T, V)`` logits must be
  flattened by the caller (and ignored positions, e.g. ``-100`` labels, filtered out first).
* ``target`` is an int64 ``(N,)`` tensor of class indices.
* Reduction (spec §1.9, §14.18): per-sample **sum over classes**, then **batch mean**
  (``reduction="mean"``). ``"sum"`` sums over the batch, ``"none"`` returns the ``(N,)`` per-sample values.
* Every loss works in log space with ``log_softmax`` / ``logsumexp``; half-precision inputs are upcast
  to float32. Logits scaled by 1e4 give finite losses and gradients.
* The teacher is detached by default (``detach_teacher=True``): a frozen teacher must receive no gradient.
"""

from __future__ import annotations

from typing import Dict, Tuple, Union

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
Weight = Union[float, Tensor]

__all__ = [
    "KD_PRESETS",
    "DKD_PRESETS",
    "kd_loss",
    "dkd_loss",
    "dkd_warmup_factor",
    "tckd",
    "nckd",
    "drop_target_column",
    "target_log_probs",
]

#: Published KD settings (spec §5, §9.2). ``temperature`` is T, weights multiply CE and the KD term.
KD_PRESETS: Dict[str, Dict[str, float]] = {
    # megvii-research/mdistiller: mdistiller/engine/cfg.py (DKD-paper KD baseline, CIFAR-100)
    "mdistiller_cifar100": {"temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9},
    # megvii-research/mdistiller: configs/imagenet/r34_r18/kd.yaml
    "mdistiller_imagenet": {"temperature": 1.0, "ce_weight": 0.5, "kd_weight": 0.5},
    # sunshangquan/logit-standardization-KD: mdistiller/engine/cfg.py (KD+LS, CIFAR-100)
    "ls_cifar100": {"temperature": 2.0, "ce_weight": 0.1, "kd_weight": 9.0},
}

#: Published DKD settings (spec §6, §9.2). ``warmup`` is in epochs.
DKD_PRESETS: Dict[str, Dict[str, float]] = {
    # megvii-research/mdistiller: mdistiller/engine/cfg.py (CIFAR-100 default; per-pair beta in configs/)
    "mdistiller_cifar100": {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "ce_weight": 1.0, "warmup": 20},
    # megvii-research/mdistiller: configs/imagenet/r34_r18/dkd.yaml
    "mdistiller_imagenet_r34_r18": {"alpha": 1.0, "beta": 0.5, "temperature": 1.0, "ce_weight": 1.0, "warmup": 1},
    # sunshangquan/logit-standardization-KD (R32x4->R8x4): alpha and beta multiplied by KD weight 9, T = base temp 2
    "ls_cifar100": {"alpha": 9.0, "beta": 72.0, "temperature": 2.0, "ce_weight": 1.0, "warmup": 20},
}

_REDUCTIONS = ("mean", "sum", "none")


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------
def as_float(x: Tensor) -> Tensor:
    """Upcast half / bfloat16 logits to float32 (log-space maths in fp16 loses too much precision)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    return x


def _check_logits(student: Tensor, teacher: Tensor) -> None:
    if student.dim() != 2 or teacher.dim() != 2:
        raise ValueError(
            f"expected 2-D (N, C) logits, got student {tuple(student.shape)} and teacher {tuple(teacher.shape)}; "
            "flatten (B, T, V) language-model logits to (B*T, V) first"
        )
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} shapes differ")


def _check_target(target: Tensor, n: int, num_classes: int) -> None:
    if target.dim() != 1 or target.shape[0] != n:
        raise ValueError(f"expected target of shape ({n},), got {tuple(target.shape)}")
    if target.dtype != torch.long:
        raise ValueError(f"expected int64 class indices, got dtype {target.dtype}")
    if num_classes < 2:
        raise ValueError("target/non-target decomposition needs at least 2 classes")


def _check_temperature(temperature: Weight) -> None:
    # a tensor temperature is ctkd's, > 0 by construction (t_start > 0); comparing it would sync the device
    if not torch.is_tensor(temperature) and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def reduce_per_sample(per_sample: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def drop_target_column(x: Tensor, target: Tensor) -> Tensor:
    """Return ``x`` (N, C) without the target column of each row, shape (N, C-1), order kept.

    Exact removal (boolean mask + reshape) rather than the reference code's "subtract 1000 from the target
    logit" trick, so the result never contains the target (spec §6, §7; regression for cls_KD#16).
    """
    n, c = x.shape
    keep = torch.ones_like(x, dtype=torch.bool)
    keep.scatter_(1, target.view(-1, 1), False)
    return x[keep].view(n, c - 1)


def target_log_probs(log_probs: Tensor, target: Tensor) -> Tuple[Tensor, Tensor]:
    """Split row-wise log-probabilities into (log p_t, log(1 - p_t)), each of shape (N,).

    ``log(1 - p_t)`` is the log-sum-exp of the non-target log-probabilities (target column removed exactly),
    which stays accurate when ``p_t -> 1`` and never evaluates ``log(0)`` for finite logits. This replaces
    the reference ``torch.log(sum of masked softmax)`` of mdistiller's DKD (spec §6, §14.16).
    """
    log_pt = log_probs.gather(1, target.view(-1, 1)).squeeze(1)
    log_rest = torch.logsumexp(drop_target_column(log_probs, target), dim=1)
    return log_pt, log_rest


def _binary_kl(log_pt_t: Tensor, log_rest_t: Tensor, log_pt_s: Tensor, log_rest_s: Tensor) -> Tensor:
    """KL([p, 1-p]_teacher || [p, 1-p]_student) per sample from log values."""
    return log_pt_t.exp() * (log_pt_t - log_pt_s) + log_rest_t.exp() * (log_rest_t - log_rest_s)


# ----------------------------------------------------------------------------------------------------------
# KD
# ----------------------------------------------------------------------------------------------------------
def kd_loss(
    student: Tensor,
    teacher: Tensor,
    temperature: float = 4.0,
    form: str = "kl",
    reduction: str = "mean",
    detach_teacher: bool = True,
) -> Tensor:
    """Hinton KD: ``T^2 * KL(softmax(z_t/T) || softmax(z_s/T))`` (``form="kl"``), exactly one T^2 factor.

    ``form="ce"`` gives the cross-entropy form ``-T^2 * sum_i p^t_i log p^s_i`` (yzd-v/cls_KD kd.py), which
    differs from the KL form by ``T^2 * H(p^t(T))``, a constant w.r.t. the student: same gradient, but the
    loss of identical logits is the scaled teacher entropy instead of 0 (spec §1.7, §14.1).

    The loss weight (e.g. 0.9 or 9) is *not* applied here; the caller multiplies it (see ``KD_PRESETS``).
    """
    _check_logits(student, teacher)
    _check_temperature(temperature)
    if detach_teacher:
        teacher = teacher.detach()
    s, t = as_float(student), as_float(teacher)
    log_ps = F.log_softmax(s / temperature, dim=1)
    log_pt = F.log_softmax(t / temperature, dim=1)
    pt = log_pt.exp()
    if form == "kl":
        per_sample = (pt * (log_pt - log_ps)).sum(1)
    elif form == "ce":
        per_sample = -(pt * log_ps).sum(1)
    else:
        raise ValueError(f"form must be 'kl' or 'ce', got {form!r}")
    return reduce_per_sample(per_sample * temperature**2, reduction)


# ----------------------------------------------------------------------------------------------------------
# DKD
# ----------------------------------------------------------------------------------------------------------
def tckd(
    student: Tensor, teacher: Tensor, target: Tensor, temperature: float = 4.0, detach_teacher: bool = True
) -> Tensor:
    """Target-class KD per sample (N,): ``KL(b^t || b^s)`` with ``b = [p_t, 1 - p_t]`` at temperature T.

    No T^2 factor (``dkd_loss`` applies it). ``1 - p_t`` is formed in log space (``target_log_probs``).
    """
    _check_logits(student, teacher)
    _check_target(target, student.shape[0], student.shape[1])
    _check_temperature(temperature)
    if detach_teacher:
        teacher = teacher.detach()
    log_ps = F.log_softmax(as_float(student) / temperature, dim=1)
    log_pt = F.log_softmax(as_float(teacher) / temperature, dim=1)
    return _binary_kl(*target_log_probs(log_pt, target), *target_log_probs(log_ps, target))


def nckd(
    student: Tensor, teacher: Tensor, target: Tensor, temperature: float = 4.0, detach_teacher: bool = True
) -> Tensor:
    """Non-target-class KD per sample (N,): ``KL(N(p^t) || N(p^s))`` at temperature T.

    ``N(p)`` is the softmax over the C-1 non-target logits (target column dropped exactly), which equals
    ``p_i / (1 - p_t)``. No T^2 factor. For C = 2 the non-target distribution is the single point mass
    ``[1]`` and NCKD is 0 (the reference code returns inf there, MD#60; it carries no information either way).
    """
    _check_logits(student, teacher)
    _check_target(target, student.shape[0], student.shape[1])
    _check_temperature(temperature)
    if detach_teacher:
        teacher = teacher.detach()
    log_ns = F.log_softmax(drop_target_column(as_float(student), target) / temperature, dim=1)
    log_nt = F.log_softmax(drop_target_column(as_float(teacher), target) / temperature, dim=1)
    return (log_nt.exp() * (log_nt - log_ns)).sum(1)


def dkd_loss(
    student: Tensor,
    teacher: Tensor,
    target: Tensor,
    alpha: Weight = 1.0,
    beta: Weight = 8.0,
    temperature: float = 4.0,
    reduction: str = "mean",
    detach_teacher: bool = True,
) -> Tuple[Tensor, Dict[str, Tensor]]:
    """Decoupled KD: ``alpha * T^2 * TCKD + beta * T^2 * NCKD`` (megvii-research/mdistiller DKD.py).

    Returns ``(total, {"tckd": alpha*T^2*TCKD, "nckd": beta*T^2*NCKD})``; the parts sum to ``total``.
    ``alpha`` / ``beta`` may be floats or per-sample ``(N,)`` tensors (used by the check
    ``DKD(alpha=1, beta=1-p^t_t) == KD``, spec §6). The warm-up factor (``dkd_warmup_factor``) and the
    student CE (weight 1.0) are applied by the caller.

    Numerics differ from the reference on purpose (spec §1.6): the target column is removed exactly instead
    of subtracting 1000 from it, and ``log(1 - p_t)`` is a log-sum-exp of non-target log-probs instead of
    ``log(sum of masked softmax)``. Equal to the reference in the normal range; finite where the reference
    gives ``log 0 = -inf`` (huge logits) or inf (C = 2).
    """
    _check_logits(student, teacher)
    _check_target(target, student.shape[0], student.shape[1])
    _check_temperature(temperature)
    if detach_teacher:
        teacher = teacher.detach()
    s, t = as_float(student), as_float(teacher)
    log_ps = F.log_softmax(s / temperature, dim=1)
    log_pt = F.log_softmax(t / temperature, dim=1)
    tc = _binary_kl(*target_log_probs(log_pt, target), *target_log_probs(log_ps, target))
    # N(p) from the dropped-column log-probs: log_softmax over the remaining columns of log p == log N(p)
    log_ns = F.log_softmax(drop_target_column(log_ps, target), dim=1)
    log_nt = F.log_softmax(drop_target_column(log_pt, target), dim=1)
    nc = (log_nt.exp() * (log_nt - log_ns)).sum(1)
    t2 = temperature**2
    tc_term = reduce_per_sample(alpha * t2 * tc, reduction)
    nc_term = reduce_per_sample(beta * t2 * nc, reduction)
    return tc_term + nc_term, {"tckd": tc_term, "nckd": nc_term}


def dkd_warmup_factor(step: float, warmup_steps: float) -> float:
    """DKD warm-up multiplier ``min(step / warmup_steps, 1)`` (mdistiller DKD.py).

    mdistiller counts epochs from 1, so with ``warmup_steps=20`` the first epoch gets 1/20 and epoch 20
    onward gets 1. Pass the same 1-based count to reproduce it (or a step count scaled to the run length).
    ``warmup_steps <= 0`` disables the warm-up (factor 1); negative ``step`` is clamped to 0.
    """
    if warmup_steps <= 0:
        return 1.0
    return float(min(max(step, 0) / warmup_steps, 1.0))
