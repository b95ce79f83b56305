"""Lightning Fabric and the Lightning Trainer as contestants of ``hookmix bench overhead``.

Lightning is an optional extra (``pip install -e ".[bench]"``); this module imports it only
when asked. Both contestants train their own copy of the same model on the same batches with the
same AdamW as the plain loop, configured as lightly as Lightning allows (no logger, progress bar,
checkpointing, model summary or validation), so the comparison is against Lightning's own step
machinery, not against features hookmix would have to match.

The Trainer runs its own fit loop, so it cannot be called one step at a time. It drives the
benchmark instead: a callback at the end of each of its steps hands the step's loss to the
benchmark, which runs the other contestants' turns when the Trainer's turn is over (after every
step, or every 10 with ``--interleave block``); the Trainer's step time is the wall time between
leaving that callback and entering it again, which holds everything its loop does for one step
(fetching the batch, hooks, forward, backward, optimizer step, zero_grad).
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Callable

import torch
import torch.nn.functional as F

from engine.errors import BadInput


def require_lightning():
    try:
        import lightning  # noqa: F401
    except ImportError:
        raise BadInput(
            '--against lightning needs Lightning, an optional extra: pip install -e ".[bench]" '
            '(or pip install "lightning>=2.4")'
        ) from None
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)  # "GPU available: False" and friends
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def _loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    logits = model(batch["input"])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch["target"].reshape(-1))


def fabric_step(model: torch.nn.Module, adamw: dict, data, generator: torch.Generator) -> Callable[[], torch.Tensor]:
    """One Fabric training step per call (returns the detached loss)."""
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator="cpu", devices=1, precision="32-true")
    model, optimizer = fabric.setup(model, torch.optim.AdamW(model.parameters(), **adamw))

    def step() -> torch.Tensor:
        loss = _loss(model, data.train_batch(generator))
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def run_trainer(
    model: torch.nn.Module,
    adamw: dict,
    data,
    generator: torch.Generator,
    steps: int,
    each_step: Callable[[int, torch.Tensor], None],
    clock=time.perf_counter,
) -> list[float]:
    """Fit with the Lightning Trainer for ``steps`` steps; after each, ``each_step(i, loss)`` (untimed).

    Returns the Trainer's own step times (seconds) for steps 1 .. steps - 1 (step 0 has no start mark).
    """
    import lightning.pytorch as pl

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model

        def training_step(self, batch, batch_idx):
            return _loss(self.model, batch)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.model.parameters(), **adamw)

    class Batches(torch.utils.data.IterableDataset):
        def __iter__(self):
            while True:
                yield data.train_batch(generator)

    times: list[float] = []
    left = [None]  # when the callback last returned

    class Interleave(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            entered = clock()
            if left[0] is not None:
                times.append(entered - left[0])
            each_step(batch_idx, outputs["loss"].detach())
            left[0] = clock()

    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[Interleave()],
    )
    trainer.fit(Module(), torch.utils.data.DataLoader(Batches(), batch_size=None))
    return times
