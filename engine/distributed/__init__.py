"""Training on several processes: torchrun's environment, the process group, DDP, FSDP2 and its checkpoints.

Imported only by runs that use it (a one-process run never loads ``torch.distributed.fsdp`` or
``torch.distributed.checkpoint``).

- ``env``: the torchrun environment, checked; the device and backend of a rank.
- ``group``: the process group of one run (agreement on bad input, reductions, teardown).
- ``ddp``: this rank's share of each batch, the module DDP wraps, per-rank checkpoint state.
- ``launch``: ``hookmix train --nproc N``, elastic restarts, crash reports naming the rank.
- ``fsdp``: ``run.strategy = "fsdp"``: FSDP2 sharding and the gathered full-weight view.
- ``sharded_checkpoint``: DCP checkpoints with a loader that unpickles nothing foreign.

docs/distributed.md has the semantics.
"""
