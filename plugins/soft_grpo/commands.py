"""The SofT-GRPO experiment commands, registered in the ``hookmix.commands`` entry-point group.

Each is an :class:`engine.Command` whose functions are imported only when its verb runs, so
``hookmix --help`` lists them without importing the drivers.
"""

from __future__ import annotations

from engine import Command

countdown_compare = Command.lazy(
    "Countdown: SFT once, GRPO vs SofT-GRPO over seeds, pass@k table (docs/soft-grpo-countdown.md)",
    "plugins.soft_grpo.compare:compare_arguments",
    "plugins.soft_grpo.compare:run_compare",
)
bench_rollouts = Command.lazy(
    "soft-thinking vs discrete rollout throughput, same model and lengths, side by side",
    "plugins.soft_grpo.bench_rollouts:bench_arguments",
    "plugins.soft_grpo.bench_rollouts:run_bench",
)
countdown_variants = Command.lazy(
    "Countdown: grpo, dr_grpo, dapo, gspo x discrete and soft rollouts over seeds (docs/soft-grpo-countdown.md)",
    "plugins.soft_grpo.variants:variants_arguments",
    "plugins.soft_grpo.variants:run_variants",
)
