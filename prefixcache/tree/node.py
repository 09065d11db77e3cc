"""The radix tree's nodes, its tiers, and what its operations return.

Token runs are ``array('i')`` (int32: slices copy and compare in C, a token takes
4 bytes); slots are ``array('q')``.
"""

from __future__ import annotations

from array import array
from collections.abc import Hashable, Sequence
from enum import IntEnum
from typing import NamedTuple

__all__ = [
    "DEVICE",
    "HOST",
    "EvictResult",
    "InsertResult",
    "NO_SLOTS",
    "MatchResult",
    "Node",
    "Retired",
    "Root",
    "Tier",
    "as_run",
    "common_length",
    "common_length_raw",
    "namespace_key",
    "namespace_of",
    "path_length",
    "path_slots",
    "path_tokens",
    "window_slots",
    "window_starts",
]

Run = array  # array('i') of token ids

NO_SLOTS = array("q")
"""The ``wslots`` of a node that holds none: shared, never changed in place (replaced)."""


class Tier(IntEnum):
    """Where a node's KV lives."""

    DEVICE = 0
    """The pool on the model's device."""
    HOST = 1
    """A second, cheaper pool that evicted KV moves to."""


DEVICE = Tier.DEVICE
HOST = Tier.HOST


def as_run(tokens: Sequence[int]) -> Run:
    """``tokens`` as an ``array('i')``: returned as is when it already is one. O(n).

    Raises ``OverflowError`` for an id outside int32 and ``TypeError`` for a non-int.
    """
    if isinstance(tokens, array) and tokens.typecode == "i":
        return tokens
    return array("i", tokens)


class Node:
    """One edge of the tree and the node it leads to.

    ``key`` is the edge's token run and ``slots`` the slot of each of those tokens in
    the pool of ``tier``. ``pins`` counts the pins whose path runs through this node;
    a node with pins is never evicted nor moved to the host. ``tick`` is the tree's
    clock at the last access. ``device_children`` counts the children whose KV is on
    the device.

    For a model with sliding-window or chunked layers, ``wslots`` are the window pool's
    slots of the edge's last ``len(wslots)`` tokens (at most a window's worth: older
    rows serve no hit at the node's end); for one with recurrent layers, ``snap`` is the snapshot pool's
    slot of the state after the edge's last token, or -1. Both stay on the device.
    """

    __slots__ = ("children", "device_children", "key", "parent", "pins", "slots", "snap", "tick", "tier", "wslots")

    def __init__(self, key: Run, slots: array, parent: Node | None, tick: int, tier: Tier = DEVICE) -> None:
        self.key = key
        self.slots = slots
        self.parent = parent
        self.children: dict[int, Node] = {}
        self.pins = 0
        self.tick = tick
        self.tier = tier
        self.device_children = 0
        self.wslots = NO_SLOTS
        self.snap = -1

    def __repr__(self) -> str:
        head = ", ".join(map(str, self.key[:4])) + (", ..." if len(self.key) > 4 else "")
        where = "device" if self.tier == DEVICE else "host"
        return f"Node(key=[{head}], tokens={len(self.key)}, {where}, pins={self.pins}, tick={self.tick})"


class Root(Node):
    """The root of one namespace: no tokens, never pinned, never evicted. ``lookup`` is the
    key the tree finds it by (:func:`namespace_key` of the namespace, or a :class:`Retired`)."""

    __slots__ = ("lookup", "namespace")

    def __init__(self, namespace: Hashable, tick: int) -> None:
        super().__init__(array("i"), array("q"), None, tick)
        self.namespace = namespace
        self.lookup: Hashable = namespace_key(namespace)


