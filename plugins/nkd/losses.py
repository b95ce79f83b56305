"""NKD (normalized KD) and USKD (universal self-KD) losses — Yang et al., ICCV 2023, arXiv 2303.13005.

Pure PyTorch, no engine imports. Docs: ``docs/distillation.md`` (nkd, uskd).
Formulas restate the official code (``yzd-v/cls_KD: mmcls/models/dis_losses/{nkd,uskd}.py``, branch ``1.0``).

Conventions (same as ``plugins.kd.losses``): 2-D ``(N, C)`` logits; ``target`` is an int64 ``(N,)`` index
tensor or a float ``(N, C)`` soft-label matrix (mixup / cutmix); per-sample class sums, batch mean; the
student CE (weight 1) is *not* included — it stays a separate term. Half-precision inputs are upcast.
Each loss returns ``(total, parts)`` where ``parts`` holds the already-weighted named terms summing to
``total``.
"""

from __future__ import annotations

from typing import Dict, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from plugins.kd.losses import as_float, drop_target_column, reduce_per_sample

Tensor = torch.Tensor
Weight = Union[float, Tensor]

__all__ = [
    "NKD_PRESETS",
    "USKD_PRESETS",
    "nkd_loss",
    "uskd_loss",
    "uskd_soft_target",
    "uskd_rank_scores",
    "zipf_labels",
    "USKDHead",
    "USKDLoss",
]

#: NKD settings (spec §7). Function defaults = class defaults = ImageNet CNN configs.
NKD_PRESETS: Dict[str, Dict[str, float]] = {
    "imagenet_cnn": {"temperature": 1.0, "gamma": 1.5},  # res34_distill_res18_img.py, res50_distill_mv1_img.py
    "imagenet_deit": {"temperature": 1.0, "gamma": 1.0},  # deit-s3_distill_deit-t_img.py (ViTKD also on there)
    "cifar100_res34_res18": {
        "temperature": 3.0,
        "gamma": 3.5,
    },  # configs/distillers/cifar100/res34_distill_res18_cifar.py
}

#: USKD settings (spec §8). Function defaults = class defaults = every ImageNet ``*_sd_img.py`` config.
USKD_PRESETS: Dict[str, Dict[str, float]] = {
    "imagenet": {"alpha": 1.0, "beta": 0.1, "mu": 0.005},
    "cifar100": {"alpha": 0.1, "beta": 0.1, "mu": 0.1},  # configs/distillers/cifar100/res18_sd_cifar.py
}

_RANK_EPS = 1e-6  # the "+ 1e-6" of the official rank expression


def _hard_index(target: Tensor, n: int, c: int) -> Tensor:
    """(N,) int64 class index from a hard (N,) or soft (N, C) target (soft: argmax, spec §7 / §14.9)."""
    if target.dim() == 1 and target.shape[0] == n and not target.is_floating_point():
        return target.long()
    if target.dim() == 2 and target.shape == (n, c) and target.is_floating_point():
        return target.argmax(dim=1)
    raise ValueError(
        f"target must be int64 ({n},) indices or float ({n}, {c}) soft labels, got {tuple(target.shape)} {target.dtype}"
    )


