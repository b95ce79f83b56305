"""Engine plugin ``sam``: sharpness-aware minimization (Foret et al., ICLR 2021) and adaptive SAM (ASAM, Kwon et
al., ICML 2021) around whichever optimizer the run enables. Docs: ``docs/sam.md``.

One real step: the engine's own forward and backward leave ``g``, the gradient at the weights ``w`` (clipped when
``run.grad_clip`` is set; a global rescaling, so the direction below is the same). The wrapper moves the weights to
``w + e``, the steepest ascent point of a ball of radius ``rho``: ``e = rho * g / ||g||`` (ASAM: the ball scaled
elementwise by ``|w|``, ``e = rho * w^2 g / ||w g||``), calls the engine's loss closure there (gradients zeroed, the
step's own micro-batches through forward and backward again: ``g' = grad L(w + e)``, clipped likewise), puts the
saved weights back bit for bit, and lets the base optimizer step from ``w`` on ``g'``. Only the first evaluation is
logged (``train/loss`` is the loss at ``w``); ``sam/perturbed_loss`` is the loss at ``w + e``.

The norm is :func:`torch.nn.utils.get_total_norm`, as gradient clipping computes it: under DDP the gradients are
already reduced (every rank perturbs alike); under FSDP they are row shards (DTensors) and the norm is the global
one, so the perturbation is the one of the full gradient.
"""

from __future__ import annotations

import inspect

import attrs
import torch

from engine import BadInput, Plugin, field, hookimpl
from engine.validators import finite_positive

EPS = 1e-12  # keeps a zero gradient (nothing to perturb) from dividing by zero: e is then 0


@attrs.define
class SAMConfig:
    rho: float = field(
        0.05,
        "radius of the perturbation ball (SAM paper: 0.05; ASAM's ball is |w|-scaled and takes larger radii, e.g. 0.5)",
        validator=finite_positive,
    )
    adaptive: bool = field(False, "ASAM: scale the ball elementwise by |w| (a sharpness that ignores weight scale)")


class SAM(Plugin):
    """Sharpness-aware minimization (SAM/ASAM): the base optimizer steps on the gradient at the worst nearby weights."""

    name = "sam"
    Config = SAMConfig
    recipes = "plugins.sam.recipes"

    @hookimpl
    def hookmix_on_train_start(self, state):
        if _requires_closure(state.optimizer):
            raise BadInput(
                f"sam wraps an optimizer that steps on the gradients the engine computed; "
                f"{type(state.optimizer).__name__} requires its own loss closure and evaluates the loss itself; "
                f"use sam with adamw, sgd or muon, or remove sam from run.plugins"
            )

    @hookimpl(wrapper=True)
    def hookmix_optimizer_step(self, optimizer, state, closure):
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        saved = [p.detach().clone() for p in params]  # restored by copy: w + e - e need not round back to w
        with torch.no_grad():
            for p, e in zip(params, perturbation(params, self.config.rho, self.config.adaptive)):
                p.add_(e)
        try:
            loss = closure()  # the gradient at w + e, on the step's own micro-batches
        finally:
            with torch.no_grad():
                for p, w in zip(params, saved):
                    p.copy_(w)
        state.log("sam/perturbed_loss", loss)
        return (yield)  # the base optimizer's step, from w, on the perturbed gradient


def perturbation(params: list[torch.Tensor], rho: float, adaptive: bool) -> list[torch.Tensor]:
    """SAM's ascent step ``rho * g / ||g||`` per parameter, from its ``.grad``; ``adaptive`` (ASAM):
    ``rho * w^2 g / ||w g||``, i.e. the steepest ascent in a ball scaled elementwise by ``|w|``."""
    with torch.no_grad():
        if adaptive:
            scaled = [p.abs() * p.grad for p in params]
            scale = rho / (torch.nn.utils.get_total_norm(scaled) + EPS)
            return [p * p * p.grad * scale for p in params]
        scale = rho / (torch.nn.utils.get_total_norm([p.grad for p in params]) + EPS)
        return [p.grad * scale for p in params]


def _requires_closure(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` requires a closure (torch's LBFGS), read from its signature."""
    try:
        closure = inspect.signature(type(optimizer).step).parameters.get("closure")
    except (AttributeError, TypeError, ValueError):
        return False
    return closure is not None and closure.default is inspect.Parameter.empty
