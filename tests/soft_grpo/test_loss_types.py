"""TRL's GRPO loss family (loss_types.py) against brute-force references written from the TRL conventions.

The references loop over sequences and tokens in plain Python (scalar torch ops only, so autograd gives their
gradients) and know nothing of the vectorised code: no shared helper, no masking tricks.  Inputs are float64
with right-padded random masks, one row always empty; magnitudes keep the verl guards (log-ratio ±20, k3 ≤ 10)
inactive, since TRL has neither.
"""

import math
import os
import statistics
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from plugins.soft_grpo.loss_types import (  # noqa: E402
    LOSS_TYPES,
    importance_weights,
    normalise,
    sapo_token_losses,
    token_losses,
    vespo_token_losses,
    vespo_weights,
)
from plugins.soft_grpo.objective import (  # noqa: E402
    ObjectiveConfig,
    aggregate,
    group_advantages,
    k3_kl,
    policy_loss,
    policy_loss_terms,
    ppo_clip_token_losses,
)
from plugins.soft_grpo.rl_plugins import GRPO, GRPOConfig, SoftGRPO, SoftGRPOConfig  # noqa: E402

CLIP = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")


def make_inputs(seed, B=6, L=7):
    g = torch.Generator().manual_seed(seed)
    logp = -1.0 + 0.5 * torch.randn(B, L, generator=g, dtype=torch.float64)
    old = logp + 0.3 * torch.randn(B, L, generator=g, dtype=torch.float64)
    ref = logp + 0.4 * torch.randn(B, L, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, L + 1, (B,), generator=g)
    lengths[1] = 0  # a sequence without tokens
    lengths[2] = L  # and a full one
    mask = torch.arange(L)[None, :] < lengths[:, None]  # right padding
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    adv[3] = 0.0  # sapo's A = 0 branch
    # padded positions hold garbage: it must not reach the loss or its gradient
    logp = torch.where(mask, logp, torch.full_like(logp, 7.0))
    return logp.requires_grad_(True), old, ref, adv, mask


def reference_loss(
    loss_type,
    logp,
    old,
    adv,
    mask,
    *,
    level="token",
    eps_low=0.2,
    eps_high=None,
    delta=None,
    beta=0.0,
    ref=None,
    bias_correction=False,
    tau_pos=1.0,
    tau_neg=1.05,
    vespo=(2.0, 3.0, 3.0, 2.0),
    num_tokens=None,
    num_sequences=None,
    max_completion_length=None,
):
    """TRL 1.16's GRPO loss family (``GRPOTrainer._compute_loss``), one token at a time."""
    B, L = logp.shape
    hi = eps_low if eps_high is None else eps_high
    rows = []  # per sequence: the list of its token losses
    for i in range(B):
        active = [t for t in range(L) if bool(mask[i, t])]
        if level == "sequence":
            total = torch.zeros((), dtype=torch.float64)
            for t in active:
                total = total + (logp[i, t] - old[i, t])
            seq_ratio = torch.exp(total / max(len(active), 1))
        if loss_type == "vespo":  # the paper's gamma weight on w = exp(Σ token log-ratios), clamped as TRL does
            log_w = sum((min(max(float(logp[i, t] - old[i, t]), -20.0), 20.0) for t in active), 0.0)
            w = math.exp(min(max(log_w, math.log(1e-8)), 20.0))
            k, lam = (vespo[0], vespo[1]) if float(adv[i]) >= 0 else (vespo[2], vespo[3])
            phi = math.exp(lam) * w**k * math.exp(-lam * w)
        losses = []
        for t in active:
            r = torch.exp(logp[i, t] - old[i, t]) if level == "token" else seq_ratio
            A = float(adv[i])
            if loss_type in CLIP:
                r_unclipped = r if delta is None else torch.clamp(r, max=delta)
                loss = -torch.minimum(r_unclipped * A, torch.clamp(r, 1 - eps_low, 1 + hi) * A)
            elif loss_type == "cispo":
                loss = -torch.clamp(r, max=eps_high).detach() * A * logp[i, t]
            elif loss_type == "sapo":
                tau = tau_pos if A > 0 else tau_neg
                loss = -(4.0 / tau) * torch.sigmoid(tau * (r - 1.0)) * A
            elif loss_type == "vespo":
                loss = -phi * A * logp[i, t]
            if beta:
                d = ref[i, t] - logp[i, t]
                kl = torch.exp(d) - d - 1.0
                if bias_correction:
                    kl = kl * r
                loss = loss + beta * kl
            losses.append(loss)
        rows.append(losses)
    n_seq = B if num_sequences is None else num_sequences
    total = sum((x for row in rows for x in row), torch.zeros((), dtype=torch.float64))
    count = sum(len(row) for row in rows)
    if loss_type in ("grpo", "sapo"):
        per_seq = [sum(row, torch.zeros((), dtype=torch.float64)) / max(len(row), 1) for row in rows]
        return sum(per_seq) / n_seq
    if loss_type == "bnpo":
        return total / max(count, 1)
    if loss_type == "dr_grpo":
        return total / (n_seq * (L if max_completion_length is None else max_completion_length))
    if loss_type in ("dapo", "cispo", "vespo"):
        return total / max(count if num_tokens is None else num_tokens, 1)
    if loss_type == "luspo":
        return total / n_seq
    raise AssertionError(loss_type)


