"""Empirical (lower) estimates of Lipschitz constants, to check certified bounds (spec §9 check 10).

Every estimate here is a *lower* bound on the true Lipschitz constant in the stated norm, so a correct
certificate must be >= it.

* :func:`rms_jacobian_norm` -- local RMS->RMS Jacobian norm of a vector map by JVP/VJP power iteration
  (MLP; ``K_l2 = K_RMS·sqrt(out/in)``).
* :func:`sequence_jacobian_norm` -- local Jacobian norm of a sequence map in the max-over-tokens RMS
  norm (the norm the transformer bound is read in; spec §9 check 10 interpretation). For a fixed output
  token t, maximises ``rms((J·delta)_t)`` over ``max_s rms(delta_s) <= 1`` by the ascent
  ``delta_s <- normalise(grad_s)``; the objective is convex, so each step cannot decrease it.
* :func:`random_pair_ratio` -- finite (global) ratios ``|f(x') - f(x)| / |x' - x|`` over random pairs.

``fn`` must support ``torch.func.jvp`` (use ``LipschitzGPT(..., attn_impl="math")`` on CPU).
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from torch.func import jvp, vjp

__all__ = ["rms_jacobian_norm", "sequence_jacobian_norm", "random_pair_ratio", "token_rms_max"]


def token_rms_max(y: torch.Tensor) -> torch.Tensor:
    """max over all leading positions of the RMS over the last dim (per-example for dim 0)."""
    rms = y.pow(2).mean(-1).sqrt()
    return rms.reshape(rms.shape[0], -1).max(dim=1).values  # (B,) for (B, n) inputs: the plain RMS


def rms_jacobian_norm(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, iters: int = 30, seed: int = 0
) -> float:
    """Power iteration on ``J^T J`` at ``x`` (shape (1, in_dim)); returns ``sqrt(in/out)·sigma_max(J)``."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(x.shape, generator=g, dtype=x.dtype)
    v = v / v.norm()
    out, vjp_fn = vjp(fn, x)
    sigma = 0.0
    for _ in range(iters):
        _, Jv = jvp(fn, (x,), (v,))
        Jv = Jv.detach()
        sigma = float(Jv.norm())
        (w,) = vjp_fn(Jv)
        w = w.detach()
        v = w / w.norm().clamp_min(1e-30)
    _, Jv = jvp(fn, (x,), (v,))
    sigma = max(sigma, float(Jv.detach().norm()))
    return sigma * (x[0].numel() / out[0].numel()) ** 0.5


def sequence_jacobian_norm(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tokens: Optional[Iterable[int]] = None,
    iters: int = 20,
    seed: int = 0,
) -> float:
    """Local Jacobian norm of ``fn: (1, T, d) -> (1, T, V)`` in max-over-tokens RMS units.

    Returns ``max_t max_{max_s rms(delta_s) <= 1} rms((J delta)_t)`` estimated by ascent, over the
    output tokens ``tokens`` (default: all).
    """
    T = x.shape[1]
    g = torch.Generator().manual_seed(seed)
    out, vjp_fn = vjp(fn, x)
    best = 0.0

    def normalise(d: torch.Tensor) -> torch.Tensor:
        r = d.pow(2).mean(-1, keepdim=True).sqrt()
        return torch.where(r > 0, d / r.clamp_min(1e-30), torch.zeros_like(d))

    for t in range(T) if tokens is None else tokens:
        delta = normalise(torch.randn(x.shape, generator=g, dtype=x.dtype))
        for _ in range(iters):
            _, Jd = jvp(fn, (x,), (delta,))
            Jd = Jd.detach()
            best = max(best, float(Jd[0, t].pow(2).mean().sqrt()))
            cot = torch.zeros_like(out)
            cot[0, t] = Jd[0, t]
            (grad,) = vjp_fn(cot)
            grad = grad.detach()
            if float(grad.abs().max()) == 0.0:
                break
            delta = normalise(grad)
        _, Jd = jvp(fn, (x,), (delta,))
        best = max(best, float(Jd.detach()[0, t].pow(2).mean().sqrt()))
    return best


def random_pair_ratio(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    n_pairs: int = 64,
    radius: float = 0.1,
    norm: Callable[[torch.Tensor], torch.Tensor] = token_rms_max,
    project: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    seed: int = 0,
) -> float:
    """``max |f(x') - f(x)| / |x' - x|`` over random perturbations ``x' = x + radius·noise`` (batched).

    ``norm`` maps a batch to per-example norms (default: max-over-tokens RMS, which for (B, n) inputs is
    the plain RMS). ``project`` optionally maps perturbed inputs back to the valid domain.
    """
    g = torch.Generator().manual_seed(seed)
    xs = x.expand(n_pairs, *x.shape[1:])
    xp = xs + radius * torch.randn(xs.shape, generator=g, dtype=x.dtype)
    if project is not None:
        xp = project(xp)
    with torch.no_grad():
        num = norm(fn(xp) - fn(xs))
        den = norm(xp - xs)
    return float((num / den.clamp_min(1e-30)).max())
