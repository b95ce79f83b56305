"""hookmix NKD / USKD plugin package -- engine-independent core (spec ``shared/specs/distillation.md`` §7-§8).

* :mod:`.losses` -- ``nkd_loss``, ``uskd_loss``, ``zipf_labels``, ``USKDHead`` / ``USKDLoss``, presets.

Nothing here imports the engine; hook wiring lives elsewhere.
"""
