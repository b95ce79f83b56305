"""USKD: spec §14 checks 10, 11, 16 (USKD), 18."""

import math

import pytest
import torch
import torch.nn.functional as F

from plugins.nkd.losses import (
    USKD_PRESETS,
    USKDHead,
    USKDLoss,
    uskd_loss,
    uskd_rank_scores,
    uskd_soft_target,
    zipf_labels,
)

B, C, D = 16, 100, 32


def logits(gen, n=B, c=C, scale=1.0, dtype=torch.float32):
    return torch.randn(n, c, generator=gen, dtype=dtype) * scale


def labels(gen, n=B, c=C):
    return torch.randint(0, c, (n,), generator=gen)


# --- check 10: soft target q --------------------------------------------------------------------------------
def test_q_mean_one_detached_and_confidence_ordering(gen):
    z = logits(gen, scale=4.0).requires_grad_()
    y = labels(gen)
    idx, q = uskd_soft_target(z, y)
    assert idx.shape == (B, 1) and torch.equal(idx[:, 0], y)
    assert not q.requires_grad
    assert abs(q.mean().item() - 1.0) < 1e-6
    s_t = F.softmax(z.detach(), 1).gather(1, y[:, None]).squeeze(1)
    expected = s_t**2 + 1 - (s_t**2).mean()
    assert torch.allclose(q[:, 0], expected, atol=1e-7)
    # confident samples get q_t > 1, unconfident < 1
    assert ((q[:, 0] > 1) == (s_t**2 > (s_t**2).mean())).all()


def test_q_soft_labels_top2_and_zeroed(gen):
    z, y = logits(gen, scale=3.0), labels(gen)
    other = (y + 3) % C
    soft = 0.6 * F.one_hot(y, C).float() + 0.4 * F.one_hot(other, C).float()
    idx, q = uskd_soft_target(z, soft)
    assert torch.equal(idx[:, 0], y) and torch.equal(idx[:, 1], other)
    s = F.softmax(z, 1)
    for k, v in ((0, 0.6), (1, 0.4)):
        sk2 = s.gather(1, idx[:, k : k + 1]).squeeze(1) ** 2
        assert torch.allclose(q[:, k], sk2 + v - sk2.mean(), atol=1e-6)
    # a one-hot float label: the second class has v = 0 -> q zeroed, result equals the hard-label loss
    onehot = F.one_hot(y, C).float()
    _, q1 = uskd_soft_target(z, onehot)
    assert (q1[:, 1] == 0).all()
    w = logits(gen)
    hard_total, _ = uskd_loss(z, w, y)
    float_total, _ = uskd_loss(z, w, onehot)
    assert torch.allclose(hard_total, float_total, atol=1e-6)


def test_soft_label_non_target_term_excludes_both_label_classes(gen):
    z, w, y = logits(gen, dtype=torch.float64), logits(gen, dtype=torch.float64), labels(gen)
    other = (y + 11) % C
    soft = 0.7 * F.one_hot(y, C).double() + 0.3 * F.one_hot(other, C).double()
    total, parts = uskd_loss(z, w, soft, 0.1, 0.1, 0.1)
    assert torch.isfinite(total)
    # the non-target term runs over the C - 2 classes outside the label support, whatever their logits
    z2 = z.scatter(1, y[:, None], 50.0).scatter(1, other[:, None], 49.0)
    w2 = w.scatter(1, y[:, None], 50.0).scatter(1, other[:, None], 49.0)
    _, parts2 = uskd_loss(z2, w2, soft, 0.1, 0.1, 0.1)
    keep = torch.ones(B, C, dtype=torch.bool).scatter_(1, y[:, None], False).scatter_(1, other[:, None], False)
    score = uskd_rank_scores(z2, w2, torch.stack([y, other], 1), torch.tensor([[0.7, 0.3]]).expand(B, 2))
    zipf = zipf_labels(score, ~keep)
    expected = -(zipf[keep].view(B, C - 2) * F.log_softmax(z2[keep].view(B, C - 2), 1)).sum(1).mean()
    assert torch.allclose(parts2["uskd_non_target"], 0.1 * expected, rtol=1e-10)
    # the weak-head target is 0.9 * soft label + 0.1 / C
    l_weak = -(0.1 * (0.9 * soft + 0.1 / C) * F.log_softmax(w, 1)).sum(1).mean()
    assert torch.allclose(parts["uskd_weak"], l_weak, rtol=1e-10)


