"""Muon (2-D matrices) + AdamW (everything else) for Lipschitz-constrained training.

Muon's core is ``torch.optim.Muon`` (never re-implemented here). What this module adds:

**Update scale (spec §1 item 2).** The paper's update is ``lr · sqrt(fan_out/fan_in) · msign(m)``, whose
RMS->RMS norm is ``lr`` times the orthogonalizer's output singular values (≈1) for *every* shape.
``torch.optim.Muon``'s ``adjust_lr_fn="original"`` uses ``lr · sqrt(max(1, fan_out/fan_in))``: right for
square/tall matrices, but for wide ones (fan_out < fan_in) the update is then ``sqrt(fan_in/fan_out)``
times too large in RMS->RMS units. We keep ``adjust_lr_fn="original"`` and give every Muon parameter its
own param group whose torch ``lr`` is ``lr_nominal · lr_scale`` with
``lr_scale = min(1, sqrt(fan_out/fan_in))``, so the applied step is exactly
``lr_nominal · sqrt(fan_out/fan_in) · NS(m)`` for all shapes. Because torch decays with the *group* lr
(``p·(1 - lr·wd)``), the group's ``weight_decay`` is ``wd / lr_scale``: the decay per step stays
``lr_nominal · wd`` (decoupled decay tied to the step size, spec §3 item 5).
LR schedulers work unchanged: they rescale every group's lr multiplicatively (``initial_lr`` is per
group), which preserves ``lr_scale``. ``group["lr_scale"]`` is stored in the group (and state_dict).

**Update-norm bound for the soft-cap coupling (spec §1 item 1).** ``max_update_norm(p)`` returns
``lr_nominal · overshoot · overshoot_margin``, the RMS->RMS bound of the update. ``overshoot`` is
``spectral.ns_overshoot`` of the coefficients used (1.2024 for the default Keller NS5). torch.optim.Muon
runs Newton–Schulz in **bf16**, which can exceed the exact-arithmetic maximum slightly (1.2039 measured
vs 1.2024), so ``overshoot_margin`` defaults to 1.05 (the official NanoGPT code's margin). The value of
the *last* step is recorded per group at ``step()`` time, so it is correct whether or not an LR
scheduler has already moved the lr. We use the true RMS->RMS bound ``eta`` (not the JAX code's
``eta/s``, spec §1 item 3), which is what the coupling's certificate needs for non-square matrices.

**Defaults.** ``weight_decay=0`` (torch's Muon default is 0.1; the soft cap needs 0, spec §1 item 12).
``momentum=0.95, nesterov=True`` are the torch/Keller defaults; the JAX reference runs use
``momentum=0.9, nesterov=False`` (torch's ``buf.lerp_(g, 1-mu)`` is exactly the EMA ``m <- mu·m + (1-mu)·g``).

**Checkpointing.** ``state_dict()`` = ``{"muon": ..., "adam": ...}`` of the two inner optimizers
(param-group extras such as ``lr_scale``, ``initial_lr`` and the recorded bound included);
``load_state_dict`` restores them and relinks ``param_groups``, so a resume is bit-exact.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch.optim import AdamW, Muon, Optimizer

from . import constraint_maps as _cm
from . import spectral as _sp

__all__ = ["MuonAdamW", "muon_lr_scale"]

_FORMAT = "hookmix.lipschitz.MuonAdamW/1"


def muon_lr_scale(shape: Sequence[int]) -> float:
    """Factor on torch.optim.Muon's group lr so that ``adjust_lr_fn="original"`` yields
    ``lr·sqrt(fan_out/fan_in)``: ``sqrt(fan_out/fan_in) / sqrt(max(1, fan_out/fan_in)) = min(1, sqrt(A/B))``."""
    A, B = int(shape[0]), int(shape[1])
    return min(1.0, math.sqrt(A / B))


ParamSpec = Union[torch.Tensor, Tuple[str, torch.Tensor], Dict[str, Any]]


def _expand(params: Optional[Iterable[ParamSpec]]) -> List[Tuple[Optional[str], torch.Tensor, Dict[str, Any]]]:
    """Flatten tensors, (name, tensor) pairs and {"params": [...], **overrides} dicts."""
    out: List[Tuple[Optional[str], torch.Tensor, Dict[str, Any]]] = []
    if params is None:
        return out
    for item in params:
        if isinstance(item, dict):
            over = {k: v for k, v in item.items() if k != "params"}
            for sub in _expand(item["params"]):
                name, p, inner = sub
                out.append((name, p, {**over, **inner}))
        elif isinstance(item, tuple):
            out.append((item[0], item[1], {}))
        elif isinstance(item, torch.Tensor):
            out.append((None, item, {}))
        else:
            raise TypeError(f"unsupported parameter spec {type(item)}")
    return out


class MuonAdamW(Optimizer):
    """Muon (``torch.optim.Muon``) for 2-D matrices + ``torch.optim.AdamW`` for the rest.

    Args:
        muon_params: 2-D parameters (tensors, ``(name, tensor)`` pairs, or dicts
            ``{"params": [...], "lr": ..., "weight_decay": ..., "momentum": ..., "nesterov": ...}`` to
            override per group, e.g. a smaller head lr). Each parameter gets its own param group.
        adam_params: everything else (embeddings, gains, biases); same accepted forms, one group per
            dict (plain tensors share one group).
        lr: nominal Muon lr = RMS->RMS size of the update per unit of orthogonalizer output.
        adam_lr, adam_betas, adam_eps, adam_weight_decay: AdamW settings.
        momentum, nesterov, weight_decay (default 0!), ns_coefficients, ns_steps: Muon settings
            (``weight_decay`` is decoupled and tied to the nominal lr: ``p <- p·(1 - lr·wd)``).
        overshoot_margin: safety factor on the orthogonalizer overshoot in ``max_update_norm``.

    Param groups are exposed (``param_groups``: Muon groups first, then Adam groups) for LR schedulers;
    Muon groups carry ``kind="muon"``, ``lr_scale``, ``name``; Adam groups ``kind="adam"``.
    """

    def __init__(
        self,
        muon_params: Optional[Iterable[ParamSpec]],
        adam_params: Optional[Iterable[ParamSpec]] = None,
        lr: float = 0.02,
        adam_lr: float = 3e-4,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        adam_betas: Tuple[float, float] = (0.9, 0.95),
        adam_eps: float = 1e-8,
        adam_weight_decay: float = 0.0,
        ns_coefficients: Tuple[float, float, float] = (3.4445, -4.7750, 2.0315),
        ns_steps: int = 5,
        overshoot_margin: float = 1.05,
    ):
        self.overshoot = _sp.ns_overshoot(ns_coefficients, steps=ns_steps)
        self.overshoot_margin = float(overshoot_margin)

        muon_groups: List[Dict[str, Any]] = []
        for name, p, over in _expand(muon_params):
            if p.ndim != 2:
                raise ValueError(f"Muon parameter {name or ''} must be 2-D, got shape {tuple(p.shape)}")
            scale = muon_lr_scale(p.shape)
            nominal_lr = float(over.get("lr", lr))
            wd = float(over.get("weight_decay", weight_decay))
            muon_groups.append(
                {
                    "params": [p],
                    "name": name,
                    "kind": "muon",
                    "lr_scale": scale,
                    "lr": nominal_lr * scale,
                    "weight_decay": wd / scale,
                    "momentum": float(over.get("momentum", momentum)),
                    "nesterov": bool(over.get("nesterov", nesterov)),
                    "last_update_bound": None,
                    "last_decay": None,
                }
            )

        adam_groups: List[Dict[str, Any]] = []
        loose: List[torch.Tensor] = []
        for item in adam_params or []:
            if isinstance(item, dict):
                g = {k: v for k, v in item.items() if k != "params"}
                ps = _expand(item["params"])
                g["params"] = [p for _, p, _ in ps]
                g.setdefault("kind", "adam")
                g.setdefault("name", None)
                adam_groups.append(g)
            else:
                ((_, p, _),) = _expand([item])
                loose.append(p)
        if loose:
            adam_groups.insert(0, {"params": loose, "kind": "adam", "name": None})

        self._muon = (
            Muon(
                muon_groups,
                lr=lr,
                weight_decay=weight_decay,
                momentum=momentum,
                nesterov=nesterov,
                ns_coefficients=tuple(ns_coefficients),
                ns_steps=ns_steps,
                adjust_lr_fn="original",
            )
            if muon_groups
            else None
        )
        self._adam = (
            AdamW(adam_groups, lr=adam_lr, betas=adam_betas, eps=adam_eps, weight_decay=adam_weight_decay)
            if adam_groups
            else None
        )
        self._initializing = True
        super().__init__(self._inner_groups(), {"lr": lr})
        self._initializing = False
        self._by_param: Dict[int, Dict[str, Any]] = {}
        self._reindex()

    # ------------------------------------------------------------------ plumbing

    def _inner(self) -> List[Optimizer]:
        return [o for o in (self._muon, self._adam) if o is not None]

    def _inner_groups(self) -> List[Dict[str, Any]]:
        return [g for o in self._inner() for g in o.param_groups]

    def _reindex(self) -> None:
        self.param_groups = self._inner_groups()
        self._by_param = {}
        if self._muon is not None:
            for g in self._muon.param_groups:
                for p in g["params"]:
                    self._by_param[id(p)] = g

    @property
    def state(self):  # type: ignore[override]
        """Merged per-parameter state of the inner optimizers (read view; per-param dicts are shared)."""
        if getattr(self, "_muon", None) is None and getattr(self, "_adam", None) is None:
            return {}
        merged: Dict[torch.Tensor, Any] = {}
        for o in self._inner():
            merged.update(o.state)
        return merged

    @state.setter
    def state(self, value) -> None:  # Optimizer.__init__ assigns it; the inner optimizers own state
        pass

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        if getattr(self, "_initializing", False):
            return super().add_param_group(param_group)
        raise NotImplementedError("MuonAdamW: build a new optimizer instead of adding groups")

    def __getstate__(self) -> Dict[str, Any]:
        return self.__dict__.copy()

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reindex()  # parameter ids change under deepcopy/unpickling

    def __repr__(self) -> str:
        n_m = len(self._muon.param_groups) if self._muon else 0
        n_a = sum(len(g["params"]) for g in self._adam.param_groups) if self._adam else 0
        return (
            f"MuonAdamW(muon_params={n_m}, adam_params={n_a}, overshoot={self.overshoot:.5f}×{self.overshoot_margin})"
        )

    # ------------------------------------------------------------------ optimizer API

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._muon is not None:
            for g in self._muon.param_groups:
                nominal = float(g["lr"]) / g["lr_scale"]
                g["last_update_bound"] = nominal * self.overshoot * self.overshoot_margin
                g["last_decay"] = float(g["lr"]) * float(g["weight_decay"])
            self._muon.step()
        if self._adam is not None:
            self._adam.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self._inner():
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> Dict[str, Any]:  # type: ignore[override]
        return {
            "format": _FORMAT,
            "muon": self._muon.state_dict() if self._muon is not None else None,
            "adam": self._adam.state_dict() if self._adam is not None else None,
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:  # type: ignore[override]
        if state_dict.get("format") != _FORMAT:
            raise ValueError("not a MuonAdamW state_dict")
        for key, o in (("muon", self._muon), ("adam", self._adam)):
            sd = state_dict.get(key)
            if (o is None) != (sd is None):
                raise ValueError(f"state_dict {key!r} part does not match this optimizer")
            if o is not None:
                o.load_state_dict(sd)
        self._reindex()

    # ------------------------------------------------------------------ Lipschitz helpers

    def muon_group(self, param: torch.Tensor) -> Dict[str, Any]:
        try:
            return self._by_param[id(param)]
        except KeyError:
            raise KeyError("parameter is not optimised by Muon in this MuonAdamW") from None

    def nominal_lr(self, param: torch.Tensor) -> float:
        """Current nominal lr of a Muon parameter (group lr / lr_scale)."""
        g = self.muon_group(param)
        return float(g["lr"]) / g["lr_scale"]

    def max_update_norm(self, param: torch.Tensor, which: str = "last") -> float:
        """RMS->RMS bound of the Muon update of ``param``: ``lr · overshoot · overshoot_margin``.

        ``which="last"``: the update applied by the latest ``step()`` (falls back to "next" before the
        first step). ``which="next"``: from the current group lr.
        """
        g = self.muon_group(param)
        if which == "last" and g.get("last_update_bound") is not None:
            return float(g["last_update_bound"])
        if which not in ("last", "next"):
            raise ValueError("which must be 'last' or 'next'")
        return self.nominal_lr(param) * self.overshoot * self.overshoot_margin

    def decay_fraction(self, param: torch.Tensor, which: str = "last") -> float:
        """Fraction ``lr·wd`` removed by the decoupled weight decay (the coupling's ``wd`` argument)."""
        g = self.muon_group(param)
        if which == "last" and g.get("last_decay") is not None:
            return float(g["last_decay"])
        return float(g["lr"]) * float(g["weight_decay"])

    def soft_cap_alpha(self, param: torch.Tensor, w_max: float, strict: bool = True) -> float:
        """``constraint_maps.soft_cap_coupling(w_max, decay_fraction, max_update_norm)`` for the last step."""
        return _cm.soft_cap_coupling(w_max, self.decay_fraction(param), self.max_update_norm(param), strict=strict)
