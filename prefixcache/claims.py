"""Prefixes being computed now, so that requests of one process do not compute one twice.

A request whose match ends at node X in a namespace and that will compute
``tokens[have:limit]`` leaves a *claim* there. A later request whose match ends at
the same node, and whose own uncached tokens begin with at least
:data:`SHARED_MIN_TOKENS` of the claimed ones (or all of its own, if fewer), waits
for the claim to end (the first request's insert, or its release if it failed),
then matches again from X and computes only what is still missing:

    # [0, have)           cached: both requests hit it
    # [have, have + s)    claimed by the first request, s >= SHARED_MIN_TOKENS:
    #                     the second waits, then hits it too
    # [have + s, limit)   the second request's own tokens: it computes them

Two rules keep this free of deadlock: a request waits only before it leaves a
claim of its own, and never for a claim of its own thread (the rows of one batch).
Waits are bounded; a request whose claim ended without an insert leaves the tokens
to the next waiter, which claims them in turn.
"""

from __future__ import annotations

import threading
from array import array
from collections.abc import Hashable

from .tree import Node, common_length, namespace_key

__all__ = ["SHARED_MIN_TOKENS", "Claim", "Claims"]

SHARED_MIN_TOKENS = 64
"""Uncached tokens two requests must share before the later one waits for the first."""


class Claim:
    """What one request is computing: ``tokens[have:limit]`` below the node its hit pinned."""

    __slots__ = ("have", "key", "limit", "namespace", "thread", "tokens")

    def __init__(self, key: object, namespace: Hashable, tokens: array, have: int, limit: int) -> None:
        self.key = key
        self.namespace = namespace
        self.tokens = tokens
        self.have = have
        self.limit = limit
        self.thread = threading.get_ident()


def _key(node: Node | None, namespace: Hashable) -> object:
    # A hit on nothing, or on a namespace's root, hangs below the root, which comes and goes.
    return ("root", namespace_key(namespace)) if node is None or node.parent is None else node


class Claims:
    """The open claims, by the node they hang below. Every method assumes the cache's lock is held."""

    def __init__(self) -> None:
        self._open: dict[object, list[Claim]] = {}

    def __len__(self) -> int:
        return sum(len(claims) for claims in self._open.values())

    def open(self, node: Node | None, namespace: Hashable, tokens: array, have: int, limit: int) -> Claim:
        """Claim ``tokens[have:limit]``, to be computed below ``node`` (pinned by the caller's hit)."""
        claim = Claim(_key(node, namespace), namespace, tokens, have, limit)
        self._open.setdefault(claim.key, []).append(claim)
        return claim

    def close(self, claim: Claim) -> None:
        """End ``claim`` (computed and stored, or given up). Safe to call more than once."""
        claims = self._open.get(claim.key)
        if claims is not None and claim in claims:
            claims.remove(claim)
            if not claims:
                del self._open[claim.key]

    def shared(self, node: Node | None, namespace: Hashable, tokens: array, have: int, limit: int) -> Claim | None:
        """An open claim of another thread below ``node`` whose tokens begin with enough of
        ``tokens[have:limit]`` to be worth waiting for, or None. O(claims there x their length)."""
        claims = self._open.get(_key(node, namespace))
        if not claims:
            return None
        me = threading.get_ident()
        want = limit - have
        for claim in claims:
            if claim.thread == me or claim.have != have:  # the key holds the node, so the namespace
                continue
            theirs = claim.tokens[have : claim.limit]
            if not theirs or theirs[0] != tokens[have]:
                continue
            shared = common_length(theirs, tokens[:limit], have)
            if shared >= min(SHARED_MIN_TOKENS, want):
                return claim
        return None
