"""Spec §9 checks 1-6 and 8 for plugins.lipschitz.spectral."""

import math

import numpy as np
import pytest
import torch

from plugins.lipschitz import constraint_maps as cm
from plugins.lipschitz import spectral as sp

torch.set_num_threads(1)


def rms_svals(W: torch.Tensor) -> torch.Tensor:
    """RMS->RMS singular values (descending), float64."""
    return torch.linalg.svdvals(W.double()) / sp.rms_scale(W)


def with_svals(shape, svals_rms, seed=0, dtype=torch.float64):
    """Matrix of the given shape with prescribed RMS->RMS singular values (exact, float64)."""
    g = torch.Generator().manual_seed(seed)
    m, n = shape
    k = len(svals_rms)  # <= min(m, n); the remaining singular values are 0
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    S = torch.as_tensor(svals_rms, dtype=torch.float64) * math.sqrt(m / n)
    return ((U * S) @ V.T).to(dtype)


def random_orthogonal_step(shape, eta, g, dtype=torch.float64):
    """An update of RMS->RMS norm exactly eta in every direction: eta * s * polar(Gaussian)."""
    G = torch.randn(shape, generator=g, dtype=torch.float64)
    return (eta * math.sqrt(shape[0] / shape[1]) * sp.msign_accurate(G)).to(dtype)


# ------------------------------------------------------------------ check 1: soft-cap coupling


@pytest.mark.parametrize(
    "w_max, eta, expected, half_ulp",  # spec values, rounded to the printed digits
    [(1.0, 0.1, 0.158864, 5e-7), (6.0, 0.1, 0.0020655, 5e-8), (1.0, 0.05 * 1.14502 * 1.05, 0.131992, 5e-7)],
)
def test_soft_cap_coupling_reference_values(w_max, eta, expected, half_ulp):
    alpha = cm.soft_cap_coupling(w_max, 0.0, eta)
    assert abs(alpha - expected) <= half_ulp
    assert cm.soft_cap_scalar(w_max + eta, alpha) == pytest.approx(w_max, rel=1e-12)


def test_soft_cap_coupling_random_certificate():
    rng = np.random.default_rng(0)
    for _ in range(60):
        w_max = float(rng.uniform(0.3, 8.0))
        eta = float(rng.uniform(0.005, 0.3)) * w_max
        wd = float(rng.uniform(0.0, 0.1))
        k = w_max * (1 - wd) + eta
        alpha = cm.soft_cap_coupling(w_max, wd, eta)
        assert alpha >= 0.0 and isinstance(alpha, float)
        if k <= w_max:
            assert alpha == 0.0
            continue
        assert abs(cm.soft_cap_scalar(k, alpha) - w_max) <= 1e-6 * w_max
        grid = np.linspace(0.0, k, 20001)
        f = cm.soft_cap_scalar(grid, alpha)
        assert f.max() <= w_max * (1 + 1e-6)
        assert np.all(np.diff(f) >= -1e-12 * w_max), "f_alpha must be monotone on [0, k]"


def test_soft_cap_coupling_scale_covariant_and_zero_case():
    a1 = cm.soft_cap_coupling(1.0, 0.0, 0.2)
    a3 = cm.soft_cap_coupling(3.0, 0.0, 0.6)
    assert a3 == pytest.approx(a1 / 9.0, rel=1e-10)
    # decay removes at least as much as the update adds -> nothing to cap
    assert cm.soft_cap_coupling(1.0, 0.1, 0.05) == 0.0
    # alpha grows with eta (monotone coupling)
    alphas = [cm.soft_cap_coupling(1.0, 0.0, e) for e in np.linspace(0.01, 0.3, 12)]
    assert all(b > a for a, b in zip(alphas, alphas[1:]))


def test_soft_cap_coupling_ratio_guard_and_why():
    with pytest.raises(ValueError):
        cm.soft_cap_coupling(1.0, 0.0, 0.31)
    with pytest.warns(RuntimeWarning):
        alpha = cm.soft_cap_coupling(1.0, 0.0, 1.0, strict=False)
    # at eta/w_max = 1 the map is non-monotone and overshoots by ~19% (spec §4.6)
    grid = np.linspace(0, 2.0, 20001)
    assert cm.soft_cap_scalar(grid, alpha).max() == pytest.approx(1.19, abs=0.01)


