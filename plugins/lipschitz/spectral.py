"""Spectral norm helpers and weight-constraint maps for Lipschitz-constrained training.

Conventions (spec ``lipschitz.md`` §2)
-------------------------------------
* A weight ``W`` has shape ``(fan_out, fan_in)`` (``nn.Linear.weight`` layout).
* Every norm and every ``w_max`` is in **RMS->RMS** units:
  ``||W||_{RMS->RMS} = sqrt(fan_in / fan_out) * sigma_max(W)``.
  Write ``s = sqrt(fan_out / fan_in)`` and ``W~ = W / s``; the singular values of ``W~``
  are the RMS->RMS singular values. The constraint maps act on ``W~`` and scale back by ``s``.
* **Precision.** Every map upcasts to float32 (float64 inputs stay float64), computes, and casts
  the result back to the input dtype. Keep master weights in fp32: writing a capped matrix back
  to bf16 re-rounds it (spec §1 item 4, §8.4).
* Every map is **pure**: it returns a new tensor and never modifies its input. Engine wiring does
  ``p.copy_(map(p, ...))`` under ``torch.no_grad()``.
* Power-iteration maps are **stateless by default** (fresh start from a generator seeded by the
  matrix shape, as the JAX reference folds its key with the shape), so results are deterministic
  and a resumed run is bit-exact without saving vectors. Pass ``pi_state={}`` (a dict the caller
  keeps) to warm-start from the previous call's vector instead (cheaper, not stateless).

Orthogonalizer coefficient tables (one ``(a, b, c)`` per round; round: ``X <- aX + b(XX^T)X + c(XX^T)^2 X``):
``KELLER_NS5`` (torch.optim.Muon default; max output 1.2024 on (0, 1]), ``NANOGPT_NS5`` (max 1.14502),
``JAX_NS6`` (outputs in [0.866, 0.9993] on [1e-3, 1]).
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch

Coeffs = Tuple[float, float, float]
CoeffTable = Tuple[Coeffs, ...]

__all__ = [
    "KELLER_NS5",
    "NANOGPT_NS5",
    "JAX_NS6",
    "HARD_CAP_COEFFS",
    "SOFT_CAP_MAX_RATIO",
    "rms_scale",
    "rms_to_rms_norm",
    "max_row_rms",
    "max_column_rms",
    "power_iteration",
    "msign",
    "msign_accurate",
    "ns_output_range",
    "ns_overshoot",
    "soft_cap_scalar",
    "soft_cap_coupling",
    "soft_cap",
    "spectral_soft_cap",
    "spectral_normalize",
    "spectral_weight_decay",
    "spectral_hammer",
    "hard_cap_scalar",
    "sigma_max_upper_bound",
    "spectral_hard_cap",
    "spectral_clip_exact",
    "svd_clip",
    "spectral_orthogonalize",
    "project_embedding_columns",
    "project_embedding_rows",
    "normalize_embedding_rows",
    "normalize_embedding_columns",
    "PROJECTIONS",
]

# --------------------------------------------------------------------------------------------
# Coefficient tables
# --------------------------------------------------------------------------------------------

#: Keller Jordan's quintic Newton–Schulz, 5 rounds; the torch.optim.Muon default.
KELLER_NS5: CoeffTable = ((3.4445, -4.7750, 2.0315),) * 5

#: The 5-round orthogonalizer of the official NanoGPT soft-cap script (spec §5).
NANOGPT_NS5: CoeffTable = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)

#: The 6-round JAX/Modula orthogonalizer (integer table / 1024, spec §5).
JAX_NS6: CoeffTable = tuple(
    (a / 1024.0, b / 1024.0, c / 1024.0)
    for a, b, c in (
        (3955, -8306, 5008),
        (3735, -6681, 3463),
        (3799, -6499, 3211),
        (4019, -6385, 2906),
        (2677, -3029, 1162),
        (2172, -1833, 682),
    )
)

#: The 4-round odd polynomial approximating min(1, sigma) (spec §4.5).
HARD_CAP_COEFFS: CoeffTable = (
    (0.805032, 0.206361, -0.019763),
    (0.649867, 0.162935, -0.011150),
    (1.810259, -0.200265, 0.008251),
    (1.004384, -0.183490, 0.014413),
)

#: Largest eta / w_max for which the soft-cap coupling is a certificate (spec §4.6).
SOFT_CAP_MAX_RATIO = 0.3

#: Inputs above this (in units of w_max) make the hard-cap polynomial invalid; the guard keeps below it.
HARD_CAP_VALID_RADIUS = 3.0

_PI_BASE_SEED = 0x5EC7  # base seed of the stateless power-iteration start vectors


# --------------------------------------------------------------------------------------------
# Small utilities
# --------------------------------------------------------------------------------------------


def _coeff_table(coeffs: Union[Coeffs, Sequence[Coeffs]], steps: Optional[int] = None) -> CoeffTable:
    """Normalise ``coeffs`` to a tuple of (a, b, c) rounds.

    ``coeffs`` is either one triple (repeated ``steps`` times, default 5) or a sequence of triples
    (then ``steps``, if given, must equal its length).
    """
    seq = tuple(coeffs)
    if len(seq) == 3 and all(isinstance(x, (int, float)) for x in seq):
        n = 5 if steps is None else int(steps)
        return (tuple(float(x) for x in seq),) * n  # type: ignore[return-value]
    table = tuple(tuple(float(x) for x in c) for c in seq)
    if any(len(c) != 3 for c in table):
        raise ValueError("each Newton–Schulz round needs exactly three coefficients (a, b, c)")
    if steps is not None and steps != len(table):
        raise ValueError(f"steps={steps} does not match a table of {len(table)} rounds")
    return table  # type: ignore[return-value]


def _compute_dtype(W: torch.Tensor) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if W.dtype == torch.float64 else torch.float32


def _check_2d(W: torch.Tensor) -> None:
    if W.ndim != 2:
        raise ValueError(f"expected a 2-D weight (fan_out, fan_in), got shape {tuple(W.shape)}")


def rms_scale(W: torch.Tensor) -> float:
    """``s = sqrt(fan_out / fan_in)`` for ``W`` of shape (fan_out, fan_in)."""
    _check_2d(W)
    return math.sqrt(W.shape[0] / W.shape[1])


def rms_to_rms_norm(W: torch.Tensor) -> float:
    """Exact RMS->RMS operator norm ``sqrt(fan_in/fan_out) * sigma_max(W)`` (fp32 SVD; fp64 kept).

    Cost: one singular-value computation, O(mn·min(m, n)). Use for measurement/logging and for the
    certificate (spec §1 item 8: certify from *measured* norms).
    """
    _check_2d(W)
    X = W.detach().to(_compute_dtype(W))
    if X.numel() == 0:
        return 0.0
    return float(torch.linalg.matrix_norm(X, ord=2)) / rms_scale(W)


def max_row_rms(E: torch.Tensor) -> float:
    """Max over rows of the row RMS. For an ``nn.Embedding`` weight (V, d) this is the embedding norm
    (l1 -> RMS); for a (V, d) unembedding it is the ``Unembed`` norm of spec §2."""
    _check_2d(E)
    X = E.detach().to(_compute_dtype(E))
    return float(X.pow(2).mean(dim=1).sqrt().max())


def max_column_rms(E: torch.Tensor) -> float:
    """Max over columns of the column RMS (JAX ``Embed`` layout (d, V): one column per token)."""
    return max_row_rms(E.t())


def _gram_side_tall(M: torch.Tensor) -> bool:
    """True when M is tall (m >= n): use the n x n Gram M^T M (the smaller side)."""
    return M.shape[0] >= M.shape[1]


def _odd_poly_step(M: torch.Tensor, a: float, b: float, c: float) -> torch.Tensor:
    """One odd polynomial round ``sigma -> a·sigma + b·sigma^3 + c·sigma^5`` on the singular values.

    Uses the Gram matrix of the smaller side: 1 Gram + (1 square if c != 0) + 1 product.
    """
    if _gram_side_tall(M):
        A = M.mT @ M
        B = b * A + c * (A @ A) if c != 0.0 else b * A
        return a * M + M @ B
    A = M @ M.mT
    B = b * A + c * (A @ A) if c != 0.0 else b * A
    return a * M + B @ M


# --------------------------------------------------------------------------------------------
# Power iteration
# --------------------------------------------------------------------------------------------


def _seeded_start(n: int, shape: Tuple[int, int], seed: int, dtype: torch.dtype, device) -> torch.Tensor:
    # Drawn on the CPU so that the start vector does not depend on the device.
    g = torch.Generator(device="cpu")
    g.manual_seed((seed * 1_000_003 + shape[0] * 65_537 + shape[1]) % (2**63 - 1))
    v = torch.randn(n, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    return v / v.norm()


def power_iteration(
    W: torch.Tensor,
    iters: int = 16,
    v0: Optional[torch.Tensor] = None,
    seed: int = _PI_BASE_SEED,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top singular triple of ``W`` by power iteration: returns ``(sigma, u, v)`` with ``W v ≈ sigma u``.

    * ``sigma`` is the **raw** spectral-norm estimate (0-d tensor); divide by ``rms_scale(W)`` for
      RMS->RMS units. It is a *lower* bound: ``sigma = ||W v|| <= sigma_max(W)`` for unit ``v``.
    * Iterates ``v <- X^T X v`` with X = W or W^T, whichever is tall, so the iterate lives on the
      smaller side; ``2·iters + 1`` mat-vecs, fp32 (fp64 kept). ``v0`` and the returned ``v`` are always
      right vectors of W (``fan_in`` entries), ``u`` a left vector (``fan_out`` entries).
    * Start vector. **Default (``v0=None``): fresh start from a CPU generator seeded by ``seed`` and
      the matrix shape** (the JAX reference folds its key with the shape). Chosen because it keeps the
      constraint maps stateless and deterministic: nothing extra to checkpoint, a resume is bit-exact,
      and an unlucky start cannot persist across steps. Warm start: pass ``v0`` (e.g. the ``v`` of the
      previous call); weights move slowly so far fewer iterations are needed, but the vector is state
      the caller must keep (and checkpoint for bit-exact resumes).
    """
    _check_2d(W)
    dt = _compute_dtype(W)
    X = W.detach().to(dt)
    transposed = X.shape[0] < X.shape[1]
    if transposed:  # make X tall so v lives on the smaller side
        X = X.mT
    n = X.shape[1]
    if v0 is not None:
        # v0 is a right vector of W (fan_in entries); when X = W^T, move it to X's right side.
        v0 = v0.detach().to(device=X.device, dtype=dt).reshape(-1)
        if v0.numel() != W.shape[1]:
            raise ValueError(f"v0 has {v0.numel()} entries, expected fan_in = {W.shape[1]}")
        v = X.mT @ v0 if transposed else v0
        nv = v.norm()
        v = v / nv if nv > 0 else _seeded_start(n, tuple(W.shape), seed, dt, X.device)
    else:
        v = _seeded_start(n, tuple(W.shape), seed, dt, X.device)
    tiny = torch.finfo(dt).tiny
    for _ in range(int(iters)):
        w = X.mT @ (X @ v)
        v = w / w.norm().clamp_min(tiny)
    Xv = X @ v
    sigma = Xv.norm()
    u = Xv / sigma.clamp_min(tiny)
    if transposed:  # X = W^T: X v = sigma u  <=>  W u = sigma v
        u, v = v, u
    return sigma, u, v


