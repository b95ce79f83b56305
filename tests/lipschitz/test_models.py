"""LipschitzGPT / LipschitzMLP: shapes, init, groups, and certified bound >= empirical (spec §9 check 10)."""

import math

import pytest
import torch

from plugins.lipschitz import spectral as sp
from plugins.lipschitz.bound import transformer_lipschitz_bound
from plugins.lipschitz.empirical import random_pair_ratio, rms_jacobian_norm, sequence_jacobian_norm
from plugins.lipschitz.models import LipschitzGPT, LipschitzMLP

torch.set_num_threads(1)

# torch.func.jvp loads forward-AD decompositions via the deprecated torch.jit.script (torch-internal)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

V, D, L, H, T = 11, 16, 2, 2, 8


def tiny_gpt(**kw):
    return LipschitzGPT(V, D, L, H, T, seed=0, **kw)


def randomize_(model, scale=3.0, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


def test_gpt_forward_shapes_and_zero_head_init():
    m = tiny_gpt()
    idx = torch.randint(0, V, (3, T))
    out = m(idx)
    assert out.shape == (3, T, V)
    assert torch.count_nonzero(out) == 0  # zero-initialised head -> zero logits
    assert m.certified_bound() == 0.0  # measured norms: the head is 0
    with pytest.raises(ValueError):
        m(torch.randint(0, V, (1, T + 1)))


def test_gpt_init_norms_and_groups():
    m = tiny_gpt()
    groups = m.weight_groups()
    assert set(groups) == {"hidden", "embedding", "head"}
    listed = [p for ps in groups.values() for _, p in ps]
    assert len(listed) == len(list(m.parameters()))
    assert {id(p) for p in listed} == {id(p) for p in m.parameters()}
    named = dict(m.named_parameters())
    for _, ps in groups.items():
        for name, p in ps:
            assert named[name] is p
    # hidden: msign(Gaussian)*s -> every RMS->RMS singular value = 1; output-side zero
    for name, p in groups["hidden"]:
        sv = torch.linalg.svdvals(p.double()) / sp.rms_scale(p)
        if name.endswith(("attn.o.weight", "mlp.w_out.weight")):
            assert torch.count_nonzero(p) == 0
        else:
            assert torch.allclose(sv, torch.ones_like(sv), atol=1e-5), name
    rms = m.embed.weight.pow(2).mean(1).sqrt()
    assert torch.allclose(rms, torch.ones(V), atol=1e-6)  # RMS exactly 1 at init
    norms = m.group_max_norms()
    assert norms["hidden"] == pytest.approx(1.0, abs=1e-5) and norms["head"] == 0.0
    assert norms["embedding"] == pytest.approx(1.0, abs=1e-6)


def test_gpt_causal_and_impls_agree():
    m = tiny_gpt(zero_init_output=False)
    m_math = tiny_gpt(zero_init_output=False, attn_impl="math")
    m_math.load_state_dict(m.state_dict())
    idx = torch.randint(0, V, (2, T))
    out = m(idx)
    torch.testing.assert_close(out, m_math(idx), rtol=1e-5, atol=1e-6)
    idx2 = idx.clone()
    idx2[:, -1] = (idx2[:, -1] + 1) % V
    out2 = m(idx2)
    torch.testing.assert_close(out[:, :-1], out2[:, :-1])  # future tokens do not leak
    assert not torch.allclose(out[:, -1], out2[:, -1])


def test_projection_and_embedding_constraint():
    m = tiny_gpt()
    randomize_(m)
    assert m.group_max_norms()["embedding"] > 2.0
    m.project_("svd_clip", w_max=0.7, head_w_max=1.3, emb_max_rms=0.5)
    norms = m.group_max_norms()
    assert norms["hidden"] <= 0.7 * (1 + 1e-5)
    assert norms["head"] <= 1.3 * (1 + 1e-5)
    assert norms["embedding"] <= 0.5 * (1 + 1e-6)
    # the projection reaches rows that are never looked up (unlike nn.Embedding(max_norm=...))
    assert (m.embed.weight.pow(2).mean(1).sqrt() <= 0.5 + 1e-6).all()
    # bound from measured norms equals bound.py applied to the measured norms
    K = m.certified_bound()
    K_ref = transformer_lipschitz_bound(m.block_norms(), norms["embedding"], norms["head"], m.softmax_scale)
    assert K == pytest.approx(K_ref, rel=1e-12)
    assert m.certified_bound(include_embedding=False) == pytest.approx(K / norms["embedding"], rel=1e-12)


@pytest.mark.parametrize("w_max, softmax_scale", [(1.0, 1.0), (2.0, 2.0)])
def test_gpt_certified_bound_dominates_empirical(w_max, softmax_scale):
    torch.manual_seed(0)
    m = LipschitzGPT(V, D, L, H, T, softmax_scale=softmax_scale, attn_impl="math", seed=0).double()
    randomize_(m, seed=2)
    m.project_("svd_clip", w_max=w_max)
    K = m.certified_bound(include_embedding=False)  # w.r.t. the embedded sequence
    idx = torch.randint(0, V, (1, T), generator=torch.Generator().manual_seed(3))
    x = m.embed(idx).detach()
    fn = m.forward_embedded
    est = sequence_jacobian_norm(fn, x, tokens=[T // 2, T - 1], iters=12)

    def proj(z):  # stay in the domain the bound assumes: token RMS <= 1
        r = z.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1.0)
        return z / r

    pairs = random_pair_ratio(fn, x, n_pairs=64, radius=0.5, project=proj)
    assert 0 < pairs <= K and 0 < est <= K
    if w_max == 1.0:  # near-tight regime: the estimate is a sizeable fraction of the bound
        assert est >= 0.25 * K


def test_sequence_estimator_on_known_maps():
    # per-token linear map: the max-over-tokens RMS norm equals its RMS->RMS norm
    W = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x = torch.randn(1, 6, 4, dtype=torch.float64)
    est = sequence_jacobian_norm(lambda z: z @ W.T, x, iters=10)
    assert est == pytest.approx(sp.rms_to_rms_norm(W), rel=1e-6)
    # causal prefix sum over tokens: the last token sums T inputs -> norm T
    est2 = sequence_jacobian_norm(lambda z: z.cumsum(1), x, iters=5)
    assert est2 == pytest.approx(6.0, rel=1e-9)


def test_mlp_shapes_params_bound_and_empirical():
    cifar = LipschitzMLP(3072, 256, 10, n_hidden_layers=2)
    assert sum(p.numel() for p in cifar.parameters()) == 854_528
    assert cifar(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    groups = cifar.weight_groups()
    assert [n for n, _ in groups["hidden"]] == ["layers.0.weight", "layers.1.weight"]
    assert [n for n, _ in groups["head"]] == ["layers.2.weight"]

    m = LipschitzMLP(24, 16, 6, n_hidden_layers=3, zero_init="none", seed=0).double()
    randomize_(m, seed=5)
    m.project_("hard_cap", w_max=1.5)
    norms = m.layer_norms()
    assert max(norms) <= 1.5 * 1.011
    K = m.certified_bound()
    assert K == pytest.approx(math.prod(norms), rel=1e-12)
    x = torch.randn(1, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    jac = rms_jacobian_norm(m, x, iters=40)
    pairs = random_pair_ratio(m, x, n_pairs=128, radius=1.0, norm=lambda y: y.pow(2).mean(-1).sqrt())
    assert 0 < pairs <= K and 0 < jac <= K
    # l2 conversion of the spec: K_l2 = K_rms * sqrt(out/in)
    J = torch.autograd.functional.jacobian(m, x).reshape(6, 24)
    assert torch.linalg.matrix_norm(J, 2).item() <= K * math.sqrt(6 / 24) * (1 + 1e-9)
    assert jac == pytest.approx(torch.linalg.matrix_norm(J, 2).item() * math.sqrt(24 / 6), rel=1e-6)


def test_mlp_zero_first_layer_is_dead():
    # why LipschitzMLP zero-inits the *last* layer by default (spec §3 item 6 says the first):
    # with ReLU'(0) = 0 a zero first layer gives exactly zero gradients everywhere.
    x, y = torch.randn(8, 12), torch.randint(0, 3, (8,))
    dead = LipschitzMLP(12, 16, 3, zero_init="first", seed=0)
    torch.nn.functional.cross_entropy(dead(x), y).backward()
    assert all(torch.count_nonzero(p.grad) == 0 for p in dead.parameters())
    live = LipschitzMLP(12, 16, 3, zero_init="last", seed=0)
    torch.nn.functional.cross_entropy(live(x), y).backward()
    assert torch.count_nonzero(live.layers[-1].weight.grad) > 0
