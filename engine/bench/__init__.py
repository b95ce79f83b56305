"""Benchmarks behind ``hookmix bench``, run side by side in one process (docs/performance.md).

- ``overhead``: the engine's step against a plain PyTorch loop (and Lightning, ``lightning``).
- ``ddp``: weak scaling of 2 ranks against 1; ``fsdp``: bytes per rank under FSDP2.
"""
