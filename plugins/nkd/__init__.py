"""Normalized KD and universal self-KD (docs/distillation.md).

* :mod:`.losses` -- ``nkd_loss``, ``uskd_loss``, ``zipf_labels``, ``USKDHead`` / ``USKDLoss``, presets; no engine import.
* :mod:`.plugin` -- plugins ``nkd`` and ``uskd`` (their recipes ship with :mod:`plugins.kd`).
"""
