"""Sharpness-aware minimization around whichever optimizer a run enables (docs/sam.md).

* :mod:`.plugin` -- plugin ``sam``: SAM and adaptive SAM (ASAM) as a wrapper of ``hookmix_optimizer_step`` that
  re-evaluates the loss at the perturbed weights with the engine's loss closure (plugin API 1.1).

``recipes/`` holds ``mnist1d-mlp-sam`` (the MNIST-1D MLP recipe with ``sam``; ``hookmix recipes``).
"""