def implementation_loss(loss_type, logp, old, adv, mask, *, beta=0.0, ref=None, counts=None, **kw):
    cfg = ObjectiveConfig(loss_type=loss_type, dual_clip_c=None, kl_coef=beta, **kw)
    loss, _ = policy_loss(logp, old, adv, mask, cfg, ref, **(counts or {}))
    return loss


def _options(loss_type):
    if loss_type == "cispo":
        return {"clip_eps_high": 1.3}  # an absolute cap that binds on some tokens
    return {"clip_eps": 0.2, "clip_eps_high": 0.28}


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("kl", ["none", "k3", "k3_bias_corrected"])
def test_loss_and_gradient_match_the_reference(loss_type, level, kl):
    if loss_type == "vespo" and level == "sequence":
        with pytest.raises(ValueError, match="weighs whole sequences itself"):
            ObjectiveConfig(loss_type="vespo", importance_sampling_level="sequence")
        return
    for seed in range(3):
        logp, old, ref, adv, mask = make_inputs(seed)
        opts = _options(loss_type)
        beta = 0.0 if kl == "none" else 0.05
        bias = kl == "k3_bias_corrected"
        got = implementation_loss(
            loss_type,
            logp,
            old,
            adv,
            mask,
            beta=beta,
            ref=ref,
            importance_sampling_level=level,
            kl_bias_correction=bias,
            **opts,
        )
        want = reference_loss(
            loss_type,
            logp,
            old,
            adv,
            mask,
            level=level,
            eps_low=opts.get("clip_eps", 0.2),
            eps_high=opts["clip_eps_high"],
            beta=beta,
            ref=ref,
            bias_correction=bias,
        )
        assert got.item() == pytest.approx(want.item(), rel=1e-12, abs=1e-14)
        (g_got,) = torch.autograd.grad(got, logp)
        (g_want,) = torch.autograd.grad(want, logp)
        assert torch.allclose(g_got, g_want, rtol=1e-10, atol=1e-14)
        assert torch.equal(g_got[~mask], torch.zeros_like(g_got[~mask]))


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_global_counts_match_the_reference(loss_type):
    logp, old, ref, adv, mask = make_inputs(5)
    counts = {"num_tokens": 37, "num_sequences": 11, "max_completion_length": 13}
    got = implementation_loss(loss_type, logp, old, adv, mask, counts=counts, **_options(loss_type))
    opts = _options(loss_type)
    want = reference_loss(
        loss_type, logp, old, adv, mask, eps_low=opts.get("clip_eps", 0.2), eps_high=opts["clip_eps_high"], **counts
    )
    assert got.item() == pytest.approx(want.item(), rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("loss_type", CLIP)
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_delta_caps_the_unclipped_ratio(loss_type, level):
    logp, old, _, adv, mask = make_inputs(7)
    kw = dict(clip_eps=0.2, clip_eps_high=0.28, importance_sampling_level=level)
    got = implementation_loss(loss_type, logp, old, adv, mask, delta=1.1, **kw)
    want = reference_loss(loss_type, logp, old, adv, mask, level=level, eps_high=0.28, delta=1.1)
    no_delta = implementation_loss(loss_type, logp, old, adv, mask, **kw)
    assert got.item() == pytest.approx(want.item(), rel=1e-12, abs=1e-14)
    assert got.item() != pytest.approx(no_delta.item(), rel=1e-9)  # 1.1 binds for these inputs
    (g_got,) = torch.autograd.grad(got, logp)
    (g_want,) = torch.autograd.grad(want, logp)
    assert torch.allclose(g_got, g_want, rtol=1e-10, atol=1e-14)


def test_sequence_ratio_is_exp_of_the_masked_mean_with_length_at_least_one():
    logp, old, _, _, mask = make_inputs(3)
    logp = logp.detach()
    r = importance_weights(logp, old, mask, "sequence")
    assert r.shape == (logp.shape[0], 1)
    for i in range(logp.shape[0]):
        active = [t for t in range(logp.shape[1]) if mask[i, t]]
        mean = sum(float(logp[i, t] - old[i, t]) for t in active) / max(len(active), 1)
        assert r[i, 0].item() == pytest.approx(math.exp(mean), rel=1e-12)
    assert r[1, 0].item() == 1.0  # the empty row: exp(0 / 1)


def test_empty_sequences_count_as_zero_and_nothing_is_nan():
    vals = torch.ones(2, 3, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    expect = {"grpo": 0.5, "sapo": 0.5, "bnpo": 1.0, "dapo": 1.0, "cispo": 1.0, "dr_grpo": 2 / 6, "luspo": 1.0}
    for loss_type, value in expect.items():
        assert normalise(vals, mask, loss_type).item() == pytest.approx(value)
    empty = torch.zeros(4, 3, dtype=torch.bool)
    for loss_type in LOSS_TYPES:
        logp, old, ref, adv, _ = make_inputs(0, B=4, L=3)
        loss = implementation_loss(loss_type, logp, old, adv, empty, beta=0.1, ref=ref, **_options(loss_type))
        assert loss.item() == 0.0
        (g,) = torch.autograd.grad(loss, logp)
        assert torch.equal(g, torch.zeros_like(g))


def test_sapo_zero_advantage_takes_tau_neg():
    ratio = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    zero = torch.zeros(3, dtype=torch.float64)
    nan = float("nan")
    # A = 0 must read tau_neg: a NaN placed there shows up, one placed in tau_pos does not
    assert torch.isnan(sapo_token_losses(ratio, zero, tau_pos=1.0, tau_neg=nan)).all()
    assert torch.equal(sapo_token_losses(ratio, zero, tau_pos=nan, tau_neg=1.05), torch.zeros(3, dtype=torch.float64))
    pos = sapo_token_losses(ratio, torch.ones(3, dtype=torch.float64), tau_pos=2.0, tau_neg=nan)
    assert torch.allclose(pos, -(4 / 2.0) * torch.sigmoid(2.0 * (ratio - 1)))


def test_cispo_cap_is_absolute_and_detached():
    old = torch.zeros(1, 2, dtype=torch.float64)
    logp = torch.log(torch.tensor([[2.0, 0.5]], dtype=torch.float64)).requires_grad_(True)
    adv = torch.ones(1, dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, _, capped, _ = token_losses("cispo", logp, old, adv, mask, eps_high=1.5)
    # r = 2 is capped at 1.5 (not at 1 + 1.5); r = 0.5 passes; the weight carries no gradient
    assert torch.allclose(loss, -torch.tensor([[1.5, 0.5]], dtype=torch.float64) * logp)
    assert capped.tolist() == [[True, False]]
    (g,) = torch.autograd.grad(loss.sum(), logp)
    assert torch.allclose(g, -torch.tensor([[1.5, 0.5]], dtype=torch.float64))


def test_dr_grpo_denominator_is_constant():
    vals = torch.ones(2, 4, dtype=torch.float64)
    full = torch.ones(2, 4, dtype=torch.bool)
    short = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    assert normalise(vals, full, "dr_grpo").item() == pytest.approx(8 / 8)
    assert normalise(vals, short, "dr_grpo").item() == pytest.approx(3 / 8)  # not 3 / 3
    assert normalise(vals, short, "dr_grpo", max_completion_length=10).item() == pytest.approx(3 / 20)
    assert normalise(vals, short, "dr_grpo", num_sequences=4, max_completion_length=10).item() == pytest.approx(3 / 40)


def test_bnpo_equals_dapo_with_one_process_and_no_accumulation():
    logp, old, ref, adv, mask = make_inputs(11)
    b = implementation_loss("bnpo", logp, old, adv, mask, beta=0.1, ref=ref)
    d = implementation_loss("dapo", logp, old, adv, mask, beta=0.1, ref=ref)
    assert torch.equal(b, d)
    assert torch.equal(*(torch.autograd.grad(x, logp)[0] for x in (b, d)))
    # a global token count moves dapo only: bnpo is always the local mean
    counts = {"num_tokens": 3 * int(mask.sum())}
    b3 = implementation_loss("bnpo", logp, old, adv, mask, counts=counts)
    d3 = implementation_loss("dapo", logp, old, adv, mask, counts=counts)
    assert torch.equal(b3, implementation_loss("bnpo", logp, old, adv, mask))
    assert d3.item() == pytest.approx(implementation_loss("dapo", logp, old, adv, mask).item() / 3, rel=1e-12)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean"])
def test_default_configuration_is_bit_identical_to_the_pre_loss_type_code(agg):
    # float32 like training; the old objective was ppo_clip_token_losses + aggregate (+ β·aggregate(k3))
    torch.manual_seed(0)
    logp = (torch.randn(8, 9) * 0.3 - 1).requires_grad_(True)
    old = logp.detach() + 0.2 * torch.randn(8, 9)
    ref = logp.detach() + 0.2 * torch.randn(8, 9)
    mask = torch.rand(8, 9) > 0.3
    mask[:, 0] = True
    adv = torch.randn(8)
    tok, *_ = ppo_clip_token_losses(logp, old, adv, 0.2, None, 3.0)
    old_pg = aggregate(tok, mask, agg)
    old_kl = aggregate(k3_kl(logp, ref), mask, agg)
    pg, kl, _ = policy_loss_terms(logp, old, adv, mask, ObjectiveConfig(agg=agg), ref)
    assert torch.equal(pg, old_pg) and torch.equal(kl, old_kl)
    g_old = torch.autograd.grad(old_pg + 0.001 * old_kl, logp)[0]
    g_new = torch.autograd.grad(pg + 0.001 * kl, logp)[0]
    assert torch.equal(g_old, g_new)


def test_config_contradictions_and_silent_options_are_refused():
    assert ObjectiveConfig().loss_type == "dapo" and ObjectiveConfig(agg="seq-mean").loss_type == "grpo"
    assert ObjectiveConfig(agg="seq-mean", loss_type="grpo").loss_type == "grpo"
    for bad in (
        dict(agg="seq-mean", loss_type="dapo"),
        dict(loss_type="vespo", importance_sampling_level="sequence"),
        dict(loss_type="cispo"),  # no explicit absolute cap
        dict(loss_type="sapo", delta=2.0),
        dict(loss_type="cispo", clip_eps_high=5.0, delta=2.0),
        dict(importance_sampling_level="seq"),
    ):
        with pytest.raises(ValueError):
            ObjectiveConfig(**bad)
    # the plugin config maps its keys; auto keeps the older keys' meaning
    for cls, cfg_cls in ((GRPO, GRPOConfig), (SoftGRPO, SoftGRPOConfig)):
        p = cls()
        assert p.objective_config().loss_type == "dapo" and p.advantage_scale() == "group"
        p.config = cfg_cls(agg="seq-mean", scale_advantages=False)
        assert p.objective_config().loss_type == "grpo" and p.advantage_scale() == "none"
        p.config = cfg_cls(loss_type="cispo", clip_eps_high=5.0, delta=0.0, importance_sampling_level="sequence")
        o = p.objective_config()
        assert (o.loss_type, o.clip_eps_high, o.delta, o.importance_sampling_level) == ("cispo", 5.0, None, "sequence")
        p.config = cfg_cls(scale_rewards="batch")
        assert p.advantage_scale() == "batch"
        p.config = cfg_cls(scale_rewards="batch", scale_advantages=False)
        with pytest.raises(ValueError):
            p.advantage_scale()
        p.config = cfg_cls(agg="seq-mean", loss_type="sapo")
        with pytest.raises(ValueError):
            p.objective_config()
        assert p.max_completion_length() == p.config.think_cap + 1 + p.config.answer_cap


def reference_advantages(rewards, G, scale, eps):
    r = [float(x) for x in rewards]
    groups = [r[k : k + G] for k in range(0, len(r), G)]
    batch_std = statistics.stdev(r)
    out = []
    for grp in groups:
        mean = sum(grp) / len(grp)
        std = statistics.stdev(grp)
        for x in grp:
            if max(grp) == min(grp):
                out.append(0.0)  # hookmix forces equal-reward groups to exactly 0 (TRL: rounding / eps)
            elif scale == "group":
                out.append((x - mean) / (std + eps))
            elif scale == "batch":
                out.append((x - mean) / (batch_std + eps))
            else:
                out.append(x - mean)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_scale_rewards_match_the_reference(scale):
    g = torch.Generator().manual_seed(2)
    rewards = torch.rand(24, generator=g, dtype=torch.float64) * 3
    rewards[8:12] = 0.5  # one group without spread
    got = group_advantages(rewards, group_size=4, eps=1e-4, scale=scale)
    want = reference_advantages(rewards, 4, scale, 1e-4)
    assert torch.allclose(got.double(), want, rtol=1e-6, atol=1e-6)
    assert torch.equal(got[8:12], torch.zeros(4))
    # the booleans keep their meaning: True is "group", False is "none"
    legacy = {"group": True, "none": False}.get(scale)
    if legacy is not None:
        assert torch.equal(group_advantages(rewards, group_size=4, eps=1e-4, scale=legacy), got)
    with pytest.raises(ValueError):
        group_advantages(rewards, group_size=4, scale="global")


RL = ["countdown", "tiny_policy", "countdown_reward", "format_reward", "adamw"]
RL_CFG = {
    "countdown": {"mode": "rl", "batch_size": 4, "val_problems": 0},
    "tiny_policy": {"d_model": 32, "n_layers": 1},
}
CAPS = {"group_size": 4, "think_cap": 6, "answer_cap": 6}


@pytest.mark.parametrize(
    "arm,options",
    [
        ("grpo", {"loss_type": "cispo", "clip_eps_high": 5.0, "importance_sampling_level": "sequence"}),
        ("soft_grpo", {"loss_type": "dr_grpo", "delta": 2.0, "scale_rewards": "batch", "kl_bias_correction": True}),
        ("soft_grpo", {"loss_type": "sapo", "scale_rewards": "none", "kl_coef": 0.0}),
        ("grpo", {"loss_type": "vespo", "vespo_k_pos": 1.5}),
        ("soft_grpo", {"loss_type": "vespo", "minibatches": 2}),
    ],
)
def test_new_options_train_through_the_plugins(arm, options):
    from engine.testing import train

    cfg = {**RL_CFG, arm: {**CAPS, **options}, "adamw": {"lr": 1e-3}}
    res = train([*RL, arm], config=cfg, steps=2, threads=1, log_interval=1)
    recs = [m for m in res.metrics if "train/rl/ratio_max" in m]
    assert len(recs) == 2 and all(v == v for m in recs for v in m.values() if isinstance(v, float))  # no NaN
    assert recs[0]["train/rl/ratio_max"] == 1.0  # θ_old is recomputed right after sampling
    assert ("train/rl/kl" in recs[0]) == (options.get("kl_coef", 0.001) > 0)


def test_contradicting_or_incomplete_options_are_bad_input():
    from engine import BadInput
    from engine.testing import train

    for options, match in (
        ({"loss_type": "cispo"}, "cispo"),
        ({"agg": "seq-mean", "loss_type": "dapo"}, "seq-mean"),
        ({"scale_advantages": False, "scale_rewards": "batch"}, "scale_advantages"),
        ({"loss_type": "sapo", "delta": 2.0}, "delta"),
        ({"loss_type": "vespo", "importance_sampling_level": "sequence"}, "vespo"),
    ):
        with pytest.raises(BadInput, match=match):
            train([*RL, "grpo"], config={**RL_CFG, "grpo": {**CAPS, **options}}, steps=1)


def test_vespo_weight_is_one_at_ratio_one_and_follows_the_advantage_sign():
    logp = torch.zeros(3, 4, dtype=torch.float64)
    mask = torch.ones(3, 4, dtype=torch.bool)
    old = logp.clone()
    old[1] -= 0.1  # Σ log-ratio 0.4: w = e^0.4
    old[2] -= 0.1
    adv = torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    phi = vespo_weights(logp, old, mask, adv)
    w = math.exp(0.4)
    assert phi[0].item() == pytest.approx(1.0, rel=1e-12)  # φ(1) = e^λ·1·e^-λ
    assert phi[1].item() == pytest.approx(math.exp(3.0) * w**2 * math.exp(-3.0 * w), rel=1e-12)  # k 2, λ 3
    assert phi[2].item() == pytest.approx(math.exp(2.0) * w**3 * math.exp(-2.0 * w), rel=1e-12)  # k 3, λ 2
    lp = logp.clone().requires_grad_(True)
    loss, _ = vespo_token_losses(lp, old, adv, mask)
    (g,) = torch.autograd.grad(loss.sum(), lp)
    # the weight is a constant: d(−φ·A·ℓ)/dℓ = −φ·A per token
    torch.testing.assert_close(g, (-phi * adv.unsqueeze(-1)).expand_as(g), rtol=1e-12, atol=0)