def test_soft_cap_coupling_needs_overshoot():
    # coupling computed for eta but a Keller-NS5 step of 1.2024*eta breaks the cap
    w_max, eta = 1.0, 0.1
    alpha = cm.soft_cap_coupling(w_max, 0.0, eta)
    assert cm.soft_cap_scalar(w_max + 1.2024 * eta, alpha) > w_max * 1.005
    alpha_ok = cm.soft_cap_coupling(w_max, 0.0, 1.2024 * eta)
    assert cm.soft_cap_scalar(w_max + 1.2024 * eta, alpha_ok) <= w_max * (1 + 1e-12)


# ------------------------------------------------------------------ check 2: soft cap on matrices


def test_soft_cap_matrix_follows_scalar_map():
    alpha = cm.soft_cap_coupling(1.0, 0.0, 0.1)
    svals = np.concatenate([np.linspace(0.01, 0.09, 6), np.linspace(0.2, 1.1, 10)])
    for shape in [(48, 16), (16, 48)]:
        W = with_svals(shape, svals, seed=1)
        out = rms_svals(cm.soft_cap(W, alpha)).numpy()
        expect = np.sort(cm.soft_cap_scalar(svals, alpha))[::-1]
        np.testing.assert_allclose(out, expect, rtol=1e-11, atol=1e-13)
    small = svals[svals < 0.1]
    rel = 1 - cm.soft_cap_scalar(small, alpha) / small
    assert rel.max() < 1e-4
    mid = np.array([0.05, 0.1, 0.2, 0.3])
    rel_mid = 1 - cm.soft_cap_scalar(mid, alpha) / mid
    np.testing.assert_allclose(rel_mid, 3 * alpha**2 * mid**4, rtol=0.05)
    # spec values, w_max 1, eta 0.1
    assert cm.soft_cap_scalar(0.1, alpha) / 0.1 == pytest.approx(0.999992, abs=1e-6)
    assert cm.soft_cap_scalar(0.5, alpha) / 0.5 == pytest.approx(0.99545, abs=1e-5)
    assert cm.soft_cap_scalar(1.0, alpha) == pytest.approx(0.9357, abs=1e-4)


@pytest.mark.parametrize("shape, dtype, tol", [((24, 12), torch.float64, 1e-12), ((12, 36), torch.float32, 2e-6)])
def test_soft_cap_keeps_cap_over_random_steps(shape, dtype, tol):
    g = torch.Generator().manual_seed(3)
    w_max, eta = 2.0, 0.3  # eta / w_max = 0.15
    alpha = cm.soft_cap_coupling(w_max, 0.0, eta)
    W = with_svals(shape, np.linspace(0.05, 1.0, min(shape)) * w_max, seed=2, dtype=dtype)
    worst = 0.0
    for t in range(200):
        if t % 3 == 0:  # adversarial: push every singular value up by eta
            step = (eta * sp.rms_scale(W) * sp.msign_accurate(W.double())).to(dtype)
        else:
            step = random_orthogonal_step(shape, eta, g, dtype)
        assert sp.rms_to_rms_norm(step) <= eta * (1 + 1e-5)
        W = cm.soft_cap(W + step, alpha)
        worst = max(worst, sp.rms_to_rms_norm(W))
    assert worst <= w_max * (1 + tol)
    assert worst >= 0.9 * w_max  # the adversarial steps really do press against the cap


# ------------------------------------------------------------------ check 3: hammer


def test_hammer_sets_top_singular_value():
    svals = np.array([2.5, 0.8, 0.6, 0.4, 0.2, 0.1, 0.05, 0.01])
    W = with_svals((32, 8), svals, seed=4, dtype=torch.float32)
    out = rms_svals(cm.spectral_hammer(W, 1.0)).numpy()
    assert abs(out[0] - 1.0) <= 1e-3
    np.testing.assert_allclose(out[1:], svals[1:], atol=1e-5)


