"""hookmix logit-standardization plugin package -- engine-independent core (spec §9).

* :mod:`.transform` -- ``standardize_logits`` (per-row Z-score, Bessel std + eps, guarded backward).

Nothing here imports the engine; hook wiring lives elsewhere.
"""
