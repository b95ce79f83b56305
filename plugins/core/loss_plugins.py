"""The core loss plugin ``cross_entropy``: the supervised term ``ce`` on the model's raw logits."""

from __future__ import annotations

import attrs
import torch.nn.functional as F

from engine import Plugin, field, hookimpl
from engine.validators import finite_non_negative, in_range


@attrs.define
class CrossEntropyConfig:
    weight: float = field(1.0, "weight of the term", validator=finite_non_negative)
    label_smoothing: float = field(0.0, "label smoothing", validator=in_range(0, 1))


class CrossEntropy(Plugin):
    """Cross-entropy on the model's raw logits: the supervised loss term `ce`."""

    name = "cross_entropy"
    Config = CrossEntropyConfig

    @hookimpl
    def hookmix_loss_terms(self, batch, outputs, state):
        logits = state.logits(outputs["logits"], role="student", consumer=self.name, kind="supervised")
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            batch["target"].reshape(-1),
            label_smoothing=self.config.label_smoothing,
        )
        return {"ce": loss if self.config.weight == 1.0 else self.config.weight * loss}  # no extra op at weight 1
