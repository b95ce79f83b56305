"""MuonAdamW: update scale (check 7), coupling bound, weight decay (check 12), bit-exact resume."""

import copy
import io
import math

import pytest
import torch

from plugins.lipschitz import constraint_maps as cm
from plugins.lipschitz import spectral as sp
from plugins.lipschitz.models import LipschitzGPT
from plugins.lipschitz.muon import MuonAdamW, muon_lr_scale

torch.set_num_threads(1)

SHAPES = [(48, 16), (16, 48), (24, 24)]
KELLER = sp.ns_overshoot(sp.KELLER_NS5)


def make_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g) * 0.1) for s in SHAPES]


def test_lr_scale_and_defaults():
    ps = make_params()
    b = torch.nn.Parameter(torch.zeros(3))
    opt = MuonAdamW([("a", ps[0]), ps[1], ps[2]], [b], lr=0.1)
    muon_groups = [g for g in opt.param_groups if g["kind"] == "muon"]
    assert [g["lr_scale"] for g in muon_groups] == pytest.approx([1.0, math.sqrt(16 / 48), 1.0])
    assert muon_groups[0]["name"] == "a"
    assert all(g["weight_decay"] == 0.0 for g in muon_groups)  # torch's default 0.1 overridden
    assert all(g["adjust_lr_fn"] == "original" for g in muon_groups)
    assert opt.param_groups[-1]["kind"] == "adam" and opt.param_groups[-1]["params"][0] is b
    assert opt.nominal_lr(ps[1]) == pytest.approx(0.1)
    assert opt.max_update_norm(ps[1]) == pytest.approx(0.1 * KELLER * 1.05)
    assert muon_lr_scale((10, 40)) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        MuonAdamW([torch.nn.Parameter(torch.zeros(3))])
    # zero gradient + zero weight decay: nothing moves
    before = [p.detach().clone() for p in ps]
    for p in ps:
        p.grad = torch.zeros_like(p)
    opt.step()
    assert all(torch.equal(p, q) for p, q in zip(ps, before))


def test_update_scale_is_rms_to_rms_one_for_every_shape():
    ps = make_params()
    lr = 0.05
    opt = MuonAdamW(ps, lr=lr)
    ref_ps = make_params()
    ref = torch.optim.Muon(ref_ps, lr=lr, weight_decay=0.0)  # plain torch scaling, for contrast
    g = torch.Generator().manual_seed(1)
    for p, q in zip(ps, ref_ps):
        p.grad = torch.randn(p.shape, generator=g)
        q.grad = p.grad.clone()
    before = [p.detach().clone() for p in ps]
    opt.step()
    ref.step()
    for p, q, b in zip(ps, ref_ps, before):
        n = sp.rms_to_rms_norm(p.detach() - b) / lr
        assert 0.7 <= n <= KELLER * 1.05  # ≈ 1, within the bf16 NS overshoot bound
        assert sp.rms_to_rms_norm(p.detach() - b) <= opt.max_update_norm(p)
        n_ref = sp.rms_to_rms_norm(q.detach() - b) / lr
        if p.shape[0] < p.shape[1]:  # wide: torch's "original" scaling is sqrt(fan_in/fan_out) too big
            assert n_ref == pytest.approx(n * math.sqrt(p.shape[1] / p.shape[0]), rel=1e-3)
            assert n_ref > KELLER * 1.05
        else:
            assert n_ref == pytest.approx(n, rel=1e-6)


def test_decoupled_weight_decay_is_tied_to_nominal_lr():
    ps = make_params()
    opt = MuonAdamW(ps, lr=0.2, weight_decay=0.5)
    before = [p.detach().clone() for p in ps]
    for p in ps:
        p.grad = torch.zeros_like(p)
    opt.step()
    for p, b in zip(ps, before):  # same decay factor for wide and tall matrices
        torch.testing.assert_close(p.detach(), b * (1 - 0.2 * 0.5))
        assert opt.decay_fraction(p) == pytest.approx(0.1)


