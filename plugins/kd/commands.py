"""The distillation experiment command, registered in the ``hookmix.commands`` entry-point group.

An :class:`engine.Command` whose functions are imported only when its verb runs, so ``hookmix --help``
lists it without importing the experiment driver.
"""

from __future__ import annotations

from engine import Command

distill_mnist1d = Command.lazy(
    "MNIST-1D distillation table: CNN teacher, MLP student arms, seeds",
    "plugins.kd.experiment:add_arguments",
    "plugins.kd.experiment:run",
)
