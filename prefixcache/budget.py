"""Memory budgets: ``"4GiB"``, ``"512MB"``, ``"1.5GB"`` or an int of bytes."""

from __future__ import annotations

import math
import re
from fractions import Fraction

__all__ = ["parse_budget"]

_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_PATTERN = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*")
_ACCEPTED = (
    'a positive int of bytes, or a string such as "4GiB", "512MB", "1.5GB" '
    "(units B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)"
)


def parse_budget(budget: int | str, name: str = "budget") -> int:
    """Return ``budget`` in bytes, rounded down to a whole byte.

    SI units are powers of 1000 and IEC units powers of 1024; unit letters are
    case-insensitive. Raises ``TypeError`` for anything but an int or a str and
    ``ValueError`` for a string that does not parse or a value below one byte,
    naming ``name`` in the message.

    >>> parse_budget("4GiB"), parse_budget("1.5GB"), parse_budget(512)
    (4294967296, 1500000000, 512)
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, str)):
        raise TypeError(f"{name}: expected {_ACCEPTED}; got {budget!r} of type {type(budget).__name__}")
    if isinstance(budget, int):
        value = budget
    else:
        found = _PATTERN.fullmatch(budget)
        unit = found.group(2).lower() if found else ""
        if found is None or (unit and unit not in _UNITS):
            raise ValueError(f"{name}: cannot read {budget!r}; expected {_ACCEPTED}")
        value = math.floor(Fraction(found.group(1)) * _UNITS[unit or "b"])
    if value < 1:
        raise ValueError(f"{name}: must be at least one byte, got {budget!r}; expected {_ACCEPTED}")
    return value
