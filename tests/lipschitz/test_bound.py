"""Spec §9 check 9 (bound formula) for plugins.lipschitz.bound."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from plugins.lipschitz import bound as bd

torch.set_num_threads(1)

# §7 regression table: (n_blocks, softmax_scale, w, expected, relative tolerance from the printed digits)
TABLE = [
    (3, 1.0, 0.5, 0.203, 3e-3),
    (3, 1.0, 1.0, 0.8758, 1e-4),
    (3, 1.0, 1.5, 11.0, 5e-3),
    (3, 1.0, 2.0, 840.2, 1e-4),
    (3, 1.0, 3.0, 1.49e7, 4e-3),
    (3, 1.0, 4.0, 8.87e10, 1e-3),
    (3, 1.0, 6.0, 1.19e17, 4e-3),
    (3, 1.0, 8.0, 6.99e21, 1e-3),
    (12, 24.0, 1.0, 860.4, 1e-4),
    (12, 24.0, 2.0, 1.35e20, 4e-3),
    (12, 24.0, 4.0, 1.94e64, 3e-3),
    (12, 24.0, 8.0, 2.38e152, 3e-3),
    (12, 1.0, 1.0, 0.858, 1e-3),
]


@pytest.mark.parametrize("n_blocks, s, w, expected, rtol", TABLE)
@pytest.mark.parametrize("gelu_lipschitz", [1.0, bd.GELU_MAX_SLOPE / bd.GELU_DIVISOR])
def test_regression_values(n_blocks, s, w, expected, rtol, gelu_lipschitz):
    K = bd.uniform_transformer_bound(n_blocks, w, softmax_scale=s, gelu_lipschitz=gelu_lipschitz)
    assert K == pytest.approx(expected, rel=rtol)


def test_explicit_one_block_formula():
    b = bd.BlockNorms(q=1.2, k=0.7, v=0.9, o=1.1, mlp_in=1.3, mlp_out=0.8)
    alpha = 0.5
    a0 = 1.0
    k_att = 2.0 * (1 / 3) * 1.1 * (0.9 + 2 * 0.9 * 1.2 * 0.7 * a0**2)
    k_mlp = 0.8 * 1.3 / 1.1289
    expect = 0.6 * ((1 - alpha) + alpha * k_att) * ((1 - alpha) + alpha * k_mlp) * 1.7
    got = bd.transformer_lipschitz_bound([b], 0.6, 1.7, softmax_scale=2.0, gelu_lipschitz=1.0)
    assert got == pytest.approx(expect, rel=1e-14)
    acts = bd.transformer_activation_bounds([b, b])
    a1 = ((1 - 0.25) + 0.25 * 1.1 * 0.9 / 3) * ((1 - 0.25) + 0.25 * 0.8 * 1.3 / 1.1289)
    assert acts == pytest.approx([1.0, a1, a1 * a1], rel=1e-14)
    # mapping input accepted
    assert bd.transformer_lipschitz_bound([b.__dict__], 0.6, 1.7, 2.0, gelu_lipschitz=1.0) == got


def test_bound_monotone_in_every_norm():
    rng = np.random.default_rng(0)
    fields = ("q", "k", "v", "o", "mlp_in", "mlp_out")
    for _ in range(20):
        L = int(rng.integers(1, 5))
        blocks = [dict(zip(fields, rng.uniform(0.2, 2.5, 6))) for _ in range(L)]
        emb, head, s = float(rng.uniform(0.5, 2)), float(rng.uniform(0.5, 2)), float(rng.uniform(0.5, 4))
        base = bd.transformer_lipschitz_bound(blocks, emb, head, s)
        for l, f in itertools.product(range(L), fields):
            bumped = [dict(b) for b in blocks]
            bumped[l][f] *= 1.1
            assert bd.transformer_lipschitz_bound(bumped, emb, head, s) >= base
        assert bd.transformer_lipschitz_bound(blocks, emb * 1.1, head, s) >= base
        assert bd.transformer_lipschitz_bound(blocks, emb, head * 1.1, s) >= base
        assert bd.transformer_lipschitz_bound(blocks, emb, head, s * 1.1) >= base


def test_depth_behaviour():
    # weights at 1, s = 1: bounded in depth (convex residual), never above 1
    vals = [bd.uniform_transformer_bound(L, 1.0) for L in (1, 3, 12, 48)]
    assert all(v < 1.0 for v in vals)
    # the convex residual with sub-block constant c is (1 + (c-1)/(2L))^(2L) <= e^(c-1)
    for L in (1, 4, 16):
        c = 1.7
        prod = (1 + (c - 1) / (2 * L)) ** (2 * L)
        assert prod <= math.exp(c - 1)


def test_mlp_bound():
    assert bd.mlp_lipschitz_bound([2.0, 0.5, 3.0]) == pytest.approx(3.0)
    assert bd.mlp_lipschitz_bound([2.0, 0.5, 3.0], activation_lipschitz=2.0) == pytest.approx(12.0)


def test_gelu_constant():
    x = torch.linspace(-6, 6, 600001, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(F.gelu(x).sum(), x)
    assert float(g.max()) == pytest.approx(bd.GELU_MAX_SLOPE, abs=1e-10)
    assert float(g.max()) <= bd.GELU_MAX_SLOPE + 1e-12
    # the official divisor is a hair below the true slope: GELU/1.1289 is 1.0000037-Lipschitz
    assert bd.GELU_MAX_SLOPE / bd.GELU_DIVISOR == pytest.approx(1.0000037, abs=1e-7)
    # |GELU(x)| <= |x| (activation bound needs no correction)
    with torch.no_grad():
        assert bool((F.gelu(x).abs() <= x.abs() + 1e-15).all())
