"""The ``bench-rl`` entry of the ``hookmix.commands`` group: run as ``hookmix bench rl`` (or ``hookmix bench-rl``).

The engine's ``bench`` verb runs a registered command named ``bench-NAME`` as ``hookmix bench NAME`` (engine/cli/main.py),
so this benchmark, which drives plugins, lives with the plugins. Its functions are imported only when it runs.
"""

from __future__ import annotations

from engine import Command

bench_rl = Command.lazy(
    "GRPO / SofT-GRPO steps side by side with TRL's GRPOTrainer: step time, tokens/s, peak memory, equal losses",
    "plugins.bench_rl.cli:bench_arguments",
    "plugins.bench_rl.cli:run_bench",
)
