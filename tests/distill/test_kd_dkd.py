"""KD and DKD: spec §14 checks 1-4, 16 (DKD part), 18."""

import pytest
import torch
import torch.nn.functional as F

from plugins.kd.losses import (
    DKD_PRESETS,
    dkd_loss,
    dkd_warmup_factor,
    drop_target_column,
    kd_loss,
    nckd,
    target_log_probs,
    tckd,
)

B, C = 8, 100


def logits(gen, n=B, c=C, scale=3.0, dtype=torch.float64):
    return torch.randn(n, c, generator=gen, dtype=dtype) * scale


def labels(gen, n=B, c=C):
    return torch.randint(0, c, (n,), generator=gen)


def kl_per_sample(zs, zt, T):
    """Independent KL(p^t(T) || p^s(T)) per sample via torch's kl_div."""
    return F.kl_div(F.log_softmax(zs / T, 1), F.softmax(zt / T, 1), reduction="none").sum(1)


def reference_dkd_parts(zs, zt, y, T):
    """mdistiller-style DKD (log of masked sums, -1000 trick), per sample, for comparison only."""
    gt = F.one_hot(y, zs.shape[1]).bool()
    ps, pt = F.softmax(zs / T, 1), F.softmax(zt / T, 1)
    bs = torch.stack([(ps * gt).sum(1), (ps * ~gt).sum(1)], 1)
    bt = torch.stack([(pt * gt).sum(1), (pt * ~gt).sum(1)], 1)
    tc = (bt * (torch.log(bt) - torch.log(bs))).sum(1)
    log_ns = F.log_softmax(zs / T - 1000.0 * gt, 1)
    nt = F.softmax(zt / T - 1000.0 * gt, 1)
    nc = F.kl_div(log_ns, nt, reduction="none").sum(1)
    return tc, nc


# --- check 1 ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_identical_logits_zero_loss_and_grad(gen, T):
    z = logits(gen, dtype=torch.float32).requires_grad_()
    loss = kd_loss(z, z.detach().clone(), T)
    loss.backward()
    assert abs(loss.item()) < 1e-6
    assert z.grad.abs().max().item() < 1e-6


def test_kd_ce_form_identical_is_scaled_entropy(gen):
    T = 4.0
    z = logits(gen, dtype=torch.float32).requires_grad_()
    loss = kd_loss(z, z.detach().clone(), T, form="ce")
    loss.backward()
    p = F.softmax(z.detach() / T, 1)
    entropy = -(p * p.log()).sum(1).mean()
    assert loss.item() == pytest.approx((T**2 * entropy).item(), rel=1e-5)
    assert loss.item() > 1.0  # not zero, unlike the KL form
    assert z.grad.abs().max().item() < 1e-6


def test_kd_ce_and_kl_forms_differ_by_teacher_entropy(gen):
    zs, zt, T = logits(gen), logits(gen), 3.0
    pt = F.softmax(zt / T, 1)
    h = -(pt * pt.log()).sum(1).mean()
    diff = kd_loss(zs, zt, T, form="ce") - kd_loss(zs, zt, T, form="kl")
    assert diff.item() == pytest.approx((T**2 * h).item(), rel=1e-10)


# --- check 2 ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [0.5, 1.0, 2.0, 4.0, 8.0])
def test_kd_exactly_one_t_squared(gen, T):
    zs, zt = logits(gen), logits(gen)
    expected = T**2 * F.kl_div(F.log_softmax(zs / T, 1), F.softmax(zt / T, 1), reduction="batchmean")
    assert torch.allclose(kd_loss(zs, zt, T), expected, rtol=1e-12, atol=0)


def test_kd_teacher_detached(gen):
    zs, zt = logits(gen).requires_grad_(), logits(gen).requires_grad_()
    kd_loss(zs, zt, 4.0).backward()
    assert zt.grad is None and zs.grad is not None


