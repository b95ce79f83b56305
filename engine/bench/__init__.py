"""Benchmarks behind ``hookmix bench``, run side by side in one process (docs/performance.md).

- ``overhead``: the engine's step against a plain PyTorch loop (and Lightning, ``lightning``).
- ``ddp``: weak scaling of 2 ranks against 1; ``fsdp``: bytes per rank under FSDP2.

A benchmark that drives plugins cannot live here (the engine never imports them). A distribution registers it as a
command named ``bench-NAME`` in the ``hookmix.commands`` entry-point group, and ``hookmix bench NAME [OPTIONS]``
runs it (engine/cli/main.py, ``BENCHES``; ``hookmix bench --help`` lists them): e.g. ``bench rl`` (plugins/bench_rl,
hookmix's GRPO against TRL) and ``bench rollouts`` (plugins/soft_grpo/bench_rollouts.py).
"""
