"""NKD: spec §14 checks 5-9, 16 (NKD part), 18."""

import pytest
import torch
import torch.nn.functional as F

from plugins.kd.losses import kd_loss, nckd
from plugins.nkd.losses import NKD_PRESETS, nkd_loss

B, C = 8, 100


def logits(gen, n=B, c=C, scale=3.0, dtype=torch.float64):
    return torch.randn(n, c, generator=gen, dtype=dtype) * scale


def labels(gen, n=B, c=C):
    return torch.randint(0, c, (n,), generator=gen)


def target_prob(z, y, T=1.0):
    return F.softmax(z / T, 1).gather(1, y[:, None]).squeeze(1)


def buggy_nkd_non_target(zs, zt, T, gamma):
    """The 2023-07-17..2023-10-10 official behaviour: the mask removed nothing (all C classes)."""
    return -(gamma * T**2 * (F.softmax(zt / T, 1) * F.log_softmax(zs / T, 1)).sum(1)).mean()


# --- check 5 ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [1.0, 3.0])
def test_non_target_term_ignores_target_logit(gen, T):
    zs, zt, y = logits(gen), logits(gen), labels(gen)
    _, parts = nkd_loss(zs, zt, y, temperature=T, gamma=1.5)
    zs2 = zs.scatter(1, y[:, None], 50.0)
    zt2 = zt.scatter(1, y[:, None], 50.0)
    _, parts2 = nkd_loss(zs2, zt2, y, temperature=T, gamma=1.5)
    assert torch.allclose(parts["nkd_non_target"], parts2["nkd_non_target"], rtol=1e-12, atol=0)
    # the buggy all-class version does change (so this test can catch a regression of cls_KD#16)
    assert not torch.allclose(buggy_nkd_non_target(zs, zt, T, 1.5), buggy_nkd_non_target(zs2, zt2, T, 1.5), rtol=1e-3)
    # and the target term does see the target logit
    assert not torch.allclose(parts["nkd_target"], parts2["nkd_target"])


# --- check 6 ----------------------------------------------------------------------------------------------
def test_target_term_and_teacher_detached(gen):
    zs = logits(gen).requires_grad_()
    zt = logits(gen).requires_grad_()
    y = labels(gen)
    total, parts = nkd_loss(zs, zt, y, temperature=3.0, gamma=3.5)
    expected = -(target_prob(zt.detach(), y) * F.log_softmax(zs.detach(), 1).gather(1, y[:, None]).squeeze(1)).mean()
    assert torch.allclose(parts["nkd_target"], expected, rtol=1e-12)
    assert torch.allclose(total, parts["nkd_target"] + parts["nkd_non_target"], rtol=1e-12)
    total.backward()
    assert zt.grad is None and zs.grad is not None


def test_teacher_target_prob_detached_even_without_teacher_detach(gen):
    """With detach_teacher=False (e.g. mutual learning) L_non reaches the teacher, L_tar never does."""
    zs, y = logits(gen).requires_grad_(), labels(gen)
    zt = logits(gen).requires_grad_()
    _, parts = nkd_loss(zs, zt, y, temperature=2.0, gamma=1.5, detach_teacher=False)
    (g_tar,) = torch.autograd.grad(parts["nkd_target"], zt, retain_graph=True, allow_unused=True)
    (g_non,) = torch.autograd.grad(parts["nkd_non_target"], zt)
    assert g_tar is None or g_tar.abs().max() == 0
    assert g_non.abs().max() > 0


def test_target_term_uses_tau_one(gen):
    zs, zt, y = logits(gen), logits(gen), labels(gen)
    a = nkd_loss(zs, zt, y, temperature=1.0)[1]["nkd_target"]
    b = nkd_loss(zs, zt, y, temperature=4.0)[1]["nkd_target"]
    assert torch.allclose(a, b, rtol=1e-12)


# --- check 7 ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T,gamma", [(1.0, 1.5), (3.0, 3.5)])
def test_non_target_term_is_scaled_nckd_plus_entropy(gen, T, gamma):
    zs = logits(gen).requires_grad_()
    zt, y = logits(gen), labels(gen)
    _, parts = nkd_loss(zs, zt, y, temperature=T, gamma=gamma, reduction="none")
    nt = F.softmax(torch.stack([torch.cat([r[:k], r[k + 1 :]]) for r, k in zip(zt, y)]) / T, 1)
    entropy = -(nt * nt.log()).sum(1)
    nc = nckd(zs, zt, y, T)
    assert torch.allclose(parts["nkd_non_target"], gamma * T**2 * (nc + entropy.detach()), rtol=1e-10)
    # gradient = gamma * tau^2 * grad NCKD
    (g_non,) = torch.autograd.grad(parts["nkd_non_target"].sum(), zs)
    (g_nc,) = torch.autograd.grad(nc.sum(), zs)
    assert torch.allclose(g_non, gamma * T**2 * g_nc, rtol=1e-9, atol=1e-12)