def test_hammer_raises_small_top_singular_value():
    svals = np.array([0.6, 0.3, 0.2, 0.1])
    W = with_svals((8, 16), svals, seed=5, dtype=torch.float32)
    out = rms_svals(cm.spectral_hammer(W, 1.5)).numpy()
    assert out[0] == pytest.approx(1.5, abs=1.5e-3)  # raised from 0.6: a setter, not a cap
    np.testing.assert_allclose(out[1:4], svals[1:], atol=1e-5)
    assert out[4:].max() < 1e-5


def test_hammer_is_not_a_cap_when_sigma2_exceeds_wmax():
    # spec §4.4 example: 64x32, sigma in [0.74, 3.94], w_max = 1 -> sigma_max stays at the old sigma_2
    svals = np.linspace(3.94, 0.74, 32)
    W = with_svals((64, 32), svals, seed=6)
    out = rms_svals(cm.spectral_hammer(W, 1.0, iters=400)).numpy()
    assert out[0] == pytest.approx(svals[1], rel=1e-3)
    assert out[0] > 3.0  # far above w_max: do not certify with the hammer


# ------------------------------------------------------------------ check 4: spectral normalization


def test_spectral_normalize_scales_and_keeps_ratios():
    svals = np.array([4.0, 2.0, 1.0, 0.5, 0.25, 0.1])
    W = with_svals((12, 6), svals, seed=7, dtype=torch.float32)
    out = rms_svals(cm.spectral_normalize(W, 1.5)).numpy()
    sigma_hat = float(sp.power_iteration(W, 16)[0]) / sp.rms_scale(W)
    eps_power = 4.0 / sigma_hat - 1.0
    assert out[0] <= 1.5 * (1 + eps_power) + 1e-6
    assert out[0] == pytest.approx(1.5, rel=1e-4)
    np.testing.assert_allclose(out / out[0], svals / svals[0], rtol=1e-5)
    exact = rms_svals(cm.spectral_normalize(W, 1.5, exact=True)).numpy()
    assert exact[0] <= 1.5 * (1 + 1e-6)


def test_spectral_normalize_leaves_compliant_matrix_untouched():
    W = with_svals((10, 20), [0.9, 0.5, 0.1], seed=8, dtype=torch.float32)
    assert torch.equal(cm.spectral_normalize(W, 1.0), W)
    assert torch.equal(cm.spectral_normalize(W, 1.0, exact=True), W)


def test_spectral_weight_decay_shrinks_only_top():
    svals = np.array([2.0, 1.0, 0.5, 0.2])
    W = with_svals((16, 4), svals, seed=9, dtype=torch.float32)
    out = rms_svals(cm.spectral_weight_decay(W, 0.1)).numpy()
    np.testing.assert_allclose(out, [1.8, 1.0, 0.5, 0.2], atol=1e-5)


def test_power_iteration_start_modes():
    W = with_svals((40, 24), np.concatenate([[3.0], np.linspace(1.5, 0.1, 23)]), seed=10, dtype=torch.float32)
    s1, u, v = sp.power_iteration(W, 16)
    s2, _, _ = sp.power_iteration(W, 16)
    assert torch.equal(s1, s2), "fresh start must be deterministic (seeded by shape)"
    true = torch.linalg.matrix_norm(W.double(), 2).item()
    assert float(s1) <= true * (1 + 1e-6) and float(s1) == pytest.approx(true, rel=1e-6)
    torch.testing.assert_close(W @ v, s1 * u, rtol=0, atol=5e-2)
    # warm start from a converged vector: one iteration suffices
    s_warm, _, _ = sp.power_iteration(W * 1.01, 1, v0=v)
    assert float(s_warm) == pytest.approx(1.01 * true, rel=1e-5)
    # wide matrix, warm start vector is still a right (fan_in) vector
    Wt = W.T.contiguous()
    st, ut, vt = sp.power_iteration(Wt, 30)
    st2, _, _ = sp.power_iteration(Wt, 1, v0=vt)
    assert float(st2) == pytest.approx(float(st), rel=1e-5) and vt.numel() == Wt.shape[1]
    # pi_state warm start plumbing
    state = {}
    cm.spectral_hammer(Wt, 1.0, pi_state=state)
    assert state["v"].shape == (Wt.shape[1],) and state["u"].shape == (Wt.shape[0],)


