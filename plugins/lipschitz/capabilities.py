"""The capabilities the Lipschitz plugins share (docs/capabilities.md)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

#: Provided and conflicted by each of the four spectral caps: at most one cap per run (two caps on
#: the same matrices compose into neither's certificate; see docs/lipschitz.md).
SPECTRAL_CAP = "spectral_cap"


@runtime_checkable
class UpdateNormBound(Protocol):
    """An optimizer that bounds the RMS->RMS norm of each matrix update (Muon), for the soft cap's eta/w_max check."""

    def peak_update_norm(self, group: str) -> float | None:
        """The largest update norm of a ``group`` ("hidden" / "head") matrix over the run, or None when
        that group is not updated with a bounded (Muon) update."""
        ...