def _pi_start(pi_state: Optional[dict]) -> Optional[torch.Tensor]:
    return None if pi_state is None else pi_state.get("v")


def _pi_top(W: torch.Tensor, iters: int, pi_state: Optional[dict]):
    sigma, u, v = power_iteration(W, iters=iters, v0=_pi_start(pi_state))
    if pi_state is not None:
        pi_state["u"], pi_state["v"] = u.detach().clone(), v.detach().clone()
    return sigma, u, v


# --------------------------------------------------------------------------------------------
# msign / orthogonalizers
# --------------------------------------------------------------------------------------------


def msign(
    W: torch.Tensor,
    coeffs: Union[Coeffs, Sequence[Coeffs]] = KELLER_NS5,
    steps: Optional[int] = None,
    eps: float = 1e-7,
) -> torch.Tensor:
    """Approximate ``msign(W) = U V^T`` by quintic Newton–Schulz with a per-round coefficient table.

    ``X = W / max(||W||_F, eps)`` (so all singular values are in (0, 1]), then per round
    ``X <- aX + b(XX^T)X + c(XX^T)^2 X`` with the Gram on the smaller side. Computed in fp32 (fp64
    kept), result cast back to ``W.dtype``. The output singular values are ``p(sigma/||W||_F)`` for the
    composite polynomial ``p``; see :func:`ns_output_range` for its range (Keller NS5 reaches ≈1.2024,
    so this is *not* an accurate sign). Cost: 3 matmuls per round on the smaller Gram side.
    For an accurate polar factor use :func:`msign_accurate`.
    """
    _check_2d(W)
    table = _coeff_table(coeffs, steps)
    dt = _compute_dtype(W)
    X = W.detach().to(dt)
    X = X / X.norm().clamp_min(eps)
    for a, b, c in table:
        X = _odd_poly_step(X, a, b, c)
    return X.to(W.dtype)