def test_non_target_grad_vanishes_at_equal_logits_target_grad_does_not(gen):
    z, y = logits(gen, c=10, scale=1.0), labels(gen, c=10)
    zs = z.clone().requires_grad_()
    _, parts = nkd_loss(zs, z.clone(), y, temperature=2.0, gamma=1.5)
    (g_non,) = torch.autograd.grad(parts["nkd_non_target"], zs, retain_graph=True)
    (g_tar,) = torch.autograd.grad(parts["nkd_target"], zs)
    assert g_non.abs().max() < 1e-12
    assert g_tar.abs().max() > 1e-3
    # the target-term gradient pushes the target logit up (descent direction = -grad)
    assert (g_tar.gather(1, y[:, None]) < 0).all()


# --- check 8 ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_nkd_reduces_to_ce_form_kd(gen, dtype, tol):
    zs, zt, y = logits(gen, dtype=dtype), logits(gen, dtype=dtype), labels(gen)
    pt_t = target_prob(zt, y)
    ps_t = target_prob(zs, y)
    per, _ = nkd_loss(zs, zt, y, temperature=1.0, gamma=1 - pt_t, reduction="none")
    rebuilt = (per - (1 - pt_t) * torch.log1p(-ps_t)).mean()
    assert torch.allclose(rebuilt, kd_loss(zs, zt, 1.0, form="ce"), rtol=tol, atol=tol)


# --- check 9 ----------------------------------------------------------------------------------------------
def test_soft_labels_use_argmax(gen):
    zs, zt, y = logits(gen), logits(gen), labels(gen)
    other = (y + 7) % C
    lam = 0.7
    soft = lam * F.one_hot(y, C).double() + (1 - lam) * F.one_hot(other, C).double()
    hard_total, hard_parts = nkd_loss(zs, zt, y)
    soft_total, soft_parts = nkd_loss(zs, zt, soft)
    assert torch.allclose(hard_total, soft_total, rtol=1e-12)
    # the minority class of the mix is not the one used
    assert not torch.allclose(nkd_loss(zs, zt, other)[0], soft_total)


# --- checks 16, 18 and misc -------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1e3, 1e4])
def test_nkd_finite_at_large_scale(gen, scale):
    zs = (logits(gen, dtype=torch.float32) * scale).requires_grad_()
    zt = logits(gen, dtype=torch.float32) * scale
    total, _ = nkd_loss(zs, zt, labels(gen), temperature=3.0, gamma=3.5)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(zs.grad).all()


def test_nkd_reduction(gen):
    zs, zt, y = logits(gen), logits(gen), labels(gen)
    mean, parts = nkd_loss(zs, zt, y, 2.0, 1.5)
    per, per_parts = nkd_loss(zs, zt, y, 2.0, 1.5, reduction="none")
    assert per.shape == (B,) and torch.allclose(per.mean(), mean, rtol=1e-12)
    manual_non = -(
        1.5
        * 4.0
        * (
            F.softmax(torch.stack([torch.cat([r[:k], r[k + 1 :]]) for r, k in zip(zt, y)]) / 2, 1)
            * F.log_softmax(torch.stack([torch.cat([r[:k], r[k + 1 :]]) for r, k in zip(zs, y)]) / 2, 1)
        ).sum(1)
    ).mean()
    assert torch.allclose(parts["nkd_non_target"], manual_non, rtol=1e-12)


def test_nkd_presets_and_validation(gen):
    assert NKD_PRESETS["imagenet_cnn"] == {"temperature": 1.0, "gamma": 1.5}
    assert NKD_PRESETS["cifar100_res34_res18"] == {"temperature": 3.0, "gamma": 3.5}
    z = logits(gen)
    with pytest.raises(ValueError):
        nkd_loss(z, z, torch.zeros(B, 3))
    with pytest.raises(ValueError):
        nkd_loss(z, z[:, :10], labels(gen))
