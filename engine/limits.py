"""attrs validators of the ``[run]`` table: ranges that keep every value inside what torch and the
loop accept, so a bad value is refused with one line before anything runs."""

from __future__ import annotations

import math
import re

INT64_MAX = 2**63 - 1
_DEVICE = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")


def _show(n: int) -> str:
    return f"2**{n.bit_length() - 1}" if n > 2**20 and n & (n - 1) == 0 else str(n)


def int_range(lo: int, hi: int):
    """The value must be an integer in ``lo..hi`` (``hi`` keeps counters inside int64 with headroom)."""
    def check(inst, attribute, value):
        if not lo <= value <= hi:
            raise ValueError(f"{attribute.name} must be an integer from {_show(lo)} to {_show(hi)}, got {value}")
    return check


def finite_non_negative(inst, attribute, value):
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value}")


def device_name(inst, attribute, value):
    if not _DEVICE.match(value):
        raise ValueError(f"{attribute.name} {value!r} is not supported; use cpu, cuda, cuda:N or auto")


def no_nul(inst, attribute, value):
    if "\x00" in value:
        raise ValueError(f"{attribute.name} contains a NUL character; pass a path or URL")
