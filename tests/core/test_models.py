import math

import pytest
import torch
import torch.nn.functional as F

from plugins.core.models import CNN1D, GPT, MLP

torch.set_num_threads(1)


def tiny_gpt(**kw):
    args = dict(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=32)
    args.update(kw)
    return GPT(**args)


def capture(model, name):
    """Register a forward hook on a named submodule; return the list it fills."""
    seen = []
    model.get_submodule(name).register_forward_hook(lambda mod, inp, out: seen.append(out))
    return seen


# -- GPT ----------------------------------------------------------------------


def test_gpt_shapes():
    torch.manual_seed(0)
    model = tiny_gpt()
    idx = torch.randint(11, (3, 16))
    assert model(idx).shape == (3, 16, 11)
    assert model(idx[:, :5]).shape == (3, 5, 11)  # shorter than block_size is fine


def test_gpt_rejects_too_long_sequence():
    with pytest.raises(ValueError, match="block_size"):
        tiny_gpt()(torch.zeros(1, 17, dtype=torch.long))


def test_gpt_is_causal():
    torch.manual_seed(0)
    model = tiny_gpt(dropout=0.1).eval()  # eval: dropout off, outputs deterministic
    idx = torch.randint(11, (2, 16))
    t = 9
    changed = idx.clone()
    changed[:, t] = (changed[:, t] + 1) % 11
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :t], b[:, :t])  # the past does not see the future
    assert not torch.allclose(a[:, t:], b[:, t:])  # but position t onward does see it


def test_gpt_weight_tying():
    tied = tiny_gpt()
    assert tied.lm_head.weight is tied.tok_emb.weight
    untied = tiny_gpt(tie_weights=False)
    assert untied.lm_head.weight is not untied.tok_emb.weight
    n_tied = sum(p.numel() for p in tied.parameters())
    n_untied = sum(p.numel() for p in untied.parameters())
    assert n_untied - n_tied == 11 * 32


def test_gpt_init():
    torch.manual_seed(0)
    model = GPT(vocab_size=50, n_layer=4, n_embd=128)
    proj = torch.cat([b.attn.proj.weight.flatten() for b in model.blocks])
    assert proj.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.05)
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    # small init -> near-uniform predictions: loss on random targets close to log(vocab).
    # (Targets must not equal the inputs: with tied weights each position's logits
    # favour its own input token from the start.)
    idx, targets = torch.randint(50, (4, 32)), torch.randint(50, (4, 32))
    loss = F.cross_entropy(model(idx).flatten(0, 1), targets.flatten())
    assert loss.item() == pytest.approx(math.log(50), abs=0.15)


def test_gpt_features_hookable():
    model = tiny_gpt()
    block_out, final = capture(model, "blocks.1"), capture(model, "ln_f")
    model(torch.zeros(2, 7, dtype=torch.long))
    assert block_out[0].shape == (2, 7, 32)
    assert final[0].shape == (2, 7, 32)


def test_gpt_learns():
    torch.manual_seed(0)
    model = tiny_gpt(n_layer=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    seq = torch.arange(17).remainder(11).unsqueeze(0)  # 0 1 2 ... 10 0 1 ...: next token is predictable
    x, y = seq[:, :-1], seq[:, 1:]
    for _ in range(40):
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5


# -- MLP ----------------------------------------------------------------------


def test_mlp_shapes_and_features():
    model = MLP(40, 10, hidden=(64, 32), activation="gelu")
    feats = capture(model, "features")
    last_act = capture(model, "features.act1")
    assert model(torch.randn(5, 40)).shape == (5, 10)
    assert feats[0].shape == (5, 32)
    assert torch.equal(feats[0], last_act[0])  # "features" output is the last hidden activation


def test_mlp_without_hidden_layers_is_linear():
    model = MLP(40, 10, hidden=())
    x = torch.randn(5, 40)
    torch.testing.assert_close(model(x), model.head(x))


def test_mlp_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation"):
        MLP(40, 10, activation="swishy")


# -- CNN1D --------------------------------------------------------------------


def test_cnn1d_reference_shapes():
    model = CNN1D()
    feats = capture(model, "features")
    assert model(torch.randn(4, 40)).shape == (4, 10)
    assert feats[0].shape == (4, 25 * 5)  # 40 -> 19 -> 10 -> 5 positions, 25 channels
    assert model.head.in_features == 125
    assert [m.kernel_size[0] for m in model.features if isinstance(m, torch.nn.Conv1d)] == [5, 3, 3]


def test_cnn1d_other_sizes():
    model = CNN1D(in_len=100, num_classes=3, channels=8)
    assert model(torch.randn(2, 100)).shape == (2, 3)
    with pytest.raises(ValueError, match="too short"):
        CNN1D(in_len=2)
