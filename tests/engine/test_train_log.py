"""The train log (engine/train_log.py): loss columns, varying terms, the non-finite check, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from engine.errors import TrainingFailure
from engine.train_log import TrainLog


def _record(log: TrainLog, step: int, **terms: float) -> None:
    """What the training step appends for one micro-batch."""
    values = tuple(torch.tensor(v) for v in terms.values())
    total = (torch.tensor(sum(terms.values())),) if len(terms) > 1 else ()
    log.terms.append((step, tuple(terms), values + total))


def test_the_same_terms_every_micro_batch_are_read_as_columns_loss_metrics_first():
    log = TrainLog()
    log.log("grad_norm", torch.tensor(4.0))
    for step, (ce, kd) in enumerate([(1.0, 0.5), (3.0, 1.5)], 1):
        _record(log, step, ce=ce, kd=kd)
    log.log("warmup", 0.25)  # a Python number: kept as a float
    means = log.pop_means()
    assert means == {"train/loss/ce": 2.0, "train/loss/kd": 1.0, "train/loss": 3.0, "grad_norm": 4.0, "warmup": 0.25}
    assert list(means) == ["train/loss/ce", "train/loss/kd", "train/loss", "grad_norm", "warmup"]
    assert log.pop_means() == {} and log.terms == []


def test_terms_that_come_and_go_are_averaged_over_the_micro_batches_that_had_them():
    log = TrainLog()
    _record(log, 1, ce=1.0)
    _record(log, 2, ce=3.0, kd=1.0)
    _record(log, 3, ce=5.0)
    assert log.pop_means() == {"train/loss/ce": 3.0, "train/loss": (1.0 + 4.0 + 5.0) / 3, "train/loss/kd": 1.0}


def test_the_first_non_finite_term_in_step_order_stops_the_run():
    log = TrainLog()
    _record(log, 1, ce=1.0, kd=0.5)
    _record(log, 2, ce=1.0, kd=math.inf)
    _record(log, 3, ce=math.nan, kd=0.5)
    with pytest.raises(TrainingFailure, match=r"^step 2: loss term 'kd' is not finite \(inf\)"):
        log.read()


def test_a_sum_that_overflows_from_finite_terms_is_logged_as_it_is():
    log = TrainLog()
    log.terms.append((1, ("a", "b"), (torch.tensor(3e38), torch.tensor(3e38), torch.tensor(3e38) * 2)))
    assert log.pop_means()["train/loss"] == math.inf


def test_pending_values_survive_a_checkpoint_and_come_first_after_it():
    log = TrainLog()
    _record(log, 1, ce=2.0)
    log.log("x", 1.0)
    saved = log.pending()
    assert {k: v.tolist() for k, v in saved.items()} == {"train/loss/ce": [2.0], "train/loss": [2.0], "x": [1.0]}
    resumed = TrainLog()
    resumed.restore(saved)
    _record(resumed, 2, ce=4.0)
    assert resumed.pop_means() == {"train/loss/ce": 3.0, "train/loss": 3.0, "x": 1.0}
