"""The GKD experiment command, registered in the ``hookmix.commands`` entry-point group.

An :class:`engine.Command` whose functions are imported only when its verb runs, so ``hookmix --help`` lists it
without importing the driver.
"""

from __future__ import annotations

from engine import Command

countdown_gkd = Command.lazy(
    "Countdown: SFT teacher once, on-policy vs off-policy GKD vs SFT over seeds, pass@k (docs/gkd-countdown.md)",
    "plugins.gkd.experiment:gkd_arguments",
    "plugins.gkd.experiment:run_gkd",
)
