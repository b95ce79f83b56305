"""CIFAR ResNets resnet8x4 / resnet32x4: shapes, structure, feature hooks."""

import pytest
import torch

from plugins.cifar.resnet import BasicBlock, CifarResNet, resnet8x4, resnet32x4


@pytest.mark.parametrize("factory,blocks,params_m", [(resnet8x4, 3, 1.23), (resnet32x4, 15, 7.43)])
def test_structure_and_forward(factory, blocks, params_m):
    torch.manual_seed(0)
    model = factory().eval()
    assert sum(isinstance(m, BasicBlock) for m in model.modules()) == blocks
    n_params = sum(p.numel() for p in model.parameters())
    assert round(n_params / 1e6, 2) == params_m  # CRD: resnet8x4 1.23 M, resnet32x4 7.43 M
    assert model.conv1.out_channels == 32
    assert [stage[0].conv1.out_channels for stage in (model.layer1, model.layer2, model.layer3)] == [64, 128, 256]

    captured = {}
    model.fc.register_forward_hook(lambda mod, inp, out: captured.__setitem__("penultimate", inp[0]))
    model.layer2.register_forward_hook(lambda mod, inp, out: captured.__setitem__("layer2", out))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        feat = model.features(x)
    assert out.shape == (2, 100) and torch.isfinite(out).all()
    assert captured["penultimate"].shape == (2, 256) and torch.allclose(captured["penultimate"], feat)
    assert captured["layer2"].shape == (2, 128, 16, 16)
    assert torch.allclose(model.fc(feat), out)


def test_backward_and_num_classes():
    model = resnet8x4(num_classes=10)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_invalid_depth():
    with pytest.raises(ValueError):
        CifarResNet(10)
