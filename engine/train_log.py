"""The training metrics of one log interval, and the non-finite loss check, without a host sync per step.

Reading a device value on the host (``.item()``, ``bool(t)``, ``float(t)``) waits for every
queued kernel: on a GPU, one such read per micro-batch serialises the host with the device. So
during a step values are only *recorded* (detached tensors, a list append): each micro-batch's
loss terms (appended to ``TrainLog.terms`` by the step, engine/step.py) and what plugins pass to
``state.log`` (a Python number is kept as it is, with no tensor built for it).
:meth:`TrainLog.read` brings every recorded tensor to the host at once (on a GPU one stack and one
``.tolist()``: one sync; on a CPU, where there is nothing to wait for, a read per value): at each
log record, and before an evaluation or a checkpoint. The same read is the non-finite check: it
scans the loss terms' values in step order and raises naming the first non-finite step and term,
the error a per-step check would give.

The guarantee that remains: training may run up to ``log_interval`` steps past a non-finite loss
before stopping, but no checkpoint is ever written after it: the last checkpoint on disk is from
before the bad step, and ``--resume`` continues from there.

A metric's logged value is the mean of its values over the interval (``train/loss``: of each
micro-batch's sum of terms; ``train/loss/<name>``: of each term), in float64 on the host.
"""

from __future__ import annotations

import math
from itertools import chain
from operator import itemgetter

import torch

from engine.errors import TrainingFailure


class TrainLog:
    """Values recorded since the last log record, by metric name (loss metrics first)."""

    def __init__(self) -> None:
        # one record per micro-batch, not yet read: (step, term names, values), the values being the
        # detached terms in the names' order and, with more than one term, their sum last. The
        # training step appends to this list directly (engine/step.py).
        self.terms: list[tuple[int, tuple[str, ...], tuple[torch.Tensor, ...]]] = []
        # metric name -> values: floats once read, tensors (state.log) until then
        self.values: dict[str, list[float | torch.Tensor]] = {}

    def log(self, name: str, value: float | torch.Tensor) -> None:
        value = value.detach() if isinstance(value, torch.Tensor) else float(value)
        values = self.values.get(name)
        if values is None:
            self.values[name] = [value]
        else:
            values.append(value)

    def read(self) -> None:
        """Every recorded tensor onto the host (one device sync); raise on the first non-finite loss term."""
        records = self.terms[:]
        self.terms.clear()  # in place: the training step holds this list
        unread = [
            (values, i) for values in self.values.values() for i, v in enumerate(values) if isinstance(v, torch.Tensor)
        ]
        tensors = [*chain.from_iterable(map(itemgetter(2), records)), *(values[i] for values, i in unread)]
        if not tensors:
            return
        floats = to_host(tensors)
        n = len(floats) - len(unread)
        for (values, i), value in zip(unread, floats[n:]):
            values[i] = value
        if not records:
            return
        losses = _loss_lists(records, floats[:n])
        # the loss metrics first in the record, as they were recorded first in every step (after any
        # restored from a checkpoint)
        merged = {k: self.values.pop(k, []) + v for k, v in losses.items()}
        merged.update(self.values)
        self.values = merged
        if not all(map(math.isfinite, floats[:n])):
            _raise_first_non_finite(records, floats)

    def pop_means(self) -> dict[str, float]:
        """Each metric's mean since the last call (after :meth:`read`), then empty."""
        self.read()
        means = {k: sum(vs) / len(vs) for k, vs in self.values.items() if vs}
        self.values = {}
        return means

    def pending(self) -> dict[str, torch.Tensor]:
        """The values recorded since the last log record, one float64 tensor per name (saved in checkpoints)."""
        self.read()
        return {k: torch.tensor(vs, dtype=torch.float64) for k, vs in self.values.items()}

    def restore(self, pending: dict[str, torch.Tensor]) -> None:
        self.terms.clear()
        self.values = {k: [float(x) for x in v.reshape(-1).tolist()] for k, v in pending.items()}


def _loss_lists(records: list[tuple[int, tuple[str, ...], tuple]], floats: list[float]) -> dict[str, list[float]]:
    """``train/loss/<name>`` and ``train/loss`` values from the records' values read as ``floats``."""
    if len(set(map(itemgetter(1), records))) == 1:  # the same terms in every micro-batch: columns
        _, names, values = records[0]
        k = len(values)
        lists = {f"train/loss/{name}": floats[j::k] for j, name in enumerate(names)}
        lists["train/loss"] = floats[k - 1 :: k]
        return lists
    lists = {}
    position = 0
    for _, names, values in records:
        for j, name in enumerate(names):
            lists.setdefault(f"train/loss/{name}", []).append(floats[position + j])
        lists.setdefault("train/loss", []).append(floats[position + len(values) - 1])
        position += len(values)
    return lists


def _raise_first_non_finite(records: list[tuple[int, tuple[str, ...], tuple]], floats: list[float]) -> None:
    """The first non-finite term in step order, as a TrainingFailure (a non-finite sum of finite terms,
    an overflow, is logged as it is)."""
    position = 0
    for step, names, values in records:
        for name, value in zip(names, floats[position:]):
            if not math.isfinite(value):
                raise TrainingFailure(
                    f"step {step}: loss term {name!r} is not finite ({value}); lower the "
                    f"learning rate or check the inputs (the last checkpoint is from before "
                    f"step {step})"
                )
        position += len(values)


def to_host(tensors: list[torch.Tensor]) -> list[float]:
    """The values of scalar tensors as floats, with one device sync at most."""
    if all(t.is_cpu for t in tensors):  # no device to wait for: a read per value beats building a stack
        return [t.item() for t in tensors]
    try:  # same-shape scalars on one device (nearly always): one stack, one read
        return torch.stack(tensors).tolist()
    except RuntimeError:
        pass
    try:  # scalars of other shapes, e.g. (1,)
        return torch.stack([t.reshape(()) for t in tensors]).tolist()
    except RuntimeError:  # values on different devices (a CPU tensor logged next to a GPU loss)
        return [t.item() for t in tensors]