# --- check 10: Zipf labels ----------------------------------------------------------------------------------
def test_zipf_positive_normalised_non_increasing(gen):
    scores, y = logits(gen), labels(gen)
    zipf = zipf_labels(scores, y)
    assert zipf.shape == (B, C) and not zipf.requires_grad
    assert (zipf.gather(1, y[:, None]) == 0).all()
    mask = torch.ones(B, C, dtype=torch.bool).scatter_(1, y[:, None], False)
    assert (zipf[mask] > 0).all()
    assert torch.allclose(zipf.sum(1), torch.ones(B), atol=1e-6)
    order = scores.argsort(1, descending=True)
    by_rank = zipf.gather(1, order)
    for row, target_pos in zip(by_rank, (order == y[:, None]).nonzero()[:, 1]):
        nt = torch.cat([row[:target_pos], row[target_pos + 1 :]])
        assert (nt[1:] <= nt[:-1]).all()
        # exact Zipf: weight of a non-target class is proportional to 1 / (1 + its rank among all classes)
        positions = torch.tensor([k for k in range(C) if k != target_pos], dtype=torch.float32)
        expected = 1.0 / (positions + 1)
        assert torch.allclose(nt, expected / expected.sum(), rtol=1e-5)


@pytest.mark.parametrize("c,head", [(100, (0.1194, 0.0796, 0.0597)), (10, (0.2592, 0.1728, 0.1296))])
def test_zipf_target_first_closed_form(c, head):
    n = 3
    y = torch.tensor([0, c // 2, c - 1])
    scores = torch.arange(c, 0, -1, dtype=torch.float32).repeat(n, 1)  # class order = rank order...
    scores.scatter_(1, y[:, None], 1e3)  # ...except the target, ranked first
    zipf = zipf_labels(scores, y)
    harmonic = sum(1.0 / k for k in range(1, c + 1))
    closed = torch.tensor([1.0 / k for k in range(2, c + 1)]) / (harmonic - 1.0)
    for i in range(n):
        nt = torch.cat([zipf[i, : y[i]], zipf[i, y[i] + 1 :]])
        assert torch.allclose(nt, closed, atol=1e-7)
        assert nt[:3].tolist() == pytest.approx(list(head), abs=5e-5)


def test_rank_path_has_no_grad(gen):
    z = logits(gen).requires_grad_()
    w = logits(gen).requires_grad_()
    y = labels(gen)
    for rank in ("prob", "logprob"):
        scores = uskd_rank_scores(z, w, y[:, None], torch.ones(B, 1), rank)
        assert not scores.requires_grad
        assert not zipf_labels(scores, y).requires_grad


# --- check 10: gradient routing -----------------------------------------------------------------------------
@pytest.mark.parametrize("rank", ["prob", "logprob"])
def test_weak_head_gets_gradient_only_from_its_own_term(gen, rank):
    torch.manual_seed(0)
    mu = 0.1
    module = USKDLoss(D, C, alpha=0.1, beta=0.1, mu=mu, rank=rank)
    feat = torch.randn(B, D, generator=gen)
    z = logits(gen, scale=2.0).requires_grad_()
    y = labels(gen)
    total, parts = module(feat, z, y)
    assert torch.allclose(total, parts["uskd_target"] + parts["uskd_non_target"] + parts["uskd_weak"], atol=1e-6)
    total.backward()
    g_total = module.head.fc.weight.grad.clone()
    gb_total = module.head.fc.bias.grad.clone()

    module.zero_grad()
    own = mu * F.cross_entropy(module.head(feat), y, label_smoothing=0.1)  # 0.9 * onehot + 0.1 / C
    assert torch.allclose(own, parts["uskd_weak"], rtol=1e-6)
    own.backward()
    assert torch.allclose(g_total, module.head.fc.weight.grad, rtol=1e-5, atol=1e-9)
    assert torch.allclose(gb_total, module.head.fc.bias.grad, rtol=1e-5, atol=1e-9)


def test_final_logits_get_no_gradient_from_weak_term(gen):
    z = logits(gen, scale=2.0).requires_grad_()
    w = logits(gen, scale=2.0).requires_grad_()
    y = labels(gen)
    _, parts = uskd_loss(z, w, y, alpha=0.1, beta=0.1, mu=0.1)
    (gz_weak,) = torch.autograd.grad(parts["uskd_weak"], z, allow_unused=True)
    assert gz_weak is None
    gw = torch.autograd.grad(parts["uskd_target"] + parts["uskd_non_target"], w, allow_unused=True)[0]
    assert gw is None


def test_loss_terms_match_formulas(gen):
    alpha, beta, mu = 0.1, 0.1, 0.1
    z, w, y = logits(gen, scale=2.0, dtype=torch.float64), logits(gen, scale=2.0, dtype=torch.float64), labels(gen)
    _, parts = uskd_loss(z, w, y, alpha, beta, mu, rank="prob")
    s = F.softmax(z, 1)
    s_t = s.gather(1, y[:, None]).squeeze(1)
    q = s_t**2 + 1 - (s_t**2).mean()
    l_tar = -(q * F.log_softmax(z, 1).gather(1, y[:, None]).squeeze(1)).mean()
    assert torch.allclose(parts["uskd_target"], alpha * l_tar, rtol=1e-10)
    target = 0.9 * F.one_hot(y, C).double() + 0.1 / C
    l_weak = -(target * F.log_softmax(w, 1)).sum(1).mean()
    assert torch.allclose(parts["uskd_weak"], mu * l_weak, rtol=1e-10)
    # non-target: Zipf over the rank of (softmax(w)/(1-w_t) + softmax(z)/(1-s_t)), target column dropped
    pw = F.softmax(w, 1)
    score = pw / (1 - pw.gather(1, y[:, None]) + 1e-6) + s / (1 - s_t[:, None] + 1e-6)
    pos = score.argsort(1, descending=True).argsort(1).double()
    zipf = 1.0 / (pos + 1)
    keep = torch.ones(B, C, dtype=torch.bool).scatter_(1, y[:, None], False)
    nz = zipf[keep].view(B, C - 1)
    nz = nz / nz.sum(1, keepdim=True)
    l_non = -(nz * F.log_softmax(z[keep].view(B, C - 1), 1)).sum(1).mean()
    assert torch.allclose(parts["uskd_non_target"], beta * l_non, rtol=1e-10)


# --- check 11: rank variants --------------------------------------------------------------------------------
def test_rank_variants_differ_when_heads_disagree():
    c = 10
    z = torch.zeros(1, c)
    z[0, 0], z[0, 1] = 5.0, 3.0  # final head: target 0, then class 1
    w = torch.zeros(1, c)
    w[0, 2] = 8.0  # weak head: class 2 by far
    y = torch.tensor([0])
    top = {}
    for rank in ("prob", "logprob"):
        zipf = zipf_labels(uskd_rank_scores(z, w, y[:, None], torch.ones(1, 1), rank), y)
        top[rank] = zipf[0].argmax().item()
    assert top == {"prob": 2, "logprob": 1}
    l_prob = uskd_loss(z, w, y, rank="prob")[1]["uskd_non_target"]
    l_logp = uskd_loss(z, w, y, rank="logprob")[1]["uskd_non_target"]
    assert not torch.allclose(l_prob, l_logp)


def _spearman(a, b):
    ra = a.argsort(1).argsort(1).double()
    rb = b.argsort(1).argsort(1).double()
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return ((ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1))).mean().item()


def test_rank_variants_statistics(gen):
    """Spec §8.3 characterisation: logprob rank ~ final-logit rank; prob rank mixes both heads."""
    n = 256
    z, w, y = logits(gen, n=n), logits(gen, n=n), labels(gen, n=n)
    keep = torch.ones(n, C, dtype=torch.bool).scatter_(1, y[:, None], False)
    nt = lambda x: x[keep].view(n, C - 1)  # noqa: E731
    rho = {}
    for rank in ("prob", "logprob"):
        s = nt(uskd_rank_scores(z, w, y[:, None], torch.ones(n, 1), rank))
        rho[rank] = (_spearman(s, nt(z)), _spearman(s, nt(w)))
    assert rho["logprob"][0] > 0.95 and rho["logprob"][1] < 0.2
    assert 0.4 < rho["prob"][0] < 0.85 and 0.4 < rho["prob"][1] < 0.85


# --- checks 16, 18, misc --------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1e3, 1e4])
def test_uskd_finite_at_large_scale(gen, scale):
    head = USKDHead(D, C)
    feat = torch.randn(B, D, generator=gen) * scale
    z = (logits(gen) * scale).requires_grad_()
    total, _ = uskd_loss(z, head(feat), labels(gen), **USKD_PRESETS["cifar100"])
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(z.grad).all()
    assert torch.isfinite(head.fc.weight.grad).all()


def test_uskd_reduction_and_head(gen):
    z, w, y = logits(gen), logits(gen), labels(gen)
    mean, parts = uskd_loss(z, w, y)
    per, per_parts = uskd_loss(z, w, y, reduction="none")
    assert per.shape == (B,) and torch.allclose(per.mean(), mean, atol=1e-6)
    for k in parts:
        assert torch.allclose(per_parts[k].mean(), parts[k], atol=1e-6)
    head = USKDHead(D, C)
    fmap = torch.randn(2, D, 4, 4, generator=gen)
    assert torch.allclose(head(fmap), head(fmap.mean((2, 3))))
    with pytest.raises(ValueError):
        uskd_loss(z, w, y, rank="weak")


def test_uskd_defaults_and_presets():
    import inspect

    sig = inspect.signature(uskd_loss).parameters
    assert (sig["alpha"].default, sig["beta"].default, sig["mu"].default) == (1.0, 0.1, 0.005)
    assert sig["rank"].default == "prob" and sig["label_smoothing"].default == 0.1
    assert USKD_PRESETS["cifar100"] == {"alpha": 0.1, "beta": 0.1, "mu": 0.1}
    assert math.isclose(sum(1.0 / k for k in range(2, 101)), sum(1.0 / k for k in range(1, 101)) - 1)
