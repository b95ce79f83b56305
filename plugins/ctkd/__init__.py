"""CTKD: curriculum temperature for knowledge distillation (Li et al., AAAI 2023; docs/distillation.md, "CTKD").

* :mod:`.temperature` -- the gradient-reversal layer, the cosine schedule of its factor and the global learnable
  temperature module; pure PyTorch, no engine import.
* :mod:`.plugin` -- plugin ``ctkd``: owns the temperature (``state.add_module``) and hands it, through the
  reversal, to the distillation losses ``kd``, ``dkd`` and ``nkd`` as ``outputs["kd_temperature"]``.

``recipes/`` holds ``mnist1d-student-ctkd`` / ``mnist1d-student-ctkd-ls`` (the MNIST-1D KD and KD+LS students with a
learned temperature: the CTKD arms of ``hookmix distill-mnist1d``) and ``cifar100-r8x4-ctkd`` (the official CIFAR run).
"""
