"""pass@k metrics (spec §10).

* Unbiased pass@k (Chen et al. 2021): ``1 − C(n−c, k)/C(n, k)``, computed in the stable product form
  ``1 − Π_{i=n−c+1}^{n} (1 − k/i)`` (exactly 1 when ``n − c < k``).
* First-k pass@k (the official SofT-GRPO eval): 1 if any of the first ``k`` samples is correct.
* pass@1 = mean accuracy over the ``n`` samples (both estimators agree at k = 1 in expectation; the
  unbiased one equals ``c/n`` exactly).
* Paired bootstrap over problems for the gap between two arms.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["pass_at_k", "first_k_pass", "pass_at_k_table", "paired_bootstrap"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``n`` samples of which ``c`` are correct."""
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    i = np.arange(n - c + 1, n + 1, dtype=np.float64)
    return float(1.0 - np.prod(1.0 - k / i))


def first_k_pass(correct: Sequence[bool], k: int) -> float:
    """1.0 if any of the first ``k`` samples is correct (the official eval's "pass@k")."""
    if k < 1 or k > len(correct):
        raise ValueError(f"k must be in [1, {len(correct)}]")
    return float(any(bool(x) for x in list(correct)[:k]))


def pass_at_k_table(correct, ks: Sequence[int] = (1, 2, 4, 8, 16, 32)) -> dict[str, float]:
    """Average over problems.  ``correct``: ``(problems, n)`` booleans in sample order.

    Returns ``{"pass@k": unbiased, "first@k": first-k variant}`` for each ``k <= n``, plus
    ``"pass@1_mean_acc"`` (= mean accuracy).
    """
    a = np.asarray(correct, dtype=bool)
    if a.ndim != 2:
        raise ValueError("correct must be (problems, samples)")
    P, n = a.shape
    c = a.sum(1)
    out: dict[str, float] = {"pass@1_mean_acc": float(a.mean())}
    for k in ks:
        if k > n:
            continue
        out[f"pass@{k}"] = float(np.mean([pass_at_k(n, int(ci), k) for ci in c]))
        out[f"first@{k}"] = float(np.mean(a[:, :k].any(1)))
    return out


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], n_boot: int = 10_000, seed: int = 0, alpha: float = 0.05
) -> dict[str, float]:
    """Bootstrap over problems of ``mean(a − b)`` for per-problem scores of two arms on the same problems."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("a and b must be 1-D and aligned by problem")
    d = x - y
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_boot, d.size))
    boots = d[idx].mean(1)
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return {
        "mean_diff": float(d.mean()),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "p_le_0": float((boots <= 0).mean()),
    }
