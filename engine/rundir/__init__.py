"""Everything a run writes or reads back: the run directory and its files.

- ``directory``: the run directory through fsspec (``RunDir``: atomic writes, reads, listings).
- ``metrics_log``: ``metrics.jsonl`` and TensorBoard (``event_file``), repaired on resume after a crash.
- ``progress``: the progress bar / log lines.
- ``checkpoint``: atomic one-file checkpoints, ``weights_only=True`` loading, RNG capture, resume diffs.
- ``lock`` and ``claim``: one writer per run directory; claiming, leftovers, recipe history.
- ``open_run``: a finished run opened for reading (its recipe, checkpoint, weights, rebuilt model).
"""
