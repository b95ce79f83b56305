"""The CIFAR-100 data and model plugins: ``cifar100`` (official python archive) and ``resnet``.

The CRD / mdistiller CIFAR-100 protocol (docs/distillation.md), for users with a GPU and the official archive.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch

from engine import BadInput, Plugin, field, hookimpl
from engine.validators import int_range


class CIFAR100Batches:
    """CIFAR-100 batches: random crop + flip from the engine's generator for training; the test split for val."""

    def __init__(self, path: str, batch_size: int, eval_batch_size: int, augment: bool, padding: int) -> None:
        from plugins.cifar.cifar100 import NUM_CLASSES, load_cifar100

        train_x, train_y = load_cifar100(path, "train")
        test_x, test_y = load_cifar100(path, "test")
        if not 1 <= batch_size <= len(train_y):
            raise ValueError(f"batch_size must be between 1 and the {len(train_y)} training images")
        self.train_x, self.train_y = torch.from_numpy(train_x), torch.from_numpy(train_y)
        self.test_x, self.test_y = torch.from_numpy(test_x), torch.from_numpy(test_y)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.augment, self.padding = augment, padding
        self.info = {"task": "classification", "num_classes": NUM_CLASSES, "channels": 3, "image_size": 32}

    def train_batch(self, generator: torch.Generator) -> dict:
        from plugins.cifar.cifar100 import normalize_cifar100, random_crop_flip

        idx = torch.randperm(len(self.train_y), generator=generator)[: self.batch_size]
        images = self.train_x[idx]
        if self.augment:
            images = random_crop_flip(images, generator, self.padding)
        return {"input": normalize_cifar100(images), "target": self.train_y[idx]}

    def val_batches(self):
        from plugins.cifar.cifar100 import normalize_cifar100

        for start in range(0, len(self.test_y), self.eval_batch_size):
            end = start + self.eval_batch_size
            yield {"input": normalize_cifar100(self.test_x[start:end]), "target": self.test_y[start:end].clone()}


@attrs.define
class CIFAR100Config:
    path: str = field("", "fsspec URL of cifar-100-python.tar.gz or of its extracted cifar-100-python/ folder")
    batch_size: int = field(64, "training images per micro-batch (spec §11.1: 64)", validator=int_range(1, 50000))
    eval_batch_size: int = field(500, "test images per evaluation batch", validator=int_range(1, 10000))
    augment: bool = field(True, "RandomCrop(32, padding) + horizontal flip on training batches (spec §11.1)")
    padding: int = field(4, "crop padding in pixels", validator=int_range(0, 32))


class CIFAR100Data(Plugin):
    """CIFAR-100 from the official python archive (restricted unpickler); val = the 10,000-image test split."""

    name = "cifar100"
    Config = CIFAR100Config

    @hookimpl
    def hookmix_data(self, state):
        from plugins.cifar.cifar100 import UnsafePickleError

        c = self.config
        if not c.path:
            raise BadInput("plugins.cifar100.path is empty; set it to cifar-100-python.tar.gz (any fsspec URL)")
        try:
            return CIFAR100Batches(c.path, c.batch_size, c.eval_batch_size, c.augment, c.padding)
        except FileNotFoundError as exc:
            raise BadInput(f"plugins.cifar100.path: {exc}; download the python version of CIFAR-100") from None
        except UnsafePickleError as exc:
            raise BadInput(f"plugins.cifar100.path: {exc}") from None
        except (ValueError, OSError, EOFError) as exc:
            message = str(exc).splitlines()[0]
            fix = "" if "; " in message else "; check the archive or download it again"  # some name their fix
            raise BadInput(f"plugins.cifar100: {message}{fix}") from None


@attrs.define
class ResNetConfig:
    arch: Literal["resnet8x4", "resnet32x4"] = field(
        "resnet8x4", "resnet8x4 (student, ~1.2M parameters) or resnet32x4 (teacher, ~7.4M)"
    )


class ResNet(Plugin):
    """CIFAR ResNets of the CRD / mdistiller family (resnet8x4, resnet32x4); penultimate feature: `flatten`."""

    name = "resnet"
    Config = ResNetConfig

    @hookimpl
    def hookmix_model(self, state):
        from plugins.cifar import resnet

        info = getattr(state.data, "info", {}) or {}
        if "num_classes" not in info or info.get("channels", 3) != 3:
            raise BadInput("resnet needs RGB image classification data (e.g. cifar100); enable a matching data plugin")
        return getattr(resnet, self.config.arch)(num_classes=info["num_classes"])
