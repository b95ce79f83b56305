"""DIST: knowledge distillation from a stronger teacher by relations (Huang et al., NeurIPS 2022).

* :mod:`.losses` -- ``dist_loss`` (inter-class + intra-class Pearson relations, the official conventions); no engine
  import.
* :mod:`.plugin` -- plugin ``dist_kd``: the loss on the global batch (``state.all_gather``), so that W ranks
  compute what one process computes.

``recipes/`` holds ``mnist1d-student-dist`` / ``mnist1d-student-dist-ls`` (the MNIST-1D student of :mod:`plugins.kd`'s
recipes, distilled with DIST, without and with ``logit_std``: the DIST arms of ``hookmix distill-mnist1d``) and
``cifar100-r8x4-dist`` (the official CIFAR settings).
"""