class _Bool:
    """Tags a bool in :func:`namespace_key` (one instance, compared by identity)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "bool"


_BOOL = _Bool()


def namespace_key(namespace: Hashable) -> Hashable:
    """What the tree looks ``namespace`` up by: the namespace itself, with bools tagged, at
    any depth of a tuple, so that ``True`` and ``1`` (equal in Python) are two namespaces,
    as they are in saved files and in the remote tier. O(size of the namespace).

    >>> namespace_key(True) == namespace_key(1), namespace_key(("a", 1)) == ("a", 1)
    (False, True)
    """
    if isinstance(namespace, tuple):
        return tuple(namespace_key(part) for part in namespace) if type(namespace) is tuple else namespace
    return (_BOOL, namespace) if type(namespace) is bool else namespace


class Retired:
    """The lookup key of a root retired by :meth:`RadixTree.retire_roots`: no namespace finds it."""

    __slots__ = ("namespace",)

    def __init__(self, namespace: Hashable) -> None:
        self.namespace = namespace

    def __repr__(self) -> str:
        return f"Retired({self.namespace!r})"


class MatchResult(NamedTuple):
    """The longest cached prefix of a token sequence."""

    length: int
    """How many leading tokens are cached."""
    slots: array
    """The pool slot of each of those tokens, in order (``len(slots) == length``)."""
    node: Node | None
    """The node whose path ends exactly at ``length``; pin it to keep the prefix.
    ``None`` when the namespace holds nothing yet."""


class InsertResult(NamedTuple):
    """What an insert found already cached and what it added."""

    prefix_length: int
    """Leading tokens that were already cached. Their slots in the tree are the old
    ones: the caller's ``slots[:prefix_length]`` were not taken and are the caller's
    to free."""
    node: Node
    """The node whose path ends exactly at the end of the inserted sequence."""


class EvictResult(NamedTuple):
    """What an eviction removed from the tree."""

    n_tokens: int
    """Tokens removed from the tree, both tiers (may exceed what was asked: nodes go whole)."""
    slots: array
    """Their device pool slots, now owned by nobody: the caller frees them."""
    host_slots: array
    """Their host pool slots, likewise."""
    moved: int = 0
    """Device tokens that moved to the host tier instead (see ``RadixTree.evict``'s ``demote``)."""
    window_slots: array = array("q")
    """Their window pool slots (read only: a fresh array for every result that has any)."""
    snapshots: array = array("q")
    """Their snapshot pool slots, likewise."""


# -- a node's path ----------------------------------------------------------------------


def namespace_of(node: Node) -> Hashable:
    """The namespace whose root ``node`` hangs under. O(depth)."""
    while node.parent is not None:
        node = node.parent
    assert isinstance(node, Root)
    return node.namespace


def path_tokens(node: Node) -> Run:
    """The whole token sequence from the root to the end of ``node``. O(depth + length)."""
    parts: list[Run] = []
    cur: Node | None = node
    while cur is not None:
        parts.append(cur.key)
        cur = cur.parent
    run = array("i")
    for part in reversed(parts):
        run += part
    return run


def path_slots(node: Node | None) -> array:
    """The slots of every token from the root to the end of ``node``. O(depth + length)."""
    parts: list[array] = []
    while node is not None and node.parent is not None:
        parts.append(node.slots)
        node = node.parent
    return array("q", b"".join(reversed(parts)))


def window_starts(node: Node | None) -> list[tuple[Node, int, int]]:
    """For ``node`` and each ancestor, root side first: ``(node, end, start)``, where ``end`` is
    the path's length at the node's end and ``start`` the first position from which window
    rows lie without a gap up to ``end``. O(depth)."""
    chain: list[Node] = []
    while node is not None and node.parent is not None:
        chain.append(node)
        node = node.parent
    out: list[tuple[Node, int, int]] = []
    end = start = 0
    for cur in reversed(chain):
        end += len(cur.key)
        held = len(cur.wslots)
        start = start if held == len(cur.key) else end - held
        out.append((cur, end, start))
    return out


def window_slots(node: Node | None, end: int, n: int) -> array:
    """The window slots of positions ``[end - n, end)`` of ``node``'s path (``end`` at most its
    length). Raises ``ValueError`` where one is missing. O(depth + n)."""
    parts: list[array] = []
    stop = path_length(node)
    want_from = end - n
    while node is not None and node.parent is not None and want_from < stop:
        begin = stop - len(node.key)
        held_from = stop - len(node.wslots)
        lo, hi = max(want_from, begin), min(end, stop)
        if lo < hi:
            if lo < held_from:
                raise ValueError(f"window rows of positions [{lo}, {held_from}) are not held")
            parts.append(node.wslots[lo - held_from : hi - held_from])
        stop = begin
        node = node.parent
    return array("q", b"".join(reversed(parts)))


def path_length(node: Node | None) -> int:
    """Tokens from the root to the end of ``node``. O(depth)."""
    n = 0
    while node is not None and node.parent is not None:
        n += len(node.key)
        node = node.parent
    return n


def common_length(key: Run, tokens: Run, pos: int) -> int:
    """Length of the common prefix of ``key`` and ``tokens[pos:]``, known to be >= 1.
    O(len(key)) (see :func:`common_length_raw`).

    >>> common_length(array("i", [1, 2, 3]), array("i", [0, 1, 2, 4]), 1)
    2
    """
    return common_length_raw(key, tokens[pos : pos + len(key)].tobytes(), 0)


def common_length_raw(key: Run, raw: bytes, pos: int) -> int:
    """:func:`common_length` with the tokens given as their bytes (``tokens.tobytes()``), which a
    caller comparing many edges with one run makes once. A binary search over compares of
    byte strings, each in C with no copy of ``raw``: O(len(key)) byte compares and
    O(log len(key)) Python steps, instead of a Python step per token.
    """
    width = key.itemsize
    lo, hi = 1, min(len(key), len(raw) // width - pos)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if raw.startswith(key[lo:mid], (pos + lo) * width):
            lo = mid
        else:
            hi = mid - 1
    return lo
