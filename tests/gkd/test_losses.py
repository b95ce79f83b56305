"""The generalized JSD (plugins/gkd/losses.py) against a brute-force float64 reference written from the GKD
paper and TRL's ``generalized_jsd_loss`` conventions (docs/gkd.md): one position and one vocabulary entry at a
time, in Python floats."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from plugins.gkd.losses import generalized_jsd, generalized_jsd_loss


def _softmax(z: list[float], temperature: float) -> list[float]:
    top = max(z)
    e = [math.exp((v - top) / temperature) for v in z]
    s = sum(e)
    return [v / s for v in e]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def reference_position(zs: list[float], zt: list[float], beta: float, temperature: float) -> float:
    """The divergence at one position: forward KL at beta 0, reverse KL at 1, else the mixture JSD."""
    ps, pt = _softmax(zs, temperature), _softmax(zt, temperature)
    if beta == 0:
        return _kl(pt, ps)
    if beta == 1:
        return _kl(ps, pt)
    m = [(1 - beta) * a + beta * b for a, b in zip(ps, pt)]
    return beta * _kl(pt, m) + (1 - beta) * _kl(ps, m)


def reference_loss(zs: torch.Tensor, zt: torch.Tensor, labels: torch.Tensor, beta: float, temperature: float) -> float:
    """batchmean with labels: the sum over positions whose label is not -100, divided by their number."""
    total, count = 0.0, 0
    for b in range(zs.shape[0]):
        for t in range(zs.shape[1]):
            if int(labels[b, t]) == -100:
                continue
            total += reference_position(zs[b, t].tolist(), zt[b, t].tolist(), beta, temperature)
            count += 1
    return total / count


def random_case(gen, B=3, T=7, V=11, scale=3.0):
    zs = torch.randn(B, T, V, generator=gen, dtype=torch.float64) * scale
    zt = torch.randn(B, T, V, generator=gen, dtype=torch.float64) * scale
    labels = torch.randint(0, V, (B, T), generator=gen)
    lengths = [T, T - 3, 2]  # right padding of different lengths, and a masked prompt position
    for b, n in enumerate(lengths[:B]):
        labels[b, n:] = -100
    labels[0, 0] = -100
    return zs, zt, labels


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_matches_the_brute_force_reference(gen, beta, temperature):
    for V in (11, 2):
        zs, zt, labels = random_case(gen, V=V)
        got = generalized_jsd_loss(zs, zt, labels, beta=beta, temperature=temperature)
        want = reference_loss(zs, zt, labels, beta, temperature)
        # float64 throughout; the reference sums in a different order: 1e-12 relative is ~1e4 ulps of slack
        assert got.dtype == torch.float64
        assert got.item() == pytest.approx(want, rel=1e-12, abs=1e-14)


def test_the_endpoints_are_the_forward_and_reverse_kl(gen):
    zs, zt, labels = random_case(gen)
    mask = labels != -100
    log_s, log_t = zs.log_softmax(-1), zt.log_softmax(-1)
    # torch's kl_div(input, target) = sum target * (log target - input): KL(target || input's distribution)
    forward = F.kl_div(log_s[mask], log_t[mask], reduction="sum", log_target=True) / mask.sum()
    reverse = F.kl_div(log_t[mask], log_s[mask], reduction="sum", log_target=True) / mask.sum()
    # same float64 quantities summed in another order: 1e-12 relative
    assert generalized_jsd_loss(zs, zt, labels, beta=0.0).item() == pytest.approx(forward.item(), rel=1e-12)
    assert generalized_jsd_loss(zs, zt, labels, beta=1.0).item() == pytest.approx(reverse.item(), rel=1e-12)
    assert forward.item() != pytest.approx(reverse.item(), rel=1e-3)  # the two directions do differ here


def test_symmetry_bounds_and_zero_at_equal_logits(gen):
    zs, zt, labels = random_case(gen)
    for beta in (0.2, 0.5, 0.7):
        a = generalized_jsd(zs, zt, beta)
        # swapping student and teacher swaps the mixture weights: JSD_beta(s, t) = JSD_(1-beta)(t, s)
        torch.testing.assert_close(a, generalized_jsd(zt, zs, 1 - beta), rtol=1e-12, atol=1e-14)
        # each KL to the mixture is at most -log(weight of its own side): JSD_beta <= -beta log beta - (1-beta) log(1-beta)
        bound = -beta * math.log(beta) - (1 - beta) * math.log(1 - beta)
        assert bool((a >= 0).all()) and bool((a <= bound + 1e-12).all())
    for beta in (0.0, 0.3, 1.0):
        assert generalized_jsd(zs, zs.clone(), beta).abs().max().item() < 1e-14


def test_the_reductions(gen):
    zs, zt, labels = random_case(gen)
    per = generalized_jsd(zs, zt, 0.3, 1.5)
    mask = labels != -100
    none = generalized_jsd_loss(zs, zt, labels, 0.3, 1.5, reduction="none")
    torch.testing.assert_close(none, torch.where(mask, per, torch.zeros_like(per)), rtol=0, atol=0)
    total = per[mask].sum()
    torch.testing.assert_close(generalized_jsd_loss(zs, zt, labels, 0.3, 1.5, "sum"), total, rtol=1e-14, atol=0)
    mean = generalized_jsd_loss(zs, zt, labels, 0.3, 1.5, "mean")
    torch.testing.assert_close(mean, total / (mask.sum() * zs.shape[-1]), rtol=1e-14, atol=0)
    # without labels every position counts: sum / (B * T), TRL's jsd.size(0) * jsd.size(1)
    unlabelled = generalized_jsd_loss(zs, zt, None, 0.3, 1.5)
    torch.testing.assert_close(unlabelled, per.sum() / (zs.shape[0] * zs.shape[1]), rtol=1e-14, atol=0)
    with pytest.raises(ValueError, match="reduction"):
        generalized_jsd_loss(zs, zt, labels, reduction="avg")


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
def test_gradients_match_finite_differences(gen, beta):
    zs, zt, labels = random_case(gen, B=2, T=4, V=5, scale=1.5)
    zs.requires_grad_(True)
    zt.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda s, t: generalized_jsd_loss(s, t, labels, beta=beta, temperature=0.7), (zs, zt), eps=1e-6, atol=1e-8
    )
    # masked positions get no gradient
    zs.grad = None
    generalized_jsd_loss(zs, zt.detach(), labels, beta=beta).backward()
    assert zs.grad[labels == -100].abs().max().item() == 0.0


def test_low_precision_is_computed_in_float32_and_minus_inf_logits_stay_finite(gen):
    zs, zt, labels = random_case(gen)
    want = generalized_jsd_loss(zs.float(), zt.float(), labels)
    got = generalized_jsd_loss(zs.bfloat16(), zt.bfloat16(), labels)
    assert got.dtype == torch.float32 and want.dtype == torch.float32
    # bfloat16 inputs carry 8 mantissa bits: logits of size ~3 are off by ~1e-2, so the loss by a few percent
    assert got.item() == pytest.approx(want.item(), rel=5e-2)
    # a suppressed id (-inf in both) contributes nothing and its gradient is finite
    s, t = zs.clone(), zt.clone()
    s[..., 0] = t[..., 0] = float("-inf")
    s.requires_grad_(True)
    for beta in (0.0, 0.5, 1.0):
        s.grad = None
        loss = generalized_jsd_loss(s, t, labels, beta=beta)
        loss.backward()
        assert math.isfinite(loss.item()) and bool(torch.isfinite(s.grad).all())
        ref = generalized_jsd_loss(zs[..., 1:], zt[..., 1:], labels, beta=beta)
        assert loss.item() == pytest.approx(ref.item(), rel=1e-12)


def test_bad_arguments_are_refused(gen):
    zs, zt, labels = random_case(gen)
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(zs, zt, 1.5)
    with pytest.raises(ValueError, match="temperature"):
        generalized_jsd(zs, zt, 0.5, 0.0)
    with pytest.raises(ValueError, match="differ"):
        generalized_jsd(zs, zt[..., :-1], 0.5)
    with pytest.raises(ValueError, match="labels"):
        generalized_jsd_loss(zs, zt, labels[:, :-1])