# ------------------------------------------------------------------ check 5: hard cap


def test_hard_cap_scalar_behaviour():
    x = np.linspace(0.0, 3.0, 300001)
    p = cm.hard_cap_scalar(x)
    assert np.abs(p - np.minimum(1.0, x)).max() <= 0.034
    assert p.max() <= 1.011 and p.max() > 1.01
    assert cm.hard_cap_scalar(1.0) == pytest.approx(0.966, abs=1e-3)
    assert cm.hard_cap_scalar(0.1) == pytest.approx(0.0953, abs=1e-4)
    assert cm.hard_cap_scalar(4.0) == pytest.approx(-1.0, abs=0.01)  # invalid beyond ~3.5
    assert cm.hard_cap_scalar(5.0) > 1e100


def test_hard_cap_matrix_and_guard():
    w_max = 2.0
    svals = np.array([2.9, 2.0, 1.0, 0.5, 0.1]) * w_max
    W = with_svals((20, 5), svals, seed=11, dtype=torch.float32)
    out = rms_svals(cm.spectral_hard_cap(W, w_max)).numpy()
    expect = np.sort(cm.hard_cap_scalar(svals / w_max))[::-1] * w_max
    np.testing.assert_allclose(out, expect, rtol=2e-5, atol=1e-6)  # the polynomial path was taken
    assert out.max() <= 1.011 * w_max

    # far outside the valid region: unguarded polynomial explodes, guarded map stays a cap
    big = with_svals((20, 5), np.array([5.0, 4.2, 1.0, 0.5, 0.1]) * w_max, seed=12, dtype=torch.float32)
    raw = cm.spectral_hard_cap(big, w_max, valid_radius=float("inf"))
    assert not torch.isfinite(raw).all() or sp.rms_to_rms_norm(raw) > 10 * w_max
    guarded = rms_svals(cm.spectral_hard_cap(big, w_max)).numpy()
    np.testing.assert_allclose(guarded, np.array([1.0, 1.0, 1.0, 0.5, 0.1]) * w_max, rtol=1e-5)  # exact-clip fallback
    norm_fb = cm.spectral_hard_cap(big, w_max, fallback="normalize")
    assert sp.rms_to_rms_norm(norm_fb) <= 1.011 * w_max


def test_sigma_max_upper_bound_is_rigorous_and_tight():
    g = torch.Generator().manual_seed(13)
    for shape in [(64, 32), (32, 64), (50, 50)]:
        W = torch.randn(shape, generator=g)
        true = torch.linalg.matrix_norm(W.double(), 2).item()
        ub = cm.sigma_max_upper_bound(W)
        n = min(shape)
        assert true <= ub <= true * n ** (1 / 32) * 1.0001


@pytest.mark.parametrize("shape", [(30, 12), (12, 30), (16, 16)])
def test_exact_clip_identity_matches_svd(shape):
    g = torch.Generator().manual_seed(14)
    for w_max in (0.5, 1.0, 3.0):
        W = torch.randn(shape, generator=g, dtype=torch.float64)
        ref = cm.svd_clip(W, w_max)
        assert torch.dist(cm.spectral_clip_exact(W, w_max), ref) <= 1e-10
        assert rms_svals(ref)[0] <= w_max * (1 + 1e-12)
    # rank-deficient matrix with singular values straddling the cap
    W = with_svals(shape, [3.0, 1.0, 0.5] + [0.0] * (min(shape) - 3), seed=15)
    assert torch.dist(cm.spectral_clip_exact(W, 1.0), cm.svd_clip(W, 1.0)) <= 1e-10
    # matmul-only (cubic Newton–Schulz) msign: accurate for well-conditioned inputs
    W = with_svals(shape, np.linspace(2.0, 0.2, min(shape)), seed=16)
    approx = cm.spectral_clip_exact(W, 1.0, msign_fn=lambda X: sp.msign_accurate(X, "newton", iters=80))
    assert torch.dist(approx, cm.svd_clip(W, 1.0)) <= 1e-8