# --- check 3 ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_decomposition(gen, T):
    zs, zt, y = logits(gen, dtype=torch.float32), logits(gen, dtype=torch.float32), labels(gen)
    pt_t = F.softmax(zt / T, 1).gather(1, y[:, None]).squeeze(1)
    lhs = kl_per_sample(zs, zt, T)
    rhs = tckd(zs, zt, y, T) + (1 - pt_t) * nckd(zs, zt, y, T)
    assert torch.allclose(lhs, rhs, atol=1e-5, rtol=0)
    # and far from trivially true: the two parts are individually non-negligible
    assert tckd(zs, zt, y, T).abs().max() > 1e-3 and nckd(zs, zt, y, T).abs().max() > 1e-3


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_dkd_reduces_to_kd(gen, dtype, tol):
    T = 4.0
    zs, zt, y = logits(gen, dtype=dtype), logits(gen, dtype=dtype), labels(gen)
    beta = 1 - F.softmax(zt / T, 1).gather(1, y[:, None]).squeeze(1)
    total, parts = dkd_loss(zs, zt, y, alpha=1.0, beta=beta, temperature=T)
    assert torch.allclose(total, kd_loss(zs, zt, T), rtol=tol, atol=tol)
    assert torch.allclose(parts["tckd"] + parts["nckd"], total, rtol=0, atol=1e-12 if dtype == torch.float64 else 1e-6)


def test_dkd_weights_and_t2(gen):
    T = 4.0
    zs, zt, y = logits(gen), logits(gen), labels(gen)
    total, parts = dkd_loss(zs, zt, y, alpha=2.0, beta=8.0, temperature=T)
    assert torch.allclose(parts["tckd"], 2.0 * T**2 * tckd(zs, zt, y, T).mean(), rtol=1e-12)
    assert torch.allclose(parts["nckd"], 8.0 * T**2 * nckd(zs, zt, y, T).mean(), rtol=1e-12)


def test_dkd_helpers_match_target_log_probs(gen):
    z, y = logits(gen), labels(gen)
    log_p = F.log_softmax(z, 1)
    log_pt, log_rest = target_log_probs(log_p, y)
    p = log_p.exp()
    p_t = p.gather(1, y[:, None]).squeeze(1)
    assert torch.allclose(log_pt.exp(), p_t, rtol=1e-12)
    assert torch.allclose(log_rest.exp(), 1 - p_t, rtol=1e-10)


# --- check 4 ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bound", [1.0, 10.0, 99.0])  # |z/T| < 100
def test_dkd_matches_reference_masking(gen, bound):
    T = 4.0
    zs = (torch.rand(B, C, generator=gen, dtype=torch.float64) * 2 - 1) * bound * T
    zt = (torch.rand(B, C, generator=gen, dtype=torch.float64) * 2 - 1) * bound * T
    y = labels(gen)
    ref_tc, ref_nc = reference_dkd_parts(zs, zt, y, T)
    assert torch.allclose(nckd(zs, zt, y, T), ref_nc, atol=1e-6, rtol=1e-9)
    assert torch.allclose(tckd(zs, zt, y, T), ref_tc, atol=1e-6, rtol=1e-9)
    total, parts = dkd_loss(zs, zt, y, 1.0, 8.0, T)
    assert torch.allclose(parts["nckd"], 8.0 * T**2 * ref_nc.mean(), atol=1e-6, rtol=1e-9)


def test_drop_target_column_exact(gen):
    x, y = logits(gen, n=5, c=7), labels(gen, n=5, c=7)
    x.scatter_(1, y[:, None], 1e9)  # sentinel in the target column
    out = drop_target_column(x, y)
    assert out.shape == (5, 6)
    assert (out < 1e8).all()
    for i in range(5):
        keep = [j for j in range(7) if j != y[i]]
        assert torch.equal(out[i], x[i, keep])


# --- check 16 (DKD) ---------------------------------------------------------------------------------------
def test_dkd_huge_logits_finite_where_reference_is_not(gen):
    T = 4.0
    zs = logits(gen, dtype=torch.float32) * 1e4
    zt = logits(gen, dtype=torch.float32) * 1e4
    y = labels(gen)
    # make the student certain of the target: 1 - p_t underflows to 0 in float32
    zs = zs.scatter(1, y[:, None], 1e6).requires_grad_()
    ref_tc, _ = reference_dkd_parts(zs.detach(), zt, y, T)
    assert not torch.isfinite(ref_tc).all()  # the reference log(sum) hits log 0 here
    total, _ = dkd_loss(zs, zt, y, 1.0, 8.0, T)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(zs.grad).all()


