"""pass@k estimators against brute force enumeration."""

import itertools
import os
import sys
from math import comb

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from plugins.soft_grpo.passk import first_k_pass, paired_bootstrap, pass_at_k, pass_at_k_table  # noqa: E402


def test_unbiased_pass_at_k_matches_subset_enumeration():
    n = 8
    for c in range(n + 1):
        samples = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(range(n), k))
            brute = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)
            assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)


def test_pass_at_k_large_n_stable_and_pass1_is_accuracy():
    assert pass_at_k(32, 0, 32) == 0.0
    assert pass_at_k(32, 1, 32) == 1.0
    assert pass_at_k(1000, 3, 1) == pytest.approx(3 / 1000)
    assert 0.0 <= pass_at_k(10_000, 5, 100) <= 1.0
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_first_k_and_table():
    rng = np.random.default_rng(0)
    correct = rng.random((50, 32)) < 0.2
    table = pass_at_k_table(correct)
    assert table["pass@1"] == pytest.approx(correct.mean())
    assert table["pass@1_mean_acc"] == pytest.approx(correct.mean())
    assert table["first@1"] == pytest.approx(correct[:, 0].mean())
    assert table["first@32"] == table["pass@32"] == pytest.approx(correct.any(1).mean())
    ks = [1, 2, 4, 8, 16, 32]
    assert all(table[f"pass@{a}"] <= table[f"pass@{b}"] for a, b in zip(ks, ks[1:]))
    assert first_k_pass([False, False, True], 2) == 0.0 and first_k_pass([False, False, True], 3) == 1.0


def test_paired_bootstrap():
    a = np.ones(40)
    b = np.zeros(40)
    r = paired_bootstrap(a, b, n_boot=500)
    assert r["mean_diff"] == 1.0 and r["ci_low"] == 1.0 and r["p_le_0"] == 0.0
