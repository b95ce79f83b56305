"""hookmix KD plugin package -- engine-independent core (docs: ``docs/distillation.md``).

Modules:
* :mod:`.losses`   -- vanilla KD (KL / CE form) and DKD (TCKD / NCKD, warm-up), presets.
* :mod:`.cifar100` -- CIFAR-100 python-archive loader (restricted unpickler, fsspec), augmentation.
* :mod:`.resnet`   -- CIFAR ResNets ``resnet8x4`` / ``resnet32x4``.

Nothing here imports the engine; hook wiring lives elsewhere.
"""
