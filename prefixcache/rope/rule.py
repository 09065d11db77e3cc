"""Regimes of forward lengths, and the rule that says where cached KV may be reused."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

from ..arguments import check_int
from .kinds import LENGTH_DEPENDENT_TYPES, RopeKind

__all__ = ["Regime", "RopeRule"]


class Regime(NamedTuple):
    """A range of forward lengths within which a rotary embedding rotates every position alike.

    A forward's length is its largest position id plus one.
    """

    first: int
    """The shortest forward length in the regime."""
    last: int | None
    """The longest, or None for no bound."""
    reuse: bool
    """May KV computed in this regime be stored and served to requests in it."""
    label: str | None
    """What keeps the regime's cache entries apart from other regimes' (None for a
    rule with a single regime: entries need no label)."""

    def contains(self, length: int) -> bool:
        """Is a forward of ``length`` in this regime.

        >>> Regime(1, 32, True, "rope:1-32").contains(33)
        False
        """
        return self.first <= length and (self.last is None or length <= self.last)

    def row_limit(self, batch_length: int, row_length: int) -> int | None:
        """How many leading tokens of a row (prompt, then generated) were computed in
        this regime, for a request whose forward length is ``batch_length`` and
        whose row has ``row_length`` prompt tokens; None for no limit.

        While decoding, the row's token at position ``p`` is computed in a forward
        of length ``p + 1 + (batch_length - row_length)`` (the longest row sets it).

        >>> Regime(1, 32, True, "rope:1-32").row_limit(30, 25)
        27
        >>> Regime(33, None, True, "rope:33-").row_limit(40, 40) is None
        True
        """
        if self.last is None:
            return None
        return self.last - (batch_length - row_length)


@dataclass(frozen=True)
class RopeRule:
    """Where cached KV may be reused for one model's rotary embedding.

    Forward lengths fall in regimes separated by ``bounds``: ``[1, bounds[0]]``,
    ``[bounds[0] + 1, bounds[1]]``, ..., ``[bounds[-1] + 1, ...)``; ``reuse[i]``
    says whether regime ``i`` may reuse KV. Entries computed in one regime are
    served only to requests in the same regime.

    >>> rule = RopeRule(RopeKind.LENGTH_DEPENDENT, ("longrope",), bounds=(32,), reuse=(True, True))
    >>> [r.label for r in rule.regimes]
    ['rope:1-32', 'rope:33-']
    >>> rule.may_reuse(20, 32), rule.may_reuse(20, 33), rule.may_reuse(33, 90)
    (True, False, True)
    """

    kind: RopeKind
    rope_types: tuple[str, ...]
    """The rotary types found in the config (one per layer type when they differ)."""
    bounds: tuple[int, ...] = ()
    reuse: tuple[bool, ...] = (True,)
    why: str = ""
    """One sentence on what the rotation depends on; names the thresholds."""

    def __post_init__(self) -> None:
        if len(self.reuse) != len(self.bounds) + 1:
            raise ValueError(f"reuse: expected {len(self.bounds) + 1} flags for bounds {self.bounds}, got {self.reuse}")
        if any(b < 1 for b in self.bounds) or list(self.bounds) != sorted(set(self.bounds)):
            raise ValueError(f"bounds: expected increasing lengths >= 1, got {self.bounds}")

    @cached_property
    def regimes(self) -> tuple[Regime, ...]:
        """Every regime, shortest lengths first (made once)."""
        firsts = (1, *(b + 1 for b in self.bounds))
        lasts: tuple[int | None, ...] = (*self.bounds, None)
        single = not self.bounds
        return tuple(
            Regime(first, last, ok, None if single else f"rope:{first}-{'' if last is None else last}")
            for first, last, ok in zip(firsts, lasts, self.reuse, strict=True)
        )

    @property
    def serial(self) -> bool:
        """Must forward passes run one at a time: the rotary module rewrites its shared
        frequencies in each one (both length-dependent types in transformers 5.23), so
        two overlapping passes may rotate with each other's.

        >>> RopeRule(RopeKind.POSITION_ONLY, ("yarn",)).serial
        False
        """
        return any(t in LENGTH_DEPENDENT_TYPES for t in self.rope_types)

    def regime(self, length: int) -> Regime:
        """The regime of a forward of ``length`` tokens (its largest position id + 1).

        Raises ``ValueError`` for a length below 1. O(number of bounds).
        """
        check_int(length, "length", 1)
        for regime in self.regimes:
            if regime.contains(length):
                return regime
        raise AssertionError("regimes cover every length")

    def may_reuse(self, prefix_length: int, length: int) -> bool:
        """May the KV of a prefix computed by a forward of ``prefix_length`` tokens be
        served to a request whose forward has ``length`` tokens."""
        here = self.regime(length)
        return here.reuse and here.contains(prefix_length)
