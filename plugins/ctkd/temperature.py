"""The pieces of CTKD (Li et al., AAAI 2023; official code zhengli97/CTKD), in pure PyTorch.

* :class:`GradientReversal` / :func:`reverse_gradient`: the identity forward, a backward that multiplies the
  incoming gradient by ``lambda_`` (official ``GradientReversalFunction``);
* :func:`cosine_lambda`: the official ``CosineDecay`` of ``lambda_`` from ``start`` (0) to ``end`` (-1);
* :class:`GlobalTemperature`: the one learnable scalar ``theta`` and ``T = t_start + t_end * sigmoid(GRL(theta))``.

With ``lambda_ <= 0`` the optimizer's descent on ``theta`` is an ascent on the distillation loss: the temperature
is trained to make distillation harder, the student to make it easier (the adversarial curriculum of the paper).
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor

__all__ = ["GradientReversal", "reverse_gradient", "cosine_lambda", "GlobalTemperature"]


class GradientReversal(torch.autograd.Function):
    """``y = x`` forward; ``dx = lambda_ * dy`` backward (``lambda_`` is a plain number, not differentiated)."""

    @staticmethod
    def forward(ctx, x: Tensor, lambda_: float) -> Tensor:
        ctx.lambda_ = float(lambda_)
        return x.clone()  # a new tensor, not the input itself, as the official code returns

    @staticmethod
    def backward(ctx, grad: Tensor):
        # one multiplication in the gradient's own dtype: the same rounding as multiplying by lambda_ by hand
        return grad * ctx.lambda_, None


def reverse_gradient(x: Tensor, lambda_: float) -> Tensor:
    """``x`` unchanged, with its gradient multiplied by ``lambda_`` on the way back."""
    return GradientReversal.apply(x, lambda_)


def cosine_lambda(step: float, decay_steps: float, start: float = 0.0, end: float = -1.0) -> float:
    """``end + (start - end) * (1 + cos(pi * min(step, N) / N)) / 2`` with ``N = decay_steps``: the official
    ``CosineDecay(max_value=start, min_value=end, num_loops=N).get_value(step)``.

    ``start`` at step 0, the mean of both at ``N / 2``, ``end`` from step ``N`` on. The official loop asks for
    epochs counted from 1; the plugin passes the step being taken counted from 1 the same way (as ``dkd``'s
    warm-up). ``decay_steps <= 0`` means no ramp: ``end`` from the first step. Negative steps count as 0.
    """
    if decay_steps <= 0:
        return float(end)
    i = min(max(step, 0), decay_steps)
    value = (math.cos(i * math.pi / decay_steps) + 1.0) * 0.5  # the official order of operations, bit for bit
    return float(value * (start - end) + end)


class GlobalTemperature(torch.nn.Module):
    """One temperature for the whole run: ``T = t_start + t_end * sigmoid(GRL(theta, lambda_))``, a 0-d tensor.

    ``theta`` has the official shape (1,) (``Global_T`` holds ``torch.ones(1)``): FSDP2 shards plugin modules by
    rows and refuses 0-d parameters. ``T`` is returned 0-d so that it broadcasts into any loss as a scalar. The
    reversal sits on ``theta`` as in the official code; the sigmoid being a scalar map, that is the same gradient
    as reversing ``T`` itself.
    """

    def __init__(self, t_start: float = 1.0, t_end: float = 20.0, init: float = 1.0) -> None:
        super().__init__()
        self.t_start, self.t_end = float(t_start), float(t_end)
        self.theta = torch.nn.Parameter(torch.tensor([float(init)]))

    def forward(self, lambda_: float) -> Tensor:
        return (self.t_start + self.t_end * torch.sigmoid(reverse_gradient(self.theta, lambda_))).reshape(())

    def extra_repr(self) -> str:
        return f"t_start={self.t_start}, t_end={self.t_end}"
