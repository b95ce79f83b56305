"""Spectral norm helpers for Lipschitz-constrained training: RMS->RMS norms, power iteration, msign / Newton-Schulz
and its overshoot. The weight-constraint maps built on them are in :mod:`plugins.lipschitz.constraint_maps`.

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
from typing import Optional, Sequence, Tuple, Union

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
