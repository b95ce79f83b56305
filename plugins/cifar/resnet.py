"""CIFAR ResNets of the CRD / mdistiller family: ``resnet8x4`` (student) and ``resnet32x4`` (teacher).

Layout (depth = 6n + 2, basic blocks, widths [32, 64, 128, 256] for the "x4" variants):
3x3 conv 3->32 + BN + ReLU, three stages of n basic blocks with 64 / 128 / 256 channels (strides 1, 2, 2),
global average pool, linear classifier. resnet8x4: n = 1 (~1.2 M parameters); resnet32x4: n = 5 (~7.4 M).
The first block of every stage has a 1x1 conv + BN projection shortcut (the stage-1 block widens 32 -> 64).

Named submodules for hooks: ``conv1``, ``bn1``, ``relu``, ``layer1``..``layer3``, ``pool``, ``flatten``,
``fc``. The penultimate feature (N, 256) is the output of ``flatten`` (= the input of ``fc``); ``features(x)``
returns it directly. Stage outputs (feature maps) are the outputs of ``layer1``..``layer3``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

__all__ = ["BasicBlock", "CifarResNet", "resnet8x4", "resnet32x4"]


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with an identity or 1x1-projection shortcut, ReLU after the sum."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet with ``(depth - 2) / 6`` basic blocks per stage and stem/stage widths ``widths``."""

    def __init__(self, depth: int, widths: Sequence[int] = (32, 64, 128, 256), num_classes: int = 100) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"depth must be 6n + 2 with n >= 1, got {depth}")
        if len(widths) != 4:
            raise ValueError("widths must list the stem width and the three stage widths")
        blocks = (depth - 2) // 6
        self.depth, self.widths, self.num_classes = depth, tuple(widths), num_classes
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._stage(widths[0], widths[1], blocks, stride=1)
        self.layer2 = self._stage(widths[1], widths[2], blocks, stride=2)
        self.layer3 = self._stage(widths[2], widths[3], blocks, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(widths[3], num_classes)
        self.feature_dim = widths[3]
        self._init_weights()

    @staticmethod
    def _stage(in_channels: int, channels: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_channels, channels, stride)]
        layers += [BasicBlock(channels, channels, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate (pooled) feature, shape (N, widths[-1])."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.flatten(self.pool(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def resnet8x4(num_classes: int = 100) -> CifarResNet:
    """CRD's ``resnet8x4``: depth 8 (1 block per stage), widths [32, 64, 128, 256]."""
    return CifarResNet(8, (32, 64, 128, 256), num_classes)


def resnet32x4(num_classes: int = 100) -> CifarResNet:
    """CRD's ``resnet32x4``: depth 32 (5 blocks per stage), widths [32, 64, 128, 256]."""
    return CifarResNet(32, (32, 64, 128, 256), num_classes)
