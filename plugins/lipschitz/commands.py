"""The Lipschitz experiment commands, registered in the ``hookmix.commands`` entry-point group.

Each is an :class:`engine.Command` whose functions are imported only when its verb runs, so
``hookmix --help`` lists them without importing the sweep, the benchmark or torch.
"""

from __future__ import annotations

from engine import Command

check = Command.lazy(
    "compare a run's certified Lipschitz bound with an empirical estimate",
    "plugins.lipschitz.check:check_arguments",
    "plugins.lipschitz.check:check",
)
sweep = Command.lazy(
    "sweep constraint methods on the CPU recipe; plot accuracy vs bound",
    "plugins.lipschitz.sweep:add_arguments",
    "plugins.lipschitz.sweep:main",
)
bench = Command.lazy(
    "cost of each weight constraint vs an SVD clip and a Muon step",
    "plugins.lipschitz.bench:add_arguments",
    "plugins.lipschitz.bench:main",
)
