"""Measuring and speeding up a run: throughput metrics, ``run.compile``, per-hook profiles.

- ``throughput``: ``perf/`` metrics (samples and tokens per second, MFU where known).
- ``compile``: ``run.compile`` (``torch.compile`` of the model; imported only when asked for).
- ``profile``: ``HOOKMIX_PROFILE=1``: time spent in each hook by each plugin.
"""
