"""The core plugin ``lbfgs``: ``torch.optim.LBFGS``, stepped with the engine's loss closure (plugin API 1.1).

``LBFGS.step(closure)`` requires its closure, and the engine reads that from the signature: it draws the step's
micro-batches, runs no forward of its own and calls ``optimizer.step(closure)``; LBFGS evaluates the loss (and its
line search) by calling the closure, whose first call is the step's logged evaluation (docs/authoring.md, "Loss
closure"). Each real step is up to ``max_iter`` LBFGS iterations on the same micro-batches, so a step costs up to
``max_eval`` forward and backward passes.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch

from engine import BadInput, Plugin, field, hookimpl
from engine.validators import finite_positive, int_range


@attrs.define
class LBFGSConfig:
    lr: float = field(1.0, "step length (torch's default; the line search scales it)", validator=finite_positive)
    max_iter: int = field(20, "LBFGS iterations per real step (torch's default)", validator=int_range(1, 10_000))
    max_eval: int = field(0, "closure calls per real step at most; 0: max_iter * 5 / 4", validator=int_range(0, 20_000))
    history_size: int = field(100, "curvature pairs kept (torch's default)", validator=int_range(1, 10_000))
    tolerance_grad: float = field(1e-7, "stop a step when every |gradient| is below this", validator=finite_positive)
    tolerance_change: float = field(
        1e-9, "stop a step when the loss or the move is below this", validator=finite_positive
    )
    line_search: Literal["strong_wolfe", "none"] = field(
        "strong_wolfe", "strong_wolfe: a Wolfe line search; none: fixed steps of lr (torch's default, can diverge)"
    )


class LBFGS(Plugin):
    """L-BFGS (torch.optim.LBFGS) over every trained parameter, with the engine's loss closure."""

    name = "lbfgs"
    Config = LBFGSConfig

    @hookimpl
    def hookmix_configure(self, state):
        if state.run.strategy == "fsdp" and state.world_size > 1:
            raise BadInput(
                "lbfgs flattens whole gradients into one vector, which run.strategy='fsdp' holds as row shards; "
                "use run.strategy=ddp"
            )

    @hookimpl
    def hookmix_optimizer(self, param_groups, state):
        options = sorted({k for g in param_groups for k in g if k not in ("name", "params")})
        if options:  # LBFGS keeps one state over one flat vector: it has no per-group settings
            groups = ", ".join(repr(g["name"]) for g in param_groups if set(g) - {"name", "params"})
            raise BadInput(
                f"lbfgs takes no per-group options, but group {groups} sets {', '.join(options)}; "
                f"remove the plugin that claims it (e.g. adamw's no_decay group) from run.plugins"
            )
        c = self.config
        return torch.optim.LBFGS(
            [p for g in param_groups for p in g["params"]],
            lr=c.lr,
            max_iter=c.max_iter,
            max_eval=c.max_eval or None,
            tolerance_grad=c.tolerance_grad,
            tolerance_change=c.tolerance_change,
            history_size=c.history_size,
            line_search_fn=None if c.line_search == "none" else c.line_search,
        )
