"""DAPO's two sampling-side techniques (Yu et al. 2025, "DAPO", §3.2 and §3.4), as pure functions.

* :func:`overlong_penalty`: the soft overlong punishment. With ``L_max`` the response budget and ``L_cache`` the
  punishment interval, a response of ``|y|`` tokens gets ``0`` while ``|y| <= L_max − L_cache``, then
  ``((L_max − L_cache) − |y|) / L_cache`` (linear from 0 down to −1 at ``L_max``), and ``−1`` beyond ``L_max``;
  times ``factor``. ``grpo`` / ``soft_grpo`` return it as the reward term ``overlong``.
* :func:`groups_to_keep`: dynamic sampling. Groups whose rewards are all equal have zero advantage and train
  nothing but the normaliser; DAPO over-samples prompts and keeps groups with a reward spread. Given the rewards
  of ``n_drawn`` groups (in drawing order) it returns the rows of the first ``n_keep`` groups with a spread, then,
  when there are too few, the first equal-reward groups to fill the batch (DAPO keeps sampling instead: see
  docs/soft-grpo.md for why hookmix bounds it).
"""

from __future__ import annotations

import torch

__all__ = ["overlong_penalty", "groups_to_keep"]


def overlong_penalty(lengths: torch.Tensor, max_length: int, cache: int, factor: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment per response, ``(B,)`` float32 from integer lengths ``(B,)``."""
    if cache < 1 or cache > max_length:
        raise ValueError(f"the overlong cache must be in 1..{max_length} (the response budget), got {cache}")
    y = lengths.to(torch.float64)
    start = float(max_length - cache)
    ramp = (start - y) / cache
    out = torch.where(y <= start, torch.zeros_like(y), torch.where(y <= max_length, ramp, torch.full_like(y, -1.0)))
    return (factor * out).to(torch.float32)


def groups_to_keep(rewards: torch.Tensor, group_size: int, n_keep: int) -> tuple[list[int], int]:
    """Rows of the ``n_keep`` groups to train on, and how many of them have a reward spread.

    ``rewards (n_drawn · G,)`` in group order; the kept groups stay in drawing order."""
    groups = rewards.detach().reshape(-1, group_size)
    if groups.shape[0] < n_keep:
        raise ValueError(f"{groups.shape[0]} groups drawn, {n_keep} to keep")
    spread = (groups.max(1).values != groups.min(1).values).tolist()
    varied = [g for g, s in enumerate(spread) if s]
    chosen = sorted((varied + [g for g, s in enumerate(spread) if not s])[:n_keep])  # drawing order
    rows = [g * group_size + j for g in chosen for j in range(group_size)]
    return rows, min(len(varied), n_keep)