# ------------------------------------------------------------------ check 6: orthogonalizers


def test_ns_overshoot_values():
    assert sp.ns_overshoot(sp.KELLER_NS5) == pytest.approx(1.2024, abs=1e-4)
    assert sp.ns_overshoot((3.4445, -4.7750, 2.0315), steps=5) == pytest.approx(1.2024, abs=1e-4)
    assert sp.ns_overshoot(sp.NANOGPT_NS5) == pytest.approx(1.14502, abs=5e-6)
    lo, hi = sp.ns_output_range(sp.JAX_NS6, 1e-3, 1.0)
    assert 0.866 <= lo <= 0.8665 and 0.9993 <= hi < 1.0
    lo2, _ = sp.ns_output_range(sp.NANOGPT_NS5, 1e-3, 1.0)
    assert lo2 == pytest.approx(0.475, abs=1e-3)
    assert float(sp._composite(np.array([1e-4]), sp.JAX_NS6)[0]) == pytest.approx(0.113, abs=1e-3)


@pytest.mark.parametrize("shape", [(64, 16), (16, 64), (32, 32), (7, 50)])
def test_msign_update_scale(shape):
    g = torch.Generator().manual_seed(17)
    G = torch.randn(shape, generator=g)
    for coeffs in (sp.KELLER_NS5, sp.NANOGPT_NS5, sp.JAX_NS6):
        O = sp.msign(G, coeffs)
        assert O.dtype == G.dtype
        top = torch.linalg.matrix_norm(O.double(), 2).item()
        assert top <= sp.ns_overshoot(coeffs) + 1e-4
        upd = O * sp.rms_scale(G)  # Muon's update per unit lr
        assert 0.6 <= sp.rms_to_rms_norm(upd) <= sp.ns_overshoot(coeffs) + 1e-4
    # Stiefel projection pins every singular value near w_max
    sv = rms_svals(cm.spectral_orthogonalize(G, 2.0)).numpy()
    assert sv.max() <= 2.0 * 0.99934 and sv.min() >= 2.0 * 0.86


# ------------------------------------------------------------------ check 8 + precision


def test_embedding_projections():
    g = torch.Generator().manual_seed(18)
    E = torch.randn(50, 16, generator=g) * torch.linspace(0.2, 3.0, 50)[:, None]
    P = cm.project_embedding_rows(E, 1.0)
    rms = P.pow(2).mean(1).sqrt()
    assert rms.max() <= 1.0 + 1e-6
    keep = E.pow(2).mean(1).sqrt() <= 1.0
    assert keep.any() and torch.equal(P[keep], E[keep])  # compliant rows untouched
    assert torch.allclose(rms[~keep], torch.ones(int((~keep).sum())), atol=1e-6)
    C = cm.project_embedding_columns(E.T.contiguous(), 0.5)
    assert sp.max_column_rms(C) <= 0.5 + 1e-6
    N = cm.normalize_embedding_rows(E)
    assert torch.allclose(N.pow(2).mean(1).sqrt(), torch.ones(50), atol=1e-6)
    assert sp.max_row_rms(N) == pytest.approx(1.0, abs=1e-6)


def test_low_precision_inputs_are_computed_in_fp32():
    W = with_svals((32, 16), np.linspace(1.3, 0.1, 16), seed=19, dtype=torch.float32)
    Wb = W.bfloat16()
    alpha = cm.soft_cap_coupling(1.0, 0.0, 0.3)
    for fn in (
        lambda X: cm.soft_cap(X, alpha),
        lambda X: cm.svd_clip(X, 1.0),
        lambda X: cm.spectral_hard_cap(X, 1.0),
        lambda X: cm.spectral_normalize(X, 1.0),
    ):
        out_b = fn(Wb)
        assert out_b.dtype == torch.bfloat16
        ref = fn(Wb.float())
        assert torch.allclose(out_b.float(), ref, rtol=1e-2, atol=1e-2)
    assert sp.rms_to_rms_norm(Wb) == pytest.approx(1.3, rel=1e-2)
    with pytest.raises(ValueError):
        sp.rms_to_rms_norm(torch.ones(3))
