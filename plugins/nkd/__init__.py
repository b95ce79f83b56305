"""hookmix NKD / USKD plugin package -- engine-independent core (docs: ``docs/distillation.md``).

* :mod:`.losses` -- ``nkd_loss``, ``uskd_loss``, ``zipf_labels``, ``USKDHead`` / ``USKDLoss``, presets.

Nothing here imports the engine; hook wiring lives elsewhere.
"""
