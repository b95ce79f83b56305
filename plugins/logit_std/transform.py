"""Logit standardization (LS) — Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024.

Pure PyTorch, no engine imports. Docs: ``docs/distillation.md`` (logit_std).

``Z(z) = (z - mean(z)) / (std(z) + eps)`` per row (sample), Bessel-corrected std (÷(C-1)), ``eps = 1e-7``
added to the std (not under the square root) — the official ``Tensor.std(dim=-1)`` code.

Where the base temperature lives
--------------------------------
LS is ``tau^2 * KL(softmax(Z(z_t)/tau) || softmax(Z(z_s)/tau))`` with the **base** temperature tau. The
intended composition is to standardize only and let the distillation loss apply tau as its ordinary
temperature, which also supplies the single ``tau^2`` factor::

    kd_loss(standardize_logits(z_s), standardize_logits(z_t), temperature=tau)        # KD+LS
    dkd_loss(standardize_logits(z_s), standardize_logits(z_t), y, 9*a, 9*b, tau)       # DKD+LS

The loss weight (9 on CIFAR) is applied by the caller. ``base_temperature`` (default 1.0 = no division)
exists only for consumers that apply no temperature of their own; it returns ``Z(z)/tau`` and the caller
must then multiply the loss by ``tau^2`` itself. Never set both (that divides twice). The scale factor is
always tau^2 (base), never (tau*std)^2, although the effective per-sample temperature is tau*std(z).

Apply to teacher and student separately, per sample, and only for the distillation consumer: CE keeps the
raw logits (spec §1.4, §9.2; MLKD's class/batch-correlation terms also use raw logits).

Constant rows (std = 0)
-----------------------
The forward is exact: such a row maps to all zeros via eps. The std is computed with a guarded square root
(``sqrt`` evaluated only where the variance is > 0, 0 elsewhere, with the gradient of that branch masked),
so the backward is finite too: the std branch contributes no gradient at a constant row and the Jacobian is
``(I - 1/C) / eps`` — the true derivative of the official forward there (the eps term makes Z differentiable
at constant rows). Non-constant rows match the official formula to float rounding. (torch 2.13's own ``std`` backward
also masks the zero-std case to 0, so the official code is finite there too on this version; the explicit
guard does not depend on that implementation detail.) Note the gradient at (near-)constant rows is of order
1/eps; with a zero-initialised classifier, prefer a non-zero init or gradient clipping.
"""

from __future__ import annotations

from typing import Dict

import torch

Tensor = torch.Tensor

__all__ = ["LS_PRESETS", "standardize_logits", "logit_std"]

#: LS settings (spec §9.2, sunshangquan/logit-standardization-KD tools/train.py defaults B 2, W 9).
#: KD+LS: KD temperature = base temperature, KD weight W, CE weight of the host method (0.1 on CIFAR KD).
#: DKD+LS: DKD alpha and beta are multiplied by W, T = base temperature, CE 1.0.
LS_PRESETS: Dict[str, Dict[str, float]] = {
    "kd_cifar100": {"base_temperature": 2.0, "kd_weight": 9.0, "ce_weight": 0.1},
    "dkd_cifar100": {"base_temperature": 2.0, "kd_weight": 9.0, "ce_weight": 1.0},
    "kd_imagenet_r34_r18": {"base_temperature": 2.0, "kd_weight": 9.0, "ce_weight": 1.0},
}


def logit_std(z: Tensor, unbiased: bool = True) -> Tensor:
    """Per-row std of ``z`` (..., C) with a finite backward at constant rows; keeps the last dim (size 1).

    ``unbiased=True`` (default) divides by C-1 like ``Tensor.std`` / the official LS code; ``False`` gives
    the population std (a deviation from the official code, spec §1.2).
    """
    c = z.shape[-1]
    if unbiased and c < 2:
        raise ValueError("Bessel-corrected std needs at least 2 classes")
    centered = z - z.mean(dim=-1, keepdim=True)
    var = centered.pow(2).sum(dim=-1, keepdim=True) / (c - 1 if unbiased else c)
    positive = var > 0
    safe_var = torch.where(positive, var, torch.ones_like(var))  # sqrt never sees 0: no inf/NaN in backward
    return torch.where(positive, safe_var.sqrt(), torch.zeros_like(var))


def standardize_logits(z: Tensor, eps: float = 1e-7, base_temperature: float = 1.0, unbiased: bool = True) -> Tensor:
    """Per-row Z-score ``(z - mean) / (std + eps) / base_temperature`` over the last dim.

    Works on any ``(..., C)`` tensor (rows = all leading dims); float32/float64 keep their dtype, half and
    bfloat16 inputs are computed and returned in float32. Keep ``base_temperature=1``
    and give the base temperature to the KD/DKD loss as its temperature (module docstring).
    """
    if not base_temperature > 0:
        raise ValueError(f"base_temperature must be > 0, got {base_temperature}")
    if z.dtype in (torch.float16, torch.bfloat16):
        z = z.float()  # the row statistics need float32 precision
    centered = z - z.mean(dim=-1, keepdim=True)
    out = centered / (logit_std(z, unbiased) + eps)
    if base_temperature != 1.0:
        out = out / base_temperature
    return out