@pytest.mark.parametrize("scale", [1e3, 1e4])
def test_kd_dkd_finite_at_large_scale(gen, scale):
    zs = (logits(gen, dtype=torch.float32) * scale).requires_grad_()
    zt = logits(gen, dtype=torch.float32) * scale
    y = labels(gen)
    for loss in (kd_loss(zs, zt, 4.0), kd_loss(zs, zt, 1.0, form="ce"), dkd_loss(zs, zt, y, 1.0, 8.0, 4.0)[0]):
        zs.grad = None
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(zs.grad).all()


def test_dkd_binary_task_finite(gen):
    zs, zt, y = logits(gen, c=2), logits(gen, c=2), labels(gen, c=2)
    total, parts = dkd_loss(zs, zt, y)
    assert torch.isfinite(total) and parts["nckd"].abs().item() == 0.0
    assert torch.allclose(total, kd_loss(zs, zt, 4.0), rtol=1e-10)  # C = 2: KL == TCKD


def test_half_precision_inputs_upcast(gen):
    zs, zt, y = logits(gen, dtype=torch.bfloat16), logits(gen, dtype=torch.bfloat16), labels(gen)
    assert kd_loss(zs, zt).dtype == torch.float32
    assert dkd_loss(zs, zt, y)[0].dtype == torch.float32


# --- check 18 ---------------------------------------------------------------------------------------------
def test_reduction_is_batch_mean_of_class_sums(gen):
    T = 2.0
    zs, zt, y = logits(gen), logits(gen), labels(gen)
    manual = (T**2 * (F.softmax(zt / T, 1) * (F.log_softmax(zt / T, 1) - F.log_softmax(zs / T, 1))).sum(1)).mean()
    assert torch.allclose(kd_loss(zs, zt, T), manual, rtol=1e-12)
    per = kd_loss(zs, zt, T, reduction="none")
    assert per.shape == (B,) and torch.allclose(per.mean(), manual, rtol=1e-12)
    assert torch.allclose(kd_loss(zs, zt, T, reduction="sum"), per.sum(), rtol=1e-12)
    total, _ = dkd_loss(zs, zt, y, 1.0, 8.0, T)
    per_dkd, _ = dkd_loss(zs, zt, y, 1.0, 8.0, T, reduction="none")
    assert per_dkd.shape == (B,) and torch.allclose(per_dkd.mean(), total, rtol=1e-12)
    # DKD reference reduction: size_average=False / B
    ref_tc, ref_nc = reference_dkd_parts(zs, zt, y, T)
    assert torch.allclose(total, T**2 * (ref_tc.sum() + 8.0 * ref_nc.sum()) / B, rtol=1e-9)


def test_input_validation(gen):
    z, y = logits(gen), labels(gen)
    with pytest.raises(ValueError):
        kd_loss(z, z[:, :5])
    with pytest.raises(ValueError):
        kd_loss(z.view(2, 4, C), z.view(2, 4, C))
    with pytest.raises(ValueError):
        kd_loss(z, z, form="js")
    with pytest.raises(ValueError):
        dkd_loss(z, z, y.float())
    with pytest.raises(ValueError):
        kd_loss(z, z, 0.0)


def test_dkd_warmup_factor():
    assert dkd_warmup_factor(1, 20) == pytest.approx(1 / 20)
    assert dkd_warmup_factor(10, 20) == pytest.approx(0.5)
    assert dkd_warmup_factor(20, 20) == 1.0 and dkd_warmup_factor(240, 20) == 1.0
    assert dkd_warmup_factor(0, 20) == 0.0 and dkd_warmup_factor(-3, 20) == 0.0
    assert dkd_warmup_factor(5, 0) == 1.0


def test_dkd_ls_preset_is_weight_times_base():
    base, ls = DKD_PRESETS["mdistiller_cifar100"], DKD_PRESETS["ls_cifar100"]
    assert ls["alpha"] == 9 * base["alpha"] and ls["beta"] == 9 * base["beta"] and ls["temperature"] == 2.0
