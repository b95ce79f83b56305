"""Logit distillation: vanilla KD and DKD, the frozen teacher, and the MNIST-1D experiment (docs/distillation.md).

* :mod:`.losses` -- vanilla KD (KL / CE form) and DKD (TCKD / NCKD, warm-up), presets; no engine import.
* :mod:`.distill_inputs` -- what a distillation loss plugin reads (shared with :mod:`plugins.nkd`).
* :mod:`.loss_plugins` -- plugins ``kd`` and ``dkd``.
* :mod:`.teacher` -- plugin ``teacher``: a frozen model rebuilt from a hookmix run (several: ``teacher@LABEL``).
* :mod:`.experiment` -- ``hookmix distill-mnist1d``, registered in :mod:`.commands`.

``recipes/`` holds the distillation recipes (MNIST-1D, CIFAR-100, the Lipschitz students).
"""
