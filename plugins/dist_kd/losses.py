"""DIST (Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022). Pure PyTorch, no engine
imports.

Conventions of the official code (hunto/image_classification_sota, ``lib/models/losses/dist_kd.py``):

* ``p_s = softmax(z_s / tau)``, ``p_t = softmax(z_t / tau)`` over the classes;
* the Pearson correlation of two vectors is the cosine of the mean-centred vectors, with the denominator
  ``|a| |b| + 1e-8`` (the eps sits outside the product of the norms);
* ``inter = 1 - mean over samples of corr(p_s[i, :], p_t[i, :])`` (each sample's ranking of the classes);
* ``intra = 1 - mean over classes of corr(p_s[:, c], p_t[:, c])`` (each class's ranking of the samples: the term
  that couples the samples of a batch, so it must see the whole global batch under DDP);
* ``loss = tau^2 * (beta * inter + gamma * intra)``; defaults ``beta = gamma = tau = 1`` (the CIFAR configs use
  ``tau = 4`` and a KD weight of 2, the caller's factor).

The teacher is detached (a frozen teacher receives no gradient); half-precision logits are upcast to float32.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

__all__ = ["EPS", "dist_loss", "inter_class_relation", "intra_class_relation", "pearson_rows"]

EPS = 1e-8  # the official denominator's eps: |a| |b| + 1e-8 (dropping it moves the tau = 4 loss by about 1e-5)


def pearson_rows(a: Tensor, b: Tensor, eps: float = EPS) -> Tensor:
    """The Pearson correlation of each row of ``a`` with the same row of ``b``, shape ``(rows,)``."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def inter_class_relation(p_s: Tensor, p_t: Tensor) -> Tensor:
    """``1 - mean_i corr(p_s[i, :], p_t[i, :])``: per sample, across the classes."""
    return 1 - pearson_rows(p_s, p_t).mean()


def intra_class_relation(p_s: Tensor, p_t: Tensor) -> Tensor:
    """``1 - mean_c corr(p_s[:, c], p_t[:, c])``: per class, across the samples of the batch."""
    return inter_class_relation(p_s.transpose(0, 1), p_t.transpose(0, 1))


def dist_loss(
    student: Tensor,
    teacher: Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
    detach_teacher: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """DIST on ``(N, C)`` logits: ``tau^2 * (beta * inter + gamma * intra)``.

    Returns ``(total, {"inter": tau^2 beta inter, "intra": tau^2 gamma intra})``; the parts sum to ``total``.
    ``N`` must be the whole batch the loss is meant for: the intra-class term of a part of a batch is not
    that of the batch (the plugin gathers every rank's rows first).
    """
    if student.dim() != 2 or student.shape != teacher.shape:
        raise ValueError(
            f"expected (N, C) student and teacher logits of one shape, got {tuple(student.shape)} and "
            f"{tuple(teacher.shape)}; flatten (B, T, V) language-model logits to (B*T, V) first"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if detach_teacher:
        teacher = teacher.detach()
    if student.dtype in (torch.float16, torch.bfloat16):
        student = student.float()  # correlations of probabilities lose too much in half precision
    p_s = torch.softmax(student / temperature, dim=1)
    p_t = torch.softmax(teacher.to(p_s.dtype) / temperature, dim=1)
    t2 = temperature**2
    inter = t2 * beta * inter_class_relation(p_s, p_t)
    intra = t2 * gamma * intra_class_relation(p_s, p_t)
    return inter + intra, {"inter": inter, "intra": intra}