# ----------------------------------------------------------------------------------------------------------
# NKD
# ----------------------------------------------------------------------------------------------------------
def nkd_loss(
    student: Tensor,
    teacher: Tensor,
    target: Tensor,
    temperature: float = 1.0,
    gamma: Weight = 1.5,
    reduction: str = "mean",
    detach_teacher: bool = True,
) -> Tuple[Tensor, Dict[str, Tensor]]:
    """Normalized KD (spec §7), the fixed post-2023-10-10 version (target column really dropped).

    * target term, always at tau = 1, teacher probability detached:
      ``L_tar = -p^t_t * log p^s_t``;
    * non-target term on the (N, C-1) logits with the target column removed, at ``temperature``:
      ``L_non = -gamma * tau^2 * sum_{i != t} softmax(z~t/tau)_i * log softmax(z~s/tau)_i``.

    Returns ``(L_tar + L_non, {"nkd_target": L_tar, "nkd_non_target": L_non})``. ``gamma`` may be a float
    or a per-sample ``(N,)`` tensor. Soft ``(N, C)`` targets use their argmax as t. NKD of identical logits
    is not 0 (``L_tar`` is a confidence-weighted CE, its gradient pushes p^s_t up); only ``L_non``'s
    gradient vanishes at ``student == teacher``.
    """
    if student.dim() != 2 or student.shape != teacher.shape:
        raise ValueError(f"expected equal 2-D (N, C) logits, got {tuple(student.shape)} / {tuple(teacher.shape)}")
    n, c = student.shape
    if c < 2:
        raise ValueError("NKD needs at least 2 classes")
    # a tensor temperature is ctkd's, > 0 by construction (t_start > 0); comparing it would sync the device
    if not torch.is_tensor(temperature) and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    t_idx = _hard_index(target, n, c)
    if detach_teacher:
        teacher = teacher.detach()
    s, t = as_float(student), as_float(teacher)

    log_ps = F.log_softmax(s, dim=1)
    with torch.no_grad():
        pt_t = F.softmax(t, dim=1).gather(1, t_idx.view(-1, 1)).squeeze(1)
    l_tar = -pt_t * log_ps.gather(1, t_idx.view(-1, 1)).squeeze(1)

    s_non = drop_target_column(s, t_idx)  # (N, C-1): never contains the target (cls_KD#16)
    t_non = drop_target_column(t, t_idx)
    log_ns = F.log_softmax(s_non / temperature, dim=1)
    nt = F.softmax(t_non / temperature, dim=1)
    l_non = -gamma * temperature**2 * (nt * log_ns).sum(1)

    l_tar, l_non = reduce_per_sample(l_tar, reduction), reduce_per_sample(l_non, reduction)
    return l_tar + l_non, {"nkd_target": l_tar, "nkd_non_target": l_non}


# ----------------------------------------------------------------------------------------------------------
# USKD
# ----------------------------------------------------------------------------------------------------------
def _label_support(target: Tensor, n: int, c: int) -> Tuple[Tensor, Tensor]:
    """Label classes and their values, both (N, K): hard labels K = 1 (value 1), soft labels the top-2."""
    if target.dim() == 1:
        idx = _hard_index(target, n, c).view(-1, 1)
        return idx, torch.ones(n, 1, dtype=torch.float32, device=target.device)
    _hard_index(target, n, c)  # shape / dtype validation
    values, idx = target.float().topk(min(2, c), dim=1)
    return idx, values


def uskd_soft_target(final_logits: Tensor, target: Tensor) -> Tuple[Tensor, Tensor]:
    """USKD soft target-class labels (spec §8.1), detached.

    Returns ``(idx, q)`` of shape (N, K): ``q = s^2 + v - mean_batch(s^2)`` with ``s = softmax(z)`` at the
    label classes ``idx`` and v the label values (1 for hard labels, K = 1; top-2 of a soft label, K = 2),
    and q set to 0 where v = 0. For hard labels ``q.mean() == 1``.
    """
    n, c = final_logits.shape
    idx, values = _label_support(target, n, c)
    with torch.no_grad():
        s = F.softmax(as_float(final_logits.detach()), dim=1).gather(1, idx)
        s2 = s * s
        q = s2 + values - s2.mean(dim=0, keepdim=True)
        q = torch.where(values > 0, q, torch.zeros_like(q))
    return idx, q


