"""Learning-rate schedule shared by the optimizer plugins (pure Python; no engine import)."""

from __future__ import annotations

import math


def schedule_factor(step: int, total: int, warmup: int, kind: str, min_ratio: float) -> float:
    """LR multiplier: linear warm-up, then cosine / linear decay to ``min_ratio`` or constant."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return min_ratio + (1 - min_ratio) * (1 - progress)
