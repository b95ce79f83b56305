"""Lipschitz-constrained models with certified bounds: constraint maps, Muon, bounds (docs/lipschitz.md).

Modules:
* :mod:`.spectral`  -- RMS->RMS norms, power iteration, msign/Newton–Schulz, NS overshoot.
* :mod:`.constraint_maps` -- the constraint maps (soft cap + coupling, spectral normalize / weight decay / hammer,
  hard cap with a validity guard, exact msign clip, SVD clip, Stiefel projection, embedding projections).
* :mod:`.bound`     -- certified Lipschitz bounds of the Lipschitz transformer and MLP from measured norms.
* :mod:`.models`    -- ``LipschitzGPT`` and ``LipschitzMLP``.
* :mod:`.muon`      -- ``MuonAdamW``: torch.optim.Muon (shape-correct update scale) + AdamW, with the
  update-norm bound for the soft-cap coupling.
* :mod:`.empirical` -- empirical lower estimates of Lipschitz constants (checks of the certificate).

The modules above never import the engine. The engine wiring is :mod:`.constraints`, :mod:`.optim_plugins`
and :mod:`.model_plugins` (the hookmix plugins), with the capabilities they share in :mod:`.capabilities`.
The ``hookmix lipschitz-*`` commands are :mod:`.check`, :mod:`.sweep` and :mod:`.bench`, registered in
:mod:`.commands`; the recipes are in ``recipes/``. This package does not import them (the engine loads them
by entry point).
"""

from . import bound, constraint_maps, empirical, models, muon, spectral  # noqa: F401

__all__ = ["bound", "constraint_maps", "empirical", "models", "muon", "spectral"]