def uskd_rank_scores(
    final_logits: Tensor, weak_logits: Tensor, idx: Tensor, values: Tensor, rank: str = "prob"
) -> Tensor:
    """Class scores (N, C) that rank the classes for the Zipf labels (spec §8.3), computed without grad.

    ``score = softmax(w) / (1 - softmax(w)_t + 1e-6) + A`` with

    * ``rank="prob"`` (pre-2023-07-17 code): ``A = softmax(z) / (1 - s_t + 1e-6)`` — sum of the two heads'
      normalised distributions, so the weak head (intermediate feature) shapes the rank;
    * ``rank="logprob"`` (current official code): ``A = log_softmax(z) / (1 - log s_t + 1e-6)`` — the
      log-prob term dominates, rank ≈ rank of the final logits.

    ``s_t`` / ``log s_t`` sum over the label classes with v > 0 (one class for hard labels).
    """
    with torch.no_grad():
        support = (values > 0).to(torch.float32)
        pw = F.softmax(as_float(weak_logits.detach()), dim=1)
        pw_t = (pw.gather(1, idx) * support).sum(1, keepdim=True)
        score = pw / (1.0 - pw_t + _RANK_EPS)
        z = as_float(final_logits.detach())
        if rank == "prob":
            ps = F.softmax(z, dim=1)
            ps_t = (ps.gather(1, idx) * support).sum(1, keepdim=True)
            score = score + ps / (1.0 - ps_t + _RANK_EPS)
        elif rank == "logprob":
            log_ps = F.log_softmax(z, dim=1)
            log_ps_t = (log_ps.gather(1, idx) * support).sum(1, keepdim=True)
            score = score + log_ps / (1.0 - log_ps_t + _RANK_EPS)
        else:
            raise ValueError(f"rank must be 'prob' or 'logprob', got {rank!r}")
    return score


def zipf_labels(scores: Tensor, exclude: Tensor, exponent: float = 1.0) -> Tensor:
    """Rank-based Zipf non-target labels (N, C), detached (spec §8.3).

    All classes (label classes included) are sorted by ``scores`` descending; the class at 0-based position
    k gets ``1 / (k + 1)**exponent``; the ``exclude`` classes (an int64 (N,) / (N, K) index tensor or a bool
    (N, C) mask) are set to 0 and each row is renormalised to sum 1. If the target ranks first, the
    non-target labels are ``(1/2, ..., 1/C) / (H_C - 1)``. Ties keep class order (stable sort).
    """
    with torch.no_grad():
        n, c = scores.shape
        if exclude.dtype == torch.bool:
            excl = exclude
        else:
            excl = torch.zeros(n, c, dtype=torch.bool, device=scores.device)
            excl.scatter_(1, exclude.view(n, -1), True)
        order = torch.sort(scores.float(), dim=1, descending=True, stable=True).indices
        positions = torch.empty_like(order)
        positions.scatter_(1, order, torch.arange(c, device=scores.device).expand(n, c))
        weights = (positions.to(torch.float32) + 1.0).pow(-exponent)
        weights = weights.masked_fill(excl, 0.0)
        return weights / weights.sum(dim=1, keepdim=True)


