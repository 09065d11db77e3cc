"""Checks of the arguments callers give, written once.

Each raises ``TypeError`` or ``ValueError`` with a message that names the argument,
shows the bad value and says what would be accepted.
"""

from __future__ import annotations

import math
import operator
import re
from array import array
from collections.abc import Hashable, Sequence
from fractions import Fraction

import numpy as np
import torch

__all__ = [
    "INT32_MAX",
    "TokenIds",
    "as_tokens",
    "check_count",
    "check_int",
    "check_namespace",
    "check_number",
    "check_seconds",
    "parse_budget",
]

INT32_MAX = 2**31 - 1


class TokenIds(array):
    """An ``array('i')`` of token ids already checked to be in ``[0, 2**31 - 1]``:
    :func:`as_tokens` takes it as it is. Made by the code that checked them (a request's
    input checks); slices and sums of it are plain arrays again."""

    __slots__ = ()


def as_tokens(tokens: object, name: str = "tokens") -> array:
    """Check and convert token ids to the tree's ``array('i')``. O(n).

    Takes a 1-D integer tensor, an ``array('i')`` (returned as it is) or a sequence
    of ints. Raises ``TypeError`` for anything else (floats, bools, strings, a 2-D
    tensor) and ``ValueError`` for ids below 0 or above 2**31 - 1.

    >>> as_tokens([3, 1, 2])
    array('i', [3, 1, 2])
    >>> as_tokens([3, -1])
    Traceback (most recent call last):
    ...
    ValueError: tokens: token ids must be in [0, 2147483647], got -1
    """
    if type(tokens) is TokenIds:
        return tokens
    if type(tokens) is array and tokens.typecode == "i":
        run = tokens
    elif isinstance(tokens, torch.Tensor):
        return _tensor_tokens(tokens, name)
    elif isinstance(tokens, (str, bytes)) or not isinstance(tokens, Sequence):
        raise TypeError(f"{name}: expected a sequence of ints, got {type(tokens).__name__}")
    else:
        for t in tokens if set(map(type, tokens)) - {int} else ():
            if isinstance(t, bool) or not hasattr(type(t), "__index__"):
                raise TypeError(f"{name}: expected token ids as ints, got {t!r} of type {type(t).__name__}")
        try:
            run = array("i", map(operator.index, tokens))
        except OverflowError:
            bad = next(t for t in map(operator.index, tokens) if not 0 <= t <= INT32_MAX)
            raise ValueError(f"{name}: token ids must be in [0, {INT32_MAX}], got {bad}") from None
    if run:
        low = int(np.frombuffer(run, dtype=np.int32).min())
        if low < 0:
            raise ValueError(f"{name}: token ids must be in [0, {INT32_MAX}], got {low}")
    return run


def _tensor_tokens(tokens: torch.Tensor, name: str) -> array:
    if tokens.is_meta:
        raise ValueError(f"{name}: a tensor on the meta device holds no token ids; give one with data")
    if tokens.dim() != 1 or tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise TypeError(
            f"{name}: expected a 1-D integer tensor or a sequence of ints, "
            f"got a {tokens.dim()}-D tensor of {tokens.dtype}"
        )
    values = tokens.detach().cpu().numpy()
    if values.size and (int(values.min()) < 0 or int(values.max()) > INT32_MAX):
        raise ValueError(f"{name}: token ids must be in [0, {INT32_MAX}], got {values.min()}..{values.max()}")
    return array("i", values.astype(np.int32).tobytes())


def check_int(value: object, name: str, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` if it is an int (not a bool) in ``[low, high]`` (either end open when
    None), else raise ``ValueError`` naming ``name`` and what is accepted.

    >>> check_int(3, "n", 0)
    3
    >>> check_int(True, "n", 0)
    Traceback (most recent call last):
    ...
    ValueError: n: expected an int >= 0, got True
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or (low is not None and value < low)
        or (high is not None and value > high)
    ):
        if low is not None and high is not None:
            accepted = f"an int in [{low}, {high}]"
        elif low is not None:
            accepted = f"an int >= {low}"
        elif high is not None:
            accepted = f"an int <= {high}"
        else:
            accepted = "an int"
        raise ValueError(f"{name}: expected {accepted}, got {value!r}")
    return value


def check_count(value: object, name: str) -> int:
    """Return ``value`` if it is an int >= 0 (not a bool), else raise ``ValueError``."""
    return check_int(value, name, 0)


def check_number(
    value: object, name: str, *, low: float = 0.0, high: float = float("inf"), open_low: bool = False
) -> float:
    """Return ``value`` as a float if it is a finite number (not a bool) in ``[low, high]``
    (``(low, high]`` with ``open_low``), else raise ``ValueError`` naming ``name``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # not NaN
    if ok:
        ok = (value > low if open_low else value >= low) and value <= high and value != float("inf")  # type: ignore[operator]
    if not ok:
        bracket = "(" if open_low else "["
        upper = "" if high == float("inf") else f", {high}]"
        accepted = f"a number in {bracket}{low}{upper}" if upper else f"a number {'>' if open_low else '>='} {low}"
        raise ValueError(f"{name}: expected {accepted}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_seconds(value: object, name: str) -> float:
    """Return ``value`` if it is a finite number of seconds >= 0, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise ValueError(f"{name}: expected a number of seconds >= 0, got {value!r}")
    return float(value)


def check_namespace(namespace: object) -> Hashable:
    """Return ``namespace`` if it is hashable, else raise ``TypeError``."""
    try:
        hash(namespace)
    except TypeError:
        raise TypeError(
            f"namespace: expected a hashable value (a str, an int, a tuple, None), "
            f"got {namespace!r} of type {type(namespace).__name__}"
        ) from None
    return namespace


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
