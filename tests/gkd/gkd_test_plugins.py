"""Plugins for the GKD tests, importable by module name (the 2-rank workers load them as ``module:qualname``)."""

from __future__ import annotations

import copy

from engine import Plugin, hookimpl
from plugins.gkd.plugin import GKD


class Capture(Plugin):
    """Keeps every training micro-batch the step trained on, its outputs, and (first micro-batch of each step)
    a copy of the student and the frozen teacher as they were when the batch was sampled."""

    name = "capture"

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict] = []

    @hookimpl
    def hookmix_on_train_batch(self, batch, outputs, state):
        record = {
            "step": state.step + 1,
            "micro": state.micro,
            "input": batch["input"].detach().cpu().clone(),
            "target": batch["target"].detach().cpu().clone(),
            "logits": outputs["logits"].detach().cpu().double(),
            "teacher_logits": outputs["teacher_logits"].detach().cpu().double(),
            "reward": batch["reward"].detach().cpu().clone(),
            "problems": (batch["numbers"].cpu().clone(), batch["targets"].cpu().clone()),
        }
        if state.micro == 0 and len(self.seen) < 2:  # the weights before this step's update (sampling ran on them)
            record["student"] = copy.deepcopy(state.model).cpu()
            record["teacher"] = copy.deepcopy(state.frozen_modules["teacher"]).cpu()
        self.seen.append(record)


class LocalGKD(GKD):
    """The control of the 2-rank test: each rank's batchmean over its own tokens (what a port of the 1-process
    formula computes under DDP), instead of the step's global token count."""

    @staticmethod
    def _normaliser(batch):
        return float((batch["target"] >= 0).sum())