def uskd_loss(
    final_logits: Tensor,
    weak_logits: Tensor,
    target: Tensor,
    alpha: float = 1.0,
    beta: float = 0.1,
    mu: float = 0.005,
    rank: str = "prob",
    label_smoothing: float = 0.1,
    reduction: str = "mean",
) -> Tuple[Tensor, Dict[str, Tensor]]:
    """Universal self-KD (spec §8): ``alpha * L_tar + beta * L_non + L_weak``, no teacher.

    * ``L_tar = -sum_k q_k log softmax(z)_{idx_k}`` with the detached soft target ``q`` (``uskd_soft_target``);
    * ``L_weak = mu * CE(w, (1 - eps) * label + eps / C)``, eps = ``label_smoothing`` = 0.1, on the weak head's
      logits ``w`` (``USKDHead``); mu lives inside this term;
    * ``L_non = -sum_{i not a label} zipf_i log softmax(z over the non-label classes)_i``, with detached Zipf
      labels ranked by ``uskd_rank_scores(..., rank)``.

    Gradient routing: the rank and q paths run under ``no_grad``, so ``weak_logits`` (and the head's
    weights) get gradient only from ``L_weak``, and ``final_logits`` only from ``L_tar`` and ``L_non``.

    Default ``rank="prob"`` (pre-2023-07-17 official code): the abstract says the rank comes from the
    intermediate feature, which only this variant honours (the current ``"logprob"`` code ranks almost
    purely by the final logits, a side effect of the same refactor that broke the NKD mask), and the ICCV
    numbers most likely come from the pre-refactor code (spec §15). Use ``rank="logprob"`` to match the
    current repository.

    Soft labels (N, C): the label classes are the top-2 of the label vector with v > 0; those classes are
    excluded from the non-target term (hard labels: only the target, i.e. C - 1 non-target classes).
    Returns ``(total, {"uskd_target", "uskd_non_target", "uskd_weak"})`` (weighted parts).
    """
    if final_logits.dim() != 2 or final_logits.shape != weak_logits.shape:
        raise ValueError(
            f"expected equal 2-D (N, C) logits, got {tuple(final_logits.shape)} / {tuple(weak_logits.shape)}"
        )
    n, c = final_logits.shape
    if c < 3:
        raise ValueError("USKD needs at least 3 classes")
    z, w = as_float(final_logits), as_float(weak_logits)

    idx, q = uskd_soft_target(z, target)
    _, values = _label_support(target, n, c)
    support = values > 0

    # target term
    log_pz = F.log_softmax(z, dim=1)
    l_tar = -(q * log_pz.gather(1, idx)).sum(1)

    # weak head, label-smoothed CE
    if target.dim() == 1:
        hard = torch.zeros_like(w).scatter_(1, idx, 1.0)
    else:
        hard = target.to(w.dtype)
    smooth = (1.0 - label_smoothing) * hard + label_smoothing / c
    l_weak = -mu * (smooth * F.log_softmax(w, dim=1)).sum(1)

    # Zipf non-target term over the classes that are not labels (exact exclusion via -inf, not -1000)
    excl = torch.zeros(n, c, dtype=torch.bool, device=z.device)
    excl.scatter_(1, idx, support)
    zipf = zipf_labels(uskd_rank_scores(z, w, idx, values, rank), excl)
    log_non = F.log_softmax(z.masked_fill(excl, float("-inf")), dim=1)
    l_non = -torch.where(excl, torch.zeros_like(log_non), zipf * log_non).sum(1)

    l_tar = reduce_per_sample(alpha * l_tar, reduction)
    l_non = reduce_per_sample(beta * l_non, reduction)
    l_weak = reduce_per_sample(l_weak, reduction)
    return l_tar + l_non + l_weak, {"uskd_target": l_tar, "uskd_non_target": l_non, "uskd_weak": l_weak}


class USKDHead(nn.Module):
    """The weak linear head W: R^d -> R^C of USKD (trained with the student, unused at inference).

    Takes an intermediate feature ``(N, d)``; a CNN feature map ``(N, d, H, W)`` is global-average-pooled
    first (the official neck). The optimizer must include this module's parameters.
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, feature: Tensor) -> Tensor:
        if feature.dim() == 4:
            feature = feature.mean(dim=(2, 3))
        if feature.dim() != 2:
            raise ValueError(f"expected (N, d) or (N, d, H, W) feature, got {tuple(feature.shape)}")
        return self.fc(feature)


class USKDLoss(nn.Module):
    """Module bundling ``USKDHead`` with the hyper-parameters; ``forward(feature, final_logits, target)``."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        alpha: float = 1.0,
        beta: float = 0.1,
        mu: float = 0.005,
        rank: str = "prob",
        label_smoothing: float = 0.1,
    ) -> None:
        super().__init__()
        if rank not in ("prob", "logprob"):
            raise ValueError(f"rank must be 'prob' or 'logprob', got {rank!r}")
        self.head = USKDHead(in_features, num_classes)
        self.alpha, self.beta, self.mu = alpha, beta, mu
        self.rank, self.label_smoothing = rank, label_smoothing

    def forward(
        self, feature: Tensor, final_logits: Tensor, target: Tensor, reduction: str = "mean"
    ) -> Tuple[Tensor, Dict[str, Tensor]]:
        return uskd_loss(
            final_logits,
            self.head(feature),
            target,
            self.alpha,
            self.beta,
            self.mu,
            self.rank,
            self.label_smoothing,
            reduction,
        )