def msign_accurate(W: torch.Tensor, method: str = "svd", iters: int = 60) -> torch.Tensor:
    """Accurate matrix sign / polar factor ``U V^T`` (thin SVD ``W = U S V^T``).

    * ``method="svd"`` (default): exact to rounding (fp32, fp64 kept). Zero singular values are paired
      with whatever singular vectors the SVD returns; :func:`spectral_clip_exact` is insensitive to that.
    * ``method="newton"``: cubic Newton–Schulz ``X <- 1.5X - 0.5 X X^T X`` from ``X = W/||W||_F``,
      ``iters`` rounds (GPU friendly, matmuls only). Converges for every singular value with
      ``sigma/||W||_F >= ~1.5**-(iters-8)``; smaller ones stay partially converged (<1).
    """
    _check_2d(W)
    dt = _compute_dtype(W)
    X = W.detach().to(dt)
    if method == "svd":
        U, _, Vh = torch.linalg.svd(X, full_matrices=False)
        return (U @ Vh).to(W.dtype)
    if method == "newton":
        X = X / X.norm().clamp_min(torch.finfo(dt).tiny)
        for _ in range(int(iters)):
            X = _odd_poly_step(X, 1.5, -0.5, 0.0)
        return X.to(W.dtype)
    raise ValueError(f"unknown msign method {method!r}")