def test_weight_decay_bounds_norm():
    """Check 12: Muon + decoupled wd lambda and |O| <= 1 keeps sigma_max <= max(sigma_0, 1/lambda)."""
    lam, eta = 2.0, 0.05
    g = torch.Generator().manual_seed(2)
    # exact-msign Muon (|O| = 1 exactly), adversarial: the update always grows the matrix
    W = torch.randn(20, 10, generator=g, dtype=torch.float64) * 0.01
    s0 = sp.rms_to_rms_norm(W)
    worst = 0.0
    for _ in range(150):
        W = (1 - lam * eta) * W + eta * sp.rms_scale(W) * sp.msign_accurate(W)
        worst = max(worst, sp.rms_to_rms_norm(W))
    assert worst <= max(s0, 1 / lam) * (1 + 1e-12)
    assert worst >= 0.99 / lam  # the bound is tight
    # the real optimizer (bf16 Keller NS, overshoot): bound max(sigma_0, overshoot*margin/lambda)
    p = torch.nn.Parameter(torch.randn(20, 10, generator=g) * 0.01)
    opt = MuonAdamW([p], lr=eta, weight_decay=lam, momentum=0.0, nesterov=False)
    worst = 0.0
    for _ in range(150):
        p.grad = -p.detach().clone()  # gradient that pushes the norm up
        opt.step()
        worst = max(worst, sp.rms_to_rms_norm(p.detach()))
    assert worst <= max(0.01 * 10, KELLER * opt.overshoot_margin / lam)
    assert worst >= 0.4 / lam


@pytest.mark.parametrize("shape", [(24, 12), (12, 36)])
def test_soft_cap_with_real_muon_keeps_cap(shape):
    """The engine's loop: step -> soft cap with alpha from the optimizer's update bound."""
    w_max, lr = 1.0, 0.2  # eta/w_max = 0.2*1.2024*1.05 = 0.25 <= 0.3
    g = torch.Generator().manual_seed(3)
    p = torch.nn.Parameter(cm.svd_clip(torch.randn(shape, generator=g), w_max))
    opt = MuonAdamW([p], lr=lr, momentum=0.9, nesterov=False)
    worst = 0.0
    for t in range(80):
        if t % 2:
            p.grad = -p.detach().clone()  # push outwards
        else:
            p.grad = torch.randn(shape, generator=g)
        opt.step()
        with torch.no_grad():
            p.copy_(cm.soft_cap(p, opt.soft_cap_alpha(p, w_max)))
        worst = max(worst, sp.rms_to_rms_norm(p.detach()))
    assert worst <= w_max * (1 + 1e-5)
    assert worst >= 0.8 * w_max


def test_max_update_norm_last_vs_next_with_scheduler():
    ps = make_params()
    opt = MuonAdamW(ps, lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 - 0.1 * t)
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()
    sched.step()
    for p in ps:
        assert opt.max_update_norm(p, "last") == pytest.approx(0.1 * KELLER * 1.05)
        assert opt.max_update_norm(p, "next") == pytest.approx(0.09 * KELLER * 1.05)
        assert opt.nominal_lr(p) == pytest.approx(0.09)
    # the scheduler scaled torch's group lr, preserving lr_scale
    wide = [g for g in opt.param_groups if g["kind"] == "muon"][1]
    assert wide["lr"] == pytest.approx(0.09 * math.sqrt(16 / 48))


def _train(model, opt, sched, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, 13, (4, 8), generator=g)
        logits = model(idx)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 13), idx[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():  # the projection the engine will run after every step
            for _, p in model.weight_groups()["hidden"] + model.weight_groups()["head"]:
                p.copy_(cm.soft_cap(p, opt.soft_cap_alpha(p, 1.0)))
            model.project_embedding_()


def _build(state=None):
    model = LipschitzGPT(13, 16, 2, 2, 8, seed=0)
    groups = model.weight_groups()
    opt = MuonAdamW(
        [{"params": groups["hidden"]}, {"params": groups["head"], "lr": 0.02}],
        [{"params": [p for _, p in groups["embedding"]], "lr": 0.01}],
        lr=0.05,
        momentum=0.9,
        nesterov=False,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 - t / 20)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
    return model, opt, sched


def test_state_dict_resume_is_bit_exact():
    model, opt, sched = _build()
    _train(model, opt, sched, 3, seed=10)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    _train(model, opt, sched, 3, seed=11)

    buf.seek(0)
    state = torch.load(buf, weights_only=False)
    model2, opt2, sched2 = _build(state)
    assert len(opt2.state) == len(opt.state) > 0
    _train(model2, opt2, sched2, 3, seed=11)
    for (n, a), (_, b) in zip(model.named_parameters(), model2.named_parameters()):
        assert torch.equal(a, b), n
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    head = model2.head.weight
    assert opt2.max_update_norm(head) == opt.max_update_norm(model.head.weight)
    assert opt2.muon_group(head)["name"] == "head.weight"
    assert sp.rms_to_rms_norm(head.detach()) <= 1 + 1e-5
    # a deep copy is independent and usable
    opt3 = copy.deepcopy(opt2)
    assert opt3.state_dict()["muon"]["param_groups"][0]["lr_scale"] == 1.0
    p3 = opt3.param_groups[-2]["params"][0]  # the head (last Muon group)
    assert p3 is not head and torch.equal(p3, head)
    assert opt3.max_update_norm(p3) == opt2.max_update_norm(head)
