"""The non-finite loss check, without a host synchronisation per step.

Reading a device value on the host (``.item()``, ``bool(t)``, ``float(t)``) waits for every
queued kernel: on a GPU, one such read per micro-batch serialises the host with the device. So
the loop only *records* each micro-batch's loss terms here (detached device tensors, a list
append) and the check runs when the loop reads metrics anyway: at each log interval, evaluation,
checkpoint and the end of the run, always before a checkpoint is written. One stack of the
interval's terms, times 0, summed, decides (0 when every term is finite, NaN otherwise: three ops,
where ``isfinite`` alone costs more on a CPU); only when it fails are the records scanned on the host
for the first bad step and term, so the error names the same step and term as a per-step check.

At a log interval the check costs nothing more: the means the log record reads anyway include
``train/loss`` (each micro-batch's sum of terms) and a sum with a non-finite term is non-finite,
so finite means clear the records (:meth:`FiniteWatch.settle`) and only a non-finite mean scans.

The guarantee that remains: training may run up to ``log_interval`` steps past a non-finite loss
before stopping, but no checkpoint is ever written after it: the last checkpoint on disk is from
before the bad step, and ``--resume`` continues from there.
"""

from __future__ import annotations

import math

import torch

from engine.errors import TrainingFailure


class FiniteWatch:
    """Records (step, loss terms) per micro-batch; ``check()`` raises on the first non-finite one."""

    def __init__(self) -> None:
        self.records: list[tuple[int, dict[str, torch.Tensor]]] = []

    def record(self, step: int, terms: dict[str, torch.Tensor]) -> None:
        self.records.append((step, terms))

    def check(self) -> None:
        """One host sync for all records since the last check; raise naming the first bad step/term."""
        records, self.records = self.records, []
        if not records:
            return
        values = [t for _, terms in records for t in terms.values()]
        try:  # scalar terms (the contract): one stack
            stacked = torch.stack(values)
        except RuntimeError:  # terms of other shapes
            stacked = torch.cat([t.reshape(-1).float() for t in values])
        if stacked.mul(0).sum().item() == 0:  # the one host read
            return
        for step, terms in records:  # the failure path only: scan on the host, in step order
            for name, term in terms.items():
                if not bool(torch.isfinite(term).all()):
                    value = term.float().reshape(-1)[~torch.isfinite(term.float().reshape(-1))][0].item()
                    raise TrainingFailure(f"step {step}: loss term {name!r} is not finite ({value}); "
                                          f"lower the learning rate or check the inputs (the last checkpoint "
                                          f"is from before step {step})")

    def settle(self, read: dict[str, float]) -> None:
        """At a log record: ``read`` holds the interval's means of ``train/loss`` and each term. All
        finite: every recorded term was finite (a sum or mean with a non-finite value is not), so
        the records go without another device read; otherwise :meth:`check` names the bad one (a
        finite overflow to inf in a mean passes it and is logged as it is)."""
        if all(math.isfinite(v) for k, v in read.items() if k.startswith("train/loss")):
            self.records = []
        else:
            self.check()
