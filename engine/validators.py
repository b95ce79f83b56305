"""Generic attrs validators for plugin configs (``field(..., validator=...)``).

Each validator raises ``ValueError`` with a message naming the field and the rule; ``structure_table`` turns
that into a one-line ``BadInput`` ("plugins.NAME: <message>; fix the value") before any data or model is
built. Every validator carries its rule as ``str(validator)`` (e.g. ``"finite, > 0"``) so documentation
tools can show it next to the field.

Numbers from TOML or the command line may be ints where a float is declared (``lr=1``), so the numeric
checks accept both, and refuse booleans (``lr=true`` is a type error, not 1).
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable


class Rule:
    """A validator with a readable rule: ``Rule("> 0", predicate)`` checks ``predicate(value)``."""

    def __init__(self, text: str, ok: Callable[[Any], bool]) -> None:
        self.text = text
        self._ok = ok

    def __call__(self, inst, attribute, value) -> None:
        if not self._ok(value):
            raise ValueError(f"{attribute.name}={value!r} must be {self.text}")

    def __str__(self) -> str:
        return self.text

    __repr__ = __str__


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value) -> bool:
    return _number(value) and math.isfinite(value)


#: A finite number (refuses nan and +-inf).
finite = Rule("a finite number", _finite)


def at_least(lo: float) -> Rule:
    """Finite and >= ``lo``."""
    return Rule(f"finite and >= {lo:g}", lambda v: _finite(v) and v >= lo)


def in_range(lo: float, hi: float, *, low_open: bool = False, high_open: bool = False) -> Rule:
    """Finite and in the interval from ``lo`` to ``hi`` (closed unless ``low_open`` / ``high_open``)."""
    text = f"a number in {'(' if low_open else '['}{lo:g}, {hi:g}{')' if high_open else ']'}"

    def ok(v) -> bool:
        if not _finite(v):
            return False
        above = v > lo if low_open else v >= lo
        below = v < hi if high_open else v <= hi
        return above and below

    return Rule(text, ok)


#: The largest magnitude a float setting may have (learning rates, weights, temperatures, caps, epsilons):
#: a value beyond 1e6 is a typo in every shipped config, refused before it reaches torch.
MAX_MAGNITUDE = 1e6
#: In (0, 1e6].
finite_positive = in_range(0, MAX_MAGNITUDE, low_open=True)
#: In [0, 1e6].
finite_non_negative = in_range(0, MAX_MAGNITUDE)
#: In [-1e6, 1e6] (signed settings: reward weights, coefficients, thresholds).
bounded = in_range(-MAX_MAGNITUDE, MAX_MAGNITUDE)


def length(n: int) -> Rule:
    """A list of exactly ``n`` items."""
    return Rule(f"a list of {n} values", lambda v: isinstance(v, (list, tuple)) and len(v) == n)


def each(rule: Rule, *, min_items: int = 0, max_items: int | None = None) -> Rule:
    """A list whose every item satisfies ``rule``, with between ``min_items`` and ``max_items`` items."""
    count = (
        (f"{min_items}" if min_items == max_items else f"{min_items}..{max_items}")
        if max_items is not None
        else f">= {min_items}"
    )
    text = (
        f"a list of {count} values, each {rule.text}"
        if min_items or max_items is not None
        else f"a list of values, each {rule.text}"
    )

    def ok(v) -> bool:
        if not isinstance(v, (list, tuple)) or len(v) < min_items:
            return False
        if max_items is not None and len(v) > max_items:
            return False
        return all(rule._ok(x) for x in v)

    return Rule(text, ok)


def subset_of(*allowed: str, non_empty: bool = True) -> Rule:
    """A list of distinct strings drawn from ``allowed`` (non-empty unless ``non_empty=False``)."""
    text = f"a {'non-empty ' if non_empty else ''}list of distinct values from {', '.join(allowed)}"

    def ok(v) -> bool:
        if not isinstance(v, (list, tuple)) or (non_empty and not v):
            return False
        return len(set(v)) == len(v) and all(x in allowed for x in v)

    return Rule(text, ok)


def _int_text(n: int) -> str:
    """Large bounds as powers (2**62, 2**32-1, 10**6): readable in messages and ``hookmix describe``."""
    for base in (2, 10):
        for k in range(4 if base == 10 else 16, 64):
            if n == base**k:
                return f"{base}**{k}"
            if n == base**k - 1 and base == 2:
                return f"2**{k}-1"
    return str(n)


def int_range(lo: int, hi: int) -> Rule:
    """An integer in ``lo..hi`` (inclusive): a count with a sane upper bound, refused before allocation."""
    return Rule(
        f"an integer in {_int_text(lo)}..{_int_text(hi)}",
        lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi,
    )


#: Seeds: torch accepts 64-bit seeds; larger values overflow inside torch.manual_seed.
seed = int_range(0, 2**63 - 1)

#: The widest layer any shipped model plugin builds (a sane bound: 2**20 units; a 2**20 x 2**20 fp32
#: matrix alone is 4 TiB). Wider values are refused at resolve time, before allocation.
MAX_WIDTH = 2**20
width = int_range(1, MAX_WIDTH)


#: The largest model a shipped model plugin agrees to build: 10**10 parameters (40 GB in fp32). Checked from
#: the config before any tensor is allocated, so a typo such as hidden=[99999999999] is one line, not an OOM.
MAX_PARAMETERS = 10**10


def check_parameter_count(where: str, count: int) -> None:
    """Refuse (BadInput) a model whose estimated parameter ``count`` exceeds :data:`MAX_PARAMETERS`."""
    from engine.errors import BadInput

    if count > MAX_PARAMETERS:
        raise BadInput(
            f"{where}: the model would have about {count:.3g} parameters, more than the "
            f"{MAX_PARAMETERS:.0e} limit; lower the widths / layers"
        )


#: Devices the loop supports; others (meta, mps, xla) are refused before anything is built.
device_name = Rule(
    "cpu, cuda, cuda:N or auto", lambda v: isinstance(v, str) and re.fullmatch(r"cpu|auto|cuda(:\d+)?", v) is not None
)

#: A path or URL (no NUL character: the OS would refuse it later with a less clear error).
no_nul = Rule("a path or URL without NUL characters", lambda v: isinstance(v, str) and "\x00" not in v)


def describe(validator) -> str:
    """The rule text of a validator built here (or an ``attrs`` ``and_`` of them); '' when unknown."""
    if validator is None:
        return ""
    if isinstance(validator, Rule):
        return validator.text
    inner = getattr(validator, "_validators", None)  # attrs.validators.and_
    if inner:
        return ", ".join(t for t in (describe(v) for v in inner) if t)
    return ""


__all__ = [
    "MAX_MAGNITUDE",
    "MAX_PARAMETERS",
    "MAX_WIDTH",
    "Rule",
    "at_least",
    "bounded",
    "check_parameter_count",
    "describe",
    "each",
    "finite",
    "finite_non_negative",
    "finite_positive",
    "in_range",
    "int_range",
    "length",
    "seed",
    "subset_of",
    "width",
]
