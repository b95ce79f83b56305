"""Certified Lipschitz bounds from measured weight norms (spec ``lipschitz.md`` §7).

All norms are RMS->RMS operator norms of the *current* weights (measure them with
``spectral.rms_to_rms_norm``; spec §1 item 8: never plug in ``w_max``). The embedding norm is the max
token-vector RMS (l1 -> RMS), the output norm the RMS->RMS norm of the head (or the max row RMS of an
``Unembed``).

Transformer (official ``utils.calculate_lipschitz_constant``), ``alpha = r/(2L)``, ``s`` = softmax_scale:

* activation bound ``a = 1``; per block l: ``a_l = a`` (entering attention);
  ``a <- a·[(1-alpha) + alpha·|W_o||W_v|/3]``; ``a <- a·[(1-alpha) + alpha·|W_out||W_in|/1.1289]``.
* ``K = |E|``; per block: ``K_att = s·(1/3)·|W_o|·(|W_v| + 2·|W_v||W_q||W_k|·a_l^2)``,
  ``K <- K·[(1-alpha) + alpha·K_att]``; ``K_mlp = |W_out||W_in|/1.1289``, ``K <- K·[(1-alpha) + alpha·K_mlp]``;
  finally ``K <- K·|W_head|``.
* ``s`` multiplies the whole attention term, V path included, as the official code does (spec §1 item 9;
  looser than necessary for the V path, kept for comparability).

GELU constant. The model divides GELU by 1.1289 (the official constant), but GELU's true maximum
slope is ``Phi(sqrt2) + sqrt2·phi(sqrt2) = 1.12890415`` -- so GELU/1.1289 is 1.0000037-Lipschitz, not 1.
``transformer_lipschitz_bound`` therefore multiplies each MLP term by ``gelu_lipschitz`` (default
``GELU_MAX_SLOPE / GELU_DIVISOR`` = 1.0000037) to stay a certificate; pass ``gelu_lipschitz=1.0`` for
the official formula. (The activation bound needs no correction: ``|GELU(x)| <= |x|``.)

MLP with 1-Lipschitz activations (ReLU): ``K = prod_l |W_l|`` (the official code hard-wires 3 layers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence, Union

__all__ = [
    "GELU_DIVISOR",
    "GELU_MAX_SLOPE",
    "BlockNorms",
    "transformer_activation_bounds",
    "transformer_lipschitz_bound",
    "uniform_transformer_bound",
    "mlp_lipschitz_bound",
]

#: The constant the official model divides GELU by.
GELU_DIVISOR = 1.1289
#: Exact max slope of the (erf) GELU, attained at x = sqrt(2): Phi(sqrt2) + sqrt2·phi(sqrt2).
GELU_MAX_SLOPE = 0.5 * (1.0 + math.erf(1.0)) + math.exp(-1.0) / math.sqrt(math.pi)


@dataclass(frozen=True)
class BlockNorms:
    """Measured RMS->RMS norms of one transformer block's matrices."""

    q: float
    k: float
    v: float
    o: float
    mlp_in: float
    mlp_out: float

    @classmethod
    def uniform(cls, w: float) -> "BlockNorms":
        return cls(w, w, w, w, w, w)


BlockLike = Union[BlockNorms, Mapping[str, float]]


def _as_block(b: BlockLike) -> BlockNorms:
    if isinstance(b, BlockNorms):
        return b
    return BlockNorms(**{k: float(b[k]) for k in ("q", "k", "v", "o", "mlp_in", "mlp_out")})


def _alpha(n_blocks: int, residual_scale: float) -> float:
    if n_blocks <= 0:
        raise ValueError("need at least one block")
    return residual_scale / (2.0 * n_blocks)


def transformer_activation_bounds(
    blocks: Sequence[BlockLike], residual_scale: float = 1.0, input_bound: float = 1.0
) -> List[float]:
    """Per-token RMS bounds on the residual stream: entry l is the bound entering block l's attention,
    the last entry the bound after the final block (length L + 1). Input tokens have RMS <= input_bound."""
    bl = [_as_block(b) for b in blocks]
    al = _alpha(len(bl), residual_scale)
    a = float(input_bound)
    out = []
    for b in bl:
        out.append(a)
        a *= (1.0 - al) + al * b.o * b.v / 3.0
        a *= (1.0 - al) + al * b.mlp_out * b.mlp_in / GELU_DIVISOR
    out.append(a)
    return out


def transformer_lipschitz_bound(
    blocks: Sequence[BlockLike],
    embed_norm: float,
    head_norm: float,
    softmax_scale: float = 1.0,
    residual_scale: float = 1.0,
    gelu_lipschitz: float = GELU_MAX_SLOPE / GELU_DIVISOR,
) -> float:
    """Certified Lipschitz bound of the Lipschitz transformer (tokens -> logits, max-over-tokens RMS).

    ``blocks``: one ``BlockNorms`` (or mapping with keys q, k, v, o, mlp_in, mlp_out) per block.
    ``embed_norm=1`` gives the bound from the embedded sequence (tokens with RMS <= 1) to the logits.
    Monotone non-decreasing in every norm. See the module docstring for the formula.
    """
    bl = [_as_block(b) for b in blocks]
    al = _alpha(len(bl), residual_scale)
    acts = transformer_activation_bounds(bl, residual_scale)
    K = float(embed_norm)
    for b, a_l in zip(bl, acts):
        k_att = softmax_scale * (1.0 / 3.0) * b.o * (b.v + 2.0 * b.v * b.q * b.k * a_l * a_l)
        K *= (1.0 - al) + al * k_att
        k_mlp = b.mlp_out * b.mlp_in / GELU_DIVISOR * gelu_lipschitz
        K *= (1.0 - al) + al * k_mlp
    return K * float(head_norm)


def uniform_transformer_bound(
    n_blocks: int,
    w: float,
    softmax_scale: float = 1.0,
    embed_norm: float = 1.0,
    head_norm: Optional[float] = None,
    gelu_lipschitz: float = GELU_MAX_SLOPE / GELU_DIVISOR,
) -> float:
    """Bound with every block norm equal to ``w`` (head defaults to ``w``); the §7 regression table."""
    return transformer_lipschitz_bound(
        [BlockNorms.uniform(w)] * n_blocks,
        embed_norm,
        w if head_norm is None else head_norm,
        softmax_scale=softmax_scale,
        gelu_lipschitz=gelu_lipschitz,
    )


def mlp_lipschitz_bound(norms: Sequence[float], activation_lipschitz: float = 1.0) -> float:
    """``prod_l |W_l|_{RMS->RMS}`` times ``activation_lipschitz^(L-1)`` (1 for ReLU).

    This is the RMS->RMS bound; convert to l2->l2 with ``K_l2 = K_RMS · sqrt(out_dim / in_dim)``
    (e.g. ``sqrt(10/3072)`` for the CIFAR-10 MLP).
    """
    K = 1.0
    for n in norms:
        K *= float(n)
    return K * float(activation_lipschitz) ** max(len(norms) - 1, 0)