def _composite(x: np.ndarray, table: CoeffTable) -> np.ndarray:
    for a, b, c in table:
        x2 = x * x
        x = x * (a + x2 * (b + c * x2))
    return x


def ns_output_range(
    coeffs: Union[Coeffs, Sequence[Coeffs]],
    lo: float = 1e-3,
    hi: float = 1.0,
    steps: Optional[int] = None,
) -> Tuple[float, float]:
    """(min, max) of the composite NS polynomial over inputs in ``[lo, hi]`` (float64).

    A dense log-spaced plus linear grid, then the extremes are polished with a bounded scalar search.
    Cached per (table, lo, hi).
    """
    return _ns_output_range_cached(_coeff_table(coeffs, steps), max(float(lo), 1e-12), float(hi))


@functools.lru_cache(maxsize=64)
def _ns_output_range_cached(table: CoeffTable, lo: float, hi: float) -> Tuple[float, float]:
    from scipy.optimize import minimize_scalar

    grid = np.unique(np.concatenate([np.geomspace(lo, hi, 200_001), np.linspace(lo, hi, 200_001)]))
    y = _composite(grid, table)

    def polish(i: int, sign: float) -> float:
        # sign=+1 polishes a minimum, sign=-1 a maximum, on the bracket around grid point i
        a, b = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
        best = float(y[i])
        if b > a:
            r = minimize_scalar(
                lambda t: sign * float(_composite(np.array([t]), table)[0]),
                bounds=(a, b),
                method="bounded",
                options={"xatol": 1e-14},
            )
            best = min(best, float(r.fun)) if sign > 0 else max(best, -float(r.fun))
        return best

    out = [polish(int(np.argmin(y)), 1.0), polish(int(np.argmax(y)), -1.0)]
    return out[0], out[1]


def ns_overshoot(coeffs: Union[Coeffs, Sequence[Coeffs]] = KELLER_NS5, steps: Optional[int] = None) -> float:
    """Max output singular value of the NS orthogonalizer for inputs in (0, 1] (exact arithmetic).

    Keller NS5 -> ≈1.2024, NanoGPT NS5 -> 1.14502, JAX NS6 -> 0.99933. The soft-cap coupling must
    use ``eta · overshoot`` (spec §1 item 1). Reduced precision (bf16 NS in torch.optim.Muon) can
    exceed this slightly (measured 1.2039 for Keller NS5), hence the safety margin in ``muon.py``.
    """
    return ns_output_range(coeffs, lo=1e-9, hi=1.0, steps=steps)[1]


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


def spectral_soft_cap(
    W: torch.Tensor, w_max: float, eta: float, wd: float = 0.0, strict: bool = True
) -> torch.Tensor:
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


def spectral_hammer(
    W: torch.Tensor, w_max: float, iters: int = 16, pi_state: Optional[dict] = None
) -> torch.Tensor:
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
