"""CIFAR-100 and the CIFAR ResNets, for the methods that train on CIFAR (docs/distillation.md).

* :mod:`.cifar100` -- the official python-archive loader (restricted unpickler, fsspec), augmentation.
* :mod:`.resnet` -- CIFAR ResNets ``resnet8x4`` / ``resnet32x4``.
* :mod:`.plugin` -- plugins ``cifar100`` (data) and ``resnet`` (model).
"""
