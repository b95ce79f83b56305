"""Logit standardization for distillation losses (docs/distillation.md).

* :mod:`.transform` -- ``standardize_logits`` (per-row Z-score, Bessel std + eps, guarded backward); no engine import.
* :mod:`.plugin` -- plugin ``logit_std``.
"""
