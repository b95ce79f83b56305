"""Weight-constraint maps for Lipschitz-constrained training (conventions: :mod:`plugins.lipschitz.spectral`).

Soft cap and its coupling to the update norm, spectral normalize / weight decay / hammer, the hard cap (odd
polynomial with a validity guard), exact and SVD clips, Stiefel projection, embedding-row projections. Every map is
pure (returns a new tensor), computes in fp32 and casts back; design choices: docs/lipschitz.md.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from .spectral import (
    HARD_CAP_COEFFS,
    HARD_CAP_VALID_RADIUS,
    JAX_NS6,
    SOFT_CAP_MAX_RATIO,
    Coeffs,
    _check_2d,
    _composite,
    _compute_dtype,
    _gram_side_tall,
    _odd_poly_step,
    _pi_top,
    msign,
    msign_accurate,
    rms_scale,
    rms_to_rms_norm,
)

__all__ = [
    "PROJECTIONS",
    "hard_cap_scalar",
    "normalize_embedding_columns",
    "normalize_embedding_rows",
    "project_embedding_columns",
    "project_embedding_rows",
    "sigma_max_upper_bound",
    "soft_cap",
    "soft_cap_coupling",
    "soft_cap_scalar",
    "spectral_clip_exact",
    "spectral_hammer",
    "spectral_hard_cap",
    "spectral_normalize",
    "spectral_orthogonalize",
    "spectral_soft_cap",
    "spectral_weight_decay",
    "svd_clip",
]

# --------------------------------------------------------------------------------------------
# Soft cap (spec §4.6)
# --------------------------------------------------------------------------------------------


def soft_cap_scalar(sigma, alpha: float):
    """Scalar soft-cap map ``f_a(s) = p2(p1(s))``, ``p1(s) = s - a s^3``, ``p2(x) = x + a x^3``
    (= ``s - 3a^2 s^5 + 3a^3 s^7 - a^4 s^9``). Works on floats and numpy arrays."""
    x = np.asarray(sigma, dtype=np.float64)
    y = x - alpha * x**3
    y = y + alpha * y**3
    return y if y.ndim else float(y)


def soft_cap_coupling(
    w_max: float,
    wd: float,
    eta: float,
    max_ratio: float = SOFT_CAP_MAX_RATIO,
    strict: bool = True,
) -> float:
    """Soft-cap strength alpha coupled to the optimizer step (official ``soft_cap_coupling``).

    ``k = w_max·(1 - wd) + eta`` is the largest RMS->RMS singular value reachable from a capped
    matrix after a decoupled decay by the factor ``(1 - wd)`` (``wd`` = weight decay × step size, the
    *fraction* removed) and an update of RMS->RMS norm ``<= eta``. alpha is the smallest non-negative
    real root of ``-k^9 a^4 + 3k^7 a^3 - 3k^5 a^2 + (k - w_max) = 0``, i.e. of ``f_a(k) = w_max``.
    Solved in the scale-free variable ``beta = a k^2``: ``-b^4 + 3b^3 - 3b^2 + (1 - w_max/k) = 0``.
    Returns 0 when ``k <= w_max`` (nothing to cap).

    Guarantee: for ``eta/w_max <= 0.3`` the map is monotone on [0, k] with maximum exactly w_max, so
    ``sigma_max <= w_max`` is preserved (a certificate) provided ``eta`` bounds the true update norm
    (multiply by the orthogonalizer overshoot!). Above 0.3 it is not: ``strict=True`` raises
    ``ValueError``, ``strict=False`` warns.

    Reference: (1, 0, 0.1) -> 0.158864; (6, 0, 0.1) -> 0.0020655; (1, 0, 0.05·1.14502·1.05) -> 0.131992.
    """
    w_max, wd, eta = float(w_max), float(wd), float(eta)
    if w_max <= 0:
        raise ValueError("w_max must be positive")
    if eta < 0 or wd < 0:
        raise ValueError("eta and wd must be non-negative")
    ratio = eta / w_max
    if ratio > max_ratio:
        msg = (
            f"soft cap: eta/w_max = {ratio:.4g} > {max_ratio}; the soft cap is then non-monotone and "
            "no longer a certificate (spec §4.6). Lower the learning rate or raise w_max."
        )
        if strict:
            raise ValueError(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
    k = w_max * (1.0 - wd) + eta
    if k <= w_max:
        return 0.0
    const = 1.0 - w_max / k
    roots = np.roots([-1.0, 3.0, -3.0, 0.0, const])
    real = sorted(r.real for r in roots if abs(r.imag) <= 1e-9 * max(1.0, abs(r)) and r.real >= 0.0)
    if not real:  # pragma: no cover - g(beta) spans [g_min, 1] on [0, 1]; const in (0, 1) always has a root
        raise RuntimeError(f"soft_cap_coupling: no non-negative real root for w_max={w_max}, k={k}")
    beta = real[0]
    # polish with Newton on h(b) = -b^4 + 3b^3 - 3b^2 + const
    for _ in range(3):
        h = -(beta**4) + 3 * beta**3 - 3 * beta**2 + const
        dh = -4 * beta**3 + 9 * beta**2 - 6 * beta
        if dh == 0:
            break
        beta -= h / dh
    return float(beta / (k * k))


def soft_cap(W: torch.Tensor, alpha: float) -> torch.Tensor:
    """Spectral soft cap on ``W~ = W/s``: ``M <- M(I - a M^T M)``, then ``M <- M(I + a M^T M)``.

    On each RMS->RMS singular value: ``sigma -> f_a(sigma)`` (:func:`soft_cap_scalar`); singular
    vectors unchanged. Small values nearly untouched (relative change ≈ 3a^2 sigma^4). Choose ``alpha``
    with :func:`soft_cap_coupling`; then it keeps ``sigma_max <= w_max`` step after step when each
    update is bounded by ``eta``. Cost: 4 matmuls (2 Grams on the smaller side + 2 products), fp32.
    """
    _check_2d(W)
    if alpha == 0.0:
        return W.detach().clone()
    s = rms_scale(W)
    a = float(alpha)
    M = W.detach().to(_compute_dtype(W)) / s
    M = _odd_poly_step(M, 1.0, -a, 0.0)
    M = _odd_poly_step(M, 1.0, a, 0.0)
    return (M * s).to(W.dtype)


def spectral_soft_cap(W: torch.Tensor, w_max: float, eta: float, wd: float = 0.0, strict: bool = True) -> torch.Tensor:
    """``soft_cap(W, soft_cap_coupling(w_max, wd, eta))``. ``eta`` must be the RMS->RMS bound of the
    update just applied (lr × orthogonalizer overshoot; see ``MuonAdamW.max_update_norm``)."""
    return soft_cap(W, soft_cap_coupling(w_max, wd, eta, strict=strict))


# --------------------------------------------------------------------------------------------
# Power-iteration based maps (spec §4.2–4.4)
# --------------------------------------------------------------------------------------------


def spectral_normalize(
    W: torch.Tensor,
    w_max: float,
    iters: int = 16,
    pi_state: Optional[dict] = None,
    exact: bool = False,
) -> torch.Tensor:
    """Spectral normalization as a projection: ``W <- W / max(1, sigma_hat/w_max)`` (RMS->RMS units).

    Divides the whole matrix: every singular value shrinks by the same factor, ratios are kept.
    A matrix already within ``w_max`` is returned unchanged (bit-identical copy).
    Guarantee: ``sigma_max <= w_max · sigma_max/sigma_hat`` where power iteration gives
    ``sigma_hat <= sigma_max`` (relative error ``eps_power``); ``exact=True`` measures by SVD instead
    (guaranteed ``<= w_max`` up to rounding). Cost: ``2·iters + 1`` mat-vecs + O(mn).
    """
    _check_2d(W)
    if exact:
        sig = rms_to_rms_norm(W)
    else:
        sigma, _, _ = _pi_top(W, iters, pi_state)
        sig = float(sigma) / rms_scale(W)
    if sig <= w_max:
        return W.detach().clone()
    return (W.detach().to(_compute_dtype(W)) * (w_max / sig)).to(W.dtype)


def spectral_weight_decay(
    W: torch.Tensor, lam: float, iters: int = 16, pi_state: Optional[dict] = None
) -> torch.Tensor:
    """Spectral weight decay: ``W~ <- W~ - lam · sigma_1 u_1 v_1^T`` (top singular value × (1 - lam)).

    Not scaled by the learning rate (applied as-is every step; reference default lam = 0.1).
    Other singular values unchanged up to power-iteration error. Not a cap: it only shrinks sigma_1
    geometrically. Cost: power iteration + rank-1 update, O(mn).
    """
    _check_2d(W)
    sigma, u, v = _pi_top(W, iters, pi_state)
    X = W.detach().to(_compute_dtype(W))
    return (X - (float(lam) * sigma) * torch.outer(u, v)).to(W.dtype)


def spectral_hammer(W: torch.Tensor, w_max: float, iters: int = 16, pi_state: Optional[dict] = None) -> torch.Tensor:
    """Spectral hammer: ``W~ <- W~ + (w_max - sigma_1) u_1 v_1^T`` -- **sets** sigma_1 to ``w_max``.

    Acts from above *and below* (raises sigma_1 when it is smaller than w_max). Other singular values
    are unchanged up to power-iteration error.
    **Not a cap**: only the top singular value is touched, so if sigma_2 > w_max the result has
    sigma_max = sigma_2 > w_max. It bounds the norm only if at most one singular value crossed w_max
    since the last call (low-stable-rank updates, e.g. Adam); under Muon's full-rank updates several
    can. Do not certify with it -- certify from measured norms. Cost: power iteration + rank-1 update.
    """
    _check_2d(W)
    s = rms_scale(W)
    sigma, u, v = _pi_top(W, iters, pi_state)
    X = W.detach().to(_compute_dtype(W))
    delta = float(w_max) * s - sigma  # raw units: the rank-1 term is scaled by s as well
    return (X + delta * torch.outer(u, v)).to(W.dtype)


# --------------------------------------------------------------------------------------------
# Hard cap (spec §4.5)
# --------------------------------------------------------------------------------------------


def hard_cap_scalar(sigma):
    """Composite 4-round hard-cap polynomial on scalars/arrays (approximates ``min(1, sigma)``).

    Within 0.034 of ``min(1, sigma)`` on [0, 3], max 1.0109 (at sigma ≈ 1.19); diverges for
    sigma ≳ 3.5 (p(4) ≈ -1, p(5) ≈ 6e126).
    """
    x = np.asarray(sigma, dtype=np.float64)
    y = _composite(x, HARD_CAP_COEFFS)
    return y if y.ndim else float(y)


def sigma_max_upper_bound(W: torch.Tensor, squarings: int = 3) -> float:
    """Rigorous (up to rounding) cheap upper bound on the raw ``sigma_max(W)``.

    With ``X = W/||W||_F``, ``A = X^T X`` (smaller side, n x n) and ``m = 2**squarings``:
    ``sigma_max(W) <= ||W||_F · ||A^m||_F^(1/(2m)) <= n^(1/(4m)) · sigma_max(W)``.
    squarings=3 (A^8): overestimate at most ``n^(1/32)`` (1.24 for n = 1024). Cost: 1 + squarings
    n x n matmuls. A relative margin of 1e-5 (fp64: 1e-12) covers rounding.
    """
    _check_2d(W)
    dt = _compute_dtype(W)
    X = W.detach().to(dt)
    fro = X.norm()
    if float(fro) == 0.0:
        return 0.0
    X = X / fro
    A = X.mT @ X if _gram_side_tall(X) else X @ X.mT
    for _ in range(int(squarings)):
        A = A @ A
    m = 2 ** int(squarings)
    val = float(A.norm())
    if val <= 0.0 or not math.isfinite(val):  # underflow: fall back to the Frobenius bound
        return float(fro)
    margin = 1.0 + (1e-12 if dt == torch.float64 else 1e-5)
    return min(float(fro), float(fro) * val ** (1.0 / (2 * m)) * margin)


def spectral_hard_cap(
    W: torch.Tensor,
    w_max: float,
    fallback: str = "exact",
    valid_radius: float = HARD_CAP_VALID_RADIUS,
) -> torch.Tensor:
    """Spectral hard cap: ``W = s·w_max · P(W/(s·w_max))``, P = 4 rounds of ``M <- M(aI + bA + cA^2)``.

    P maps each RMS->RMS singular value sigma (in units of w_max) to ≈ ``min(1, sigma)``: error
    <= 0.034·w_max on [0, 3·w_max], overshoot up to 1.0109·w_max (so it is a cap to 1.1%, not exact;
    certify from measured norms).
    **Validity guard (never applied outside its region).** P diverges for sigma ≳ 3.5·w_max, so we
    first compute the rigorous cheap bound :func:`sigma_max_upper_bound` (4 Gram-side matmuls). If it
    is <= ``valid_radius · w_max`` (3) the polynomial is applied; otherwise ``fallback="exact"``
    (default) returns the exact clip :func:`svd_clip`, and ``fallback="normalize"`` first divides by
    ``bound/(3·w_max)`` (shrinks every sigma) and then applies P. In normal use (capped matrix plus a
    step of norm <= 0.3·w_max) the bound stays below 3·w_max and the fallback never runs.
    Cost: 12 matmuls + 4 for the guard.
    """
    _check_2d(W)
    s = rms_scale(W)
    dt = _compute_dtype(W)
    scale = s * float(w_max)
    M = W.detach().to(dt) / scale
    ub = sigma_max_upper_bound(M)
    if ub > valid_radius:
        if fallback == "exact":
            return svd_clip(W, w_max)
        if fallback == "normalize":
            M = M * (valid_radius / ub)
        else:
            raise ValueError(f"unknown hard-cap fallback {fallback!r}")
    for a, b, c in HARD_CAP_COEFFS:
        M = _odd_poly_step(M, a, b, c)
    return (M * scale).to(W.dtype)


def spectral_clip_exact(
    W: torch.Tensor,
    w_max: float,
    msign_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> torch.Tensor:
    """Exact spectral clip via the msign identity (Cesista / Su):

    with ``M = W~/w_max``, ``O = msign(M)``, ``D = O - M``:  ``clip(M) = ½[M + O - msign(D) D^T O]``
    = ``U min(Sigma, 1) V^T``; the result is rescaled by ``s·w_max``. Exact (to rounding) whenever
    ``msign_fn`` is exact -- the default :func:`msign_accurate` (SVD polar). Plug in
    ``lambda X: msign_accurate(X, "newton")`` (matmul-only) for an accelerator-friendly version;
    approximate NS msigns make it approximate. Guarantee: sigma_max <= w_max (with an exact msign),
    singular values below w_max unchanged. Cost: two msign calls + 3 matmuls.
    """
    _check_2d(W)
    fn = msign_fn if msign_fn is not None else msign_accurate
    s = rms_scale(W)
    scale = s * float(w_max)
    M = W.detach().to(_compute_dtype(W)) / scale
    O = fn(M).to(M.dtype)
    D = O - M
    SD = fn(D).to(M.dtype)
    C = 0.5 * (M + O - SD @ (D.mT @ O))
    return (C * scale).to(W.dtype)


def svd_clip(W: torch.Tensor, w_max: float) -> torch.Tensor:
    """Exact reference clip ``U · min(Sigma, s·w_max) · V^T`` (RMS->RMS singular values capped at w_max).

    Guarantee: sigma_max <= w_max, smaller singular values unchanged. Cost: thin SVD,
    O(mn·min(m, n)) with a large constant; fp32 (fp64 kept); not for bf16.
    """
    _check_2d(W)
    s = rms_scale(W)
    X = W.detach().to(_compute_dtype(W))
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    S = S.clamp(max=float(w_max) * s)
    return ((U * S) @ Vh).to(W.dtype)


def spectral_orthogonalize(
    W: torch.Tensor, w_max: float, coeffs: Union[Coeffs, Sequence[Coeffs]] = JAX_NS6
) -> torch.Tensor:
    """Stiefel projection: ``W = s·w_max·msign_approx(W/(s·w_max))`` -- pins *all* RMS->RMS singular
    values near w_max (JAX NS6: in [0.866, 0.9993]·w_max for singular values >= 1e-3·||W~||_F).
    Cost: 3 matmuls per NS round (18 for JAX NS6)."""
    s = rms_scale(W)
    return msign(W, coeffs) * (s * float(w_max))


# --------------------------------------------------------------------------------------------
# Embedding constraints (spec §4.8)
# --------------------------------------------------------------------------------------------


def project_embedding_rows(E: torch.Tensor, max_rms: float = 1.0) -> torch.Tensor:
    """Each row ``<- row / max(1, rms(row)/max_rms)`` (rows with RMS <= max_rms unchanged).

    Use for ``nn.Embedding.weight`` (V, d): one row per token -- applied to *all* rows, unlike
    ``nn.Embedding(max_norm=...)`` which only renormalises rows that are looked up. Cost O(Vd).
    """
    _check_2d(E)
    X = E.detach().to(_compute_dtype(E))
    rms = X.pow(2).mean(dim=1, keepdim=True).sqrt()
    factor = torch.clamp(rms / float(max_rms), min=1.0)
    return torch.where(factor > 1.0, X / factor, X).to(E.dtype)


def project_embedding_columns(E: torch.Tensor, max_rms: float = 1.0) -> torch.Tensor:
    """Column version of :func:`project_embedding_rows` (JAX ``Embed`` layout (d, V))."""
    return project_embedding_rows(E.t(), max_rms).t().contiguous()


def normalize_embedding_rows(E: torch.Tensor, rms: float = 1.0) -> torch.Tensor:
    """Every row rescaled to RMS exactly ``rms`` (embedding init, spec §3 item 6)."""
    _check_2d(E)
    X = E.detach().to(_compute_dtype(E))
    r = X.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(torch.finfo(X.dtype).tiny)
    return (X * (float(rms) / r)).to(E.dtype)


def normalize_embedding_columns(E: torch.Tensor, rms: float = 1.0) -> torch.Tensor:
    """Column version of :func:`normalize_embedding_rows`."""
    return normalize_embedding_rows(E.t(), rms).t().contiguous()


#: Constraint maps that need only ``(W, w_max)``; the soft cap also needs eta (see spectral_soft_cap).
PROJECTIONS = {
    "svd_clip": svd_clip,
    "exact_clip": spectral_clip_exact,
    "hard_cap": spectral_hard_cap,
    "spectral_normalize": spectral_normalize,
    "spectral_hammer": spectral_hammer,
    "orthogonalize": spectral_orthogonalize,
}
