"""Capabilities the engine itself defines for plugins to provide (see docs/capabilities.md).

A capability is a name or a ``typing.Protocol`` class in a plugin's ``provides`` / ``requires``
/ ``conflicts`` / ``before`` / ``after``. A Protocol capability states the methods its provider
offers; ``state.provider(TheProtocol)`` returns the enabled provider, typed. Packages define
the Protocols their plugins share in their own modules; the engine defines only the ones it
reads itself.
"""

from __future__ import annotations

from typing import Iterable, Protocol, runtime_checkable

import torch


@runtime_checkable
class WeightConstraint(Protocol):
    """A plugin that rewrites weights after each optimizer step to enforce a guarantee (a norm cap).

    The engine reads it to warn, in the plan, when two constraints touch the same parameters:
    the later one can void the earlier one's guarantee. Plugins that must see constrained
    weights (an EMA, a post-step measurement) declare ``after = (WeightConstraint,)``.
    """

    def constrained_parameters(self, model: torch.nn.Module) -> Iterable[str]:
        """Names (as in ``model.named_parameters()``) of the parameters this constraint rewrites."""
        ...
