"""A hit: the pinned, cached prefix of a request's tokens, until released.

The hit keeps what the match found (the node it pinned and the slots of its
tokens), so that gathering the prefix and inserting what follows need no second
walk from the root. That part is a :class:`Lease` the cache that made the hit
reads and changes under its lock; callers see only the hit's read-only fields.
"""

from __future__ import annotations

from array import array
from collections.abc import Hashable
from types import TracebackType
from typing import Protocol

from .claims import Claim
from .tree import Node

__all__ = ["Hit", "Lease"]


class _Owner(Protocol):
    def release(self, hit: Hit) -> None: ...


class Lease:
    """The cache's side of a hit: the pinned node, its path's slots, the slot numbering they
    belong to, the model weights it was made under (see :meth:`PrefixCache.rebind`), the
    tokens its request claimed to compute (see :mod:`prefixcache.claims`), and whether the
    pin was released. Read and changed under the cache's lock."""

    __slots__ = ("claim", "counted", "epoch", "generation", "matched", "node", "owner", "released", "slots")

    def __init__(self, owner: _Owner, node: Node | None, slots: array, epoch: int, generation: int = 0) -> None:
        self.owner = owner
        self.node = node
        self.slots = slots
        self.epoch = epoch
        self.generation = generation
        self.matched = len(slots)
        """Tokens the tree matched, at least those served (a model with window or recurrent
        layers serves less where a hit cannot end: see :mod:`prefixcache.stores`)."""
        self.counted = 0
        """Of its tokens, those counted in ``stats.hit_tokens`` (see :meth:`PrefixCache.reused`)."""
        self.claim: Claim | None = None
        self.released = False


class Hit:
    """A cached prefix of a request's tokens, pinned until released.

    Use it as a context manager, or call :meth:`release` once done with the KV. While
    pinned its tokens cannot be evicted.
    """

    __slots__ = ("_lease", "_length", "_matched", "_namespace", "_tokens")

    def __init__(self, lease: Lease, namespace: Hashable, tokens: array) -> None:
        self._lease = lease
        self._length = len(lease.slots)
        self._matched = max(lease.matched, self._length)
        self._namespace = namespace
        self._tokens = tokens

    @property
    def length(self) -> int:
        """How many leading tokens are cached."""
        return self._length

    @property
    def matched(self) -> int:
        """How many leading tokens the tree holds, at least :attr:`length`: more where the
        prefix could not be cut there (no snapshot of recurrent state, or an incomplete
        window), so that a request computing from :attr:`length` leaves one there."""
        return self._matched

    @property
    def namespace(self) -> Hashable:
        """The namespace it was found in."""
        return self._namespace

    @property
    def claimed(self) -> bool:
        """Whether its request holds a claim to compute what follows the hit, which other
        requests for the same tokens may be waiting on (see :mod:`prefixcache.claims`)."""
        return self._lease.claim is not None

    @property
    def tokens(self) -> array:
        """The token ids that were looked up (``array('i')``; the first ``length`` are cached)."""
        return self._tokens

    @property
    def lease(self) -> Lease:
        """The cache's side of the hit (for the cache that made it)."""
        return self._lease

    @property
    def released(self) -> bool:
        """True once :meth:`release` has run."""
        return self._lease.released

    def release(self) -> None:
        """Unpin the prefix. Safe to call more than once."""
        self._lease.owner.release(self)

    def __enter__(self) -> Hit:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self._lease.released else "pinned"
        return f"Hit(length={self._length}, namespace={self._namespace!r}, {state})"
