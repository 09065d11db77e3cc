"""What a cached prefix holds per kind of layer, and where a hit may end.

Not every layer keeps the same thing for a token (see ``DESIGN.md``, per-layer storage):

    layer kind                          kept by the cache                  a hit at length L needs
    full attention                      KV of every token (the pool)       KV of tokens [0, L)
    sliding window W / chunk W          KV of a node's last W tokens       KV of tokens [L - W + 1, L)
                                        (the window pool)
    recurrent, linear attention, conv   a snapshot of the state after a    the snapshot at L
                                        node's last token (snapshot pool)

One budget covers the three pools (:func:`split_budget`), and one eviction order
(the tree's least recently used leaves) frees all three: a node goes with its
rows, window rows and snapshot. A node keeps window rows only for its last
``W - 1`` tokens, which is all any hit needs of it (a hit ending inside an edge
or below it needs at most that much of the edge's end); and a hit ends only where
every kind can serve it (:meth:`Stores.servable_end`). A request that diverges
where none can therefore computes from an earlier point, and leaves what the next
request needs there: the window rows of the tokens it computed, and a snapshot at
the divergence point.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch

from .kv import KVPool, LayerSpec
from .kv.state import SnapshotPool, StateLayout
from .tree import Node, RadixTree, path_length, window_starts

if TYPE_CHECKING:
    from .pools import Pools

__all__ = ["LayerKinds", "RowSource", "Servable", "Stored", "Stores", "split_budget", "store_parts"]


@dataclass(frozen=True)
class LayerKinds:
    """What a model's layers keep, by kind: ``full`` (per-token KV of full-attention layers,
    hybrid layers' attention part included), ``window`` (per-token KV of sliding-window or
    chunked layers, each keeping its last ``span - 1`` tokens at most) and ``states`` (the
    recurrent states of linear-attention, state-space and convolution layers)."""

    full: tuple[LayerSpec, ...]
    window: tuple[LayerSpec, ...] = ()
    span: int = 0
    """The longest window or chunk of the ``window`` layers."""
    states: StateLayout | None = None

    @property
    def need(self) -> int:
        """Window rows a hit needs before its end: ``span - 1`` (0 without window layers)."""
        return max(0, self.span - 1) if self.window else 0

    @property
    def plain(self) -> bool:
        """Full attention only: every cached prefix can be served at any length."""
        return not self.window and self.states is None


def split_budget(
    budget: int, full_bytes: int, window_bytes: int, snapshot_bytes: int, *, window_ratio: float, state_share: float
) -> tuple[int, int, int]:
    """The bytes of ``budget`` for the pool, the window pool and the snapshot pool.

    Snapshots get ``state_share`` of it (all of it but a sixteenth when there are no
    per-token rows); the rest holds as many tokens T as it can with rows of
    ``full_bytes`` per token for all of them and of ``window_bytes`` for
    ``window_ratio * T`` of them.

    >>> split_budget(1000, 10, 50, 0, window_ratio=0.5, state_share=0.25)
    (280, 720, 0)
    """
    if snapshot_bytes == 0:
        states = 0
    elif full_bytes == 0 and window_bytes == 0:
        states = budget - budget // 16
    else:
        states = int(budget * state_share)
    rest = budget - states
    if window_bytes == 0:
        return rest, 0, states
    tokens = int(rest // (full_bytes + window_ratio * window_bytes))
    full = tokens * full_bytes
    return full, rest - full, states


class Servable(NamedTuple):
    """Where a cached path may be cut for a hit: ``points`` and every length in ``[lo, hi]``."""

    points: frozenset[int]
    lo: int
    hi: int

    def __contains__(self, length: object) -> bool:
        return isinstance(length, int) and (length in self.points or self.lo <= length <= self.hi)


class Stores:
    """The window pool and the snapshot pool beside the token pool, and the rules of where a
    hit may end. Every method assumes the cache's lock is held."""

    def __init__(self, kinds: LayerKinds, window: KVPool | None, snapshots: SnapshotPool | None) -> None:
        self.kinds = kinds
        self.window = window
        self.snapshots = snapshots
        self.need = kinds.need

    def servable_end(self, node: Node | None, length: int) -> tuple[Node | None, int]:
        """The deepest node at or above ``node`` (whose path is ``length`` tokens) where a hit
        may end, and its length; ``(None, 0)`` when only the start is. O(depth)."""
        if node is None:
            return None, 0
        for cur, end, start in reversed(window_starts(node)):
            if self._ends_well(cur, end, start):
                return cur, end
        return None, 0

    def servable(self, node: Node | None) -> Servable:
        """Every length of ``node``'s path at which a hit may end. O(depth)."""
        if node is None:
            return Servable(frozenset({0}), 0, 0)
        chain = window_starts(node)
        points = {0} | {end for cur, end, start in chain if self._ends_well(cur, end, start)}
        lo, hi = 1, 0
        if self.snapshots is None and chain:  # window rows alone: any length their run covers
            _, end, start = chain[-1]
            lo, hi = (1 if start == 0 else start + self.need), end
        return Servable(frozenset(points), lo, hi)

    def _ends_well(self, node: Node, end: int, start: int) -> bool:
        if self.snapshots is not None and node.snap < 0:
            return False
        return start <= max(0, end - self.need)

    def wanted(self, node: Node) -> int:
        """Window rows ``node`` should hold: its last ``need + 1`` tokens, or all of it (one more
        than a hit at its end needs, so that a hit one token before its end, where a repeated
        prompt's hit ends, can be served too)."""
        return min(len(node.key), self.need + 1)

    def snapshot(self, pools: Pools, node: Node, row: torch.Tensor) -> None:
        """Keep ``row`` as the snapshot at ``node``'s end, making room if needed (``node``'s path
        pinned); none when nothing can be evicted."""
        pool = self.snapshots
        assert pool is not None
        if pool.n_free == 0:
            pools.make_room_until(lambda: pool.n_free > 0)
        if pool.n_free == 0:
            return
        slot = pool.alloc()
        try:
            pool.write(slot, row)
        except BaseException:
            pool.free(array("q", [slot]))
            raise
        node.snap = slot

    def fill_window(self, pools: Pools, node: Node, write: Callable[[array, int], None], first: int) -> None:
        """Give ``node`` (path pinned) the window rows a hit may need of it that it lacks, of the
        tokens from ``first`` on, which ``write(slots, token)`` fills; fewer when the window
        pool has no more room."""
        pool = self.window
        assert pool is not None
        end = path_length(node)
        lo = max(end - self.wanted(node), first)
        missing = end - len(node.wslots) - lo
        if missing <= 0:
            return
        if pool.n_free < missing:
            pools.make_room_until(lambda: pool.n_free >= missing)
        take = min(missing, pool.n_free)
        if take == 0:
            return
        slots = pool.alloc(take)
        try:
            write(slots, end - len(node.wslots) - take)
        except BaseException:
            pool.free(slots)
            raise
        node.wslots = slots + node.wslots

    def sizes(self) -> dict[str, int]:
        """What the window and snapshot pools hold and take (see :class:`prefixcache.pools.SidePools`)."""
        window, snapshots = self.window, self.snapshots
        out = {"window_tokens": 0, "snapshots": 0, "snapshot_capacity": 0, "bytes_used": 0, "bytes_reserved": 0}
        if window is not None:
            out["window_tokens"] = window.n_used
            out["bytes_used"] += window.n_used * window.bytes_per_token
            out["bytes_reserved"] += window.reserved_bytes
        if snapshots is not None:
            out["snapshots"] = snapshots.n_used
            out["snapshot_capacity"] = snapshots.capacity
            out["bytes_used"] += snapshots.n_used * snapshots.bytes_per_snapshot
            out["bytes_reserved"] += snapshots.reserved_bytes
        return out

    def release(self, window_slots: array, snapshots: array) -> None:
        """Give the window rows and snapshots of dropped nodes back to their pools."""
        if window_slots and self.window is not None:
            self.window.free(window_slots)
        if snapshots and self.snapshots is not None:
            self.snapshots.free(snapshots)

    def _check(self, nodes: list[Node]) -> None:
        """Assert that every window and snapshot slot is owned by one node or free, and that no
        node holds more window rows than it should. O(nodes + capacity)."""
        for pool, owned, name in (
            (self.window, [s for n in nodes for s in n.wslots], "window"),
            (self.snapshots, [n.snap for n in nodes if n.snap >= 0], "snapshot"),
        ):
            if pool is None:
                assert not owned, f"{name} slots without a {name} pool"
                continue
            free = list(pool.free_slots())
            assert len(set(owned)) == len(owned) and not set(owned) & set(free), f"a {name} slot is owned twice"
            assert sorted(owned + free) == list(range(pool.capacity)), f"a {name} slot leaked or is out of range"
        assert all(len(n.wslots) <= self.wanted(n) for n in nodes), "a node holds more window rows than a hit needs"


class RowSource(NamedTuple):
    """Where what a request computed for one sequence is, for the cache to store."""

    full: Callable[[array, int], None]
    """``full(slots, first)`` writes the pool rows of tokens ``first, first + 1, ...`` into ``slots``."""
    window: Callable[[array, int], None] | None = None
    """Likewise for window rows, of tokens from ``window_from`` on only."""
    window_from: int = 0
    snapshots: Mapping[int, torch.Tensor] = {}
    """Token count -> the snapshot row (``[width]``) of the state after that many tokens."""


class Stored(NamedTuple):
    """Where a store left the path: ``length`` tokens cached up to ``node``, ``slots`` the pool
    slots of the tokens from where it started (empty where it did not read them); ``stored``
    of them new."""

    stored: int
    node: Node | None
    length: int
    slots: array


def store_parts(
    stores: Stores,
    tree: RadixTree,
    pools: Pools,
    toks: array,
    node: Node | None,
    start: int,
    namespace: Hashable,
    source: RowSource,
) -> Stored:
    """Store the uncached rest of ``toks`` below ``node`` (whose path holds ``toks[:start]``) with
    its window rows and snapshots: new nodes end at every position with a snapshot, and
    every node of the way gets the window rows a hit may need of it that ``source`` has.
    Makes room by evicting least recently used leaves; stores what fits. Returns where the
    path ends."""
    pool = pools.device
    ends = sorted({p for p in source.snapshots if start < p < len(toks)} | {len(toks)})
    cur: Node | None = node
    at, stored = start, 0
    way: list[Node] = []  # the nodes below ``node`` on the way, top down
    tree.pin(cur)
    try:
        for end in ends:
            found = tree.descend(cur, toks[:end], at, namespace, slots=False)
            below, reached = found.node, found.length
            tree.pin(below)
            tree.unpin(cur)
            cur = below
            if reached < end:
                new = end - reached
                if new > pool.n_free:
                    pools.make_room(new - pool.n_free)
                fits = min(new, pool.n_free)
                if fits:
                    slots = pool.alloc(fits)
                    try:
                        source.full(slots, reached)
                        leaf = tree.attach(below, toks[reached : reached + fits], slots, namespace)
                    except BaseException:
                        pool.free(slots)
                        raise
                    tree.pin(leaf)
                    tree.unpin(cur)
                    cur, stored, reached = leaf, stored + fits, reached + fits
            way.extend(_between(node, cur, way))
            if reached == end and end in source.snapshots and cur is not None and cur.snap < 0:
                stores.snapshot(pools, cur, source.snapshots[end])
            at = reached
            if reached < end:
                break
        if source.window is not None:
            for each in way:
                stores.fill_window(pools, each, source.window, source.window_from)
    finally:
        tree.unpin(cur)
    return Stored(stored, cur, at, array("q"))


def _between(top: Node | None, bottom: Node | None, known: list[Node]) -> list[Node]:
    """The nodes below ``top`` down to ``bottom`` not in ``known`` yet, top down."""
    found: list[Node] = []
    seen = {id(n) for n in known}
    cur = bottom
    while cur is not None and cur is not top and cur.parent is not None and id(cur) not in seen:
        found.append(cur)
        cur = cur.parent
    found.reverse()
    return found
