"""A radix tree over token ids that maps cached prefixes to pool slots.

Edges carry runs of tokens (compressed paths) and the pool slots of those tokens;
children are keyed by the first token of their edge. Every namespace has its own
root, so two namespaces never share a node. Each node's KV lives in one tier (see
:class:`Tier`); the device nodes form the top of the tree: a host node's children
are all host nodes, so a path is some device nodes, then some host nodes.

The tree knows nothing of tensors. Methods take any sequence of ints and convert
it, but an ``array('i')`` is used as it is.

>>> tree = RadixTree()
>>> tree.insert([1, 2, 3, 4], array("q", [10, 11, 12, 13])).prefix_length
0
>>> hit = tree.match([1, 2, 9])
>>> hit.length, list(hit.slots)
(2, [10, 11])
>>> tree.evict(1).n_tokens   # the leaf (3, 4) goes first: it was used least recently
2
"""

from __future__ import annotations

import sys
import time
from array import array
from collections.abc import Callable, Hashable, Iterator, Sequence
from functools import partial

from .check import check_tree
from .node import (
    DEVICE,
    HOST,
    EvictResult,
    InsertResult,
    MatchResult,
    Node,
    Retired,
    Root,
    Run,
    Tier,
    as_run,
    common_length_raw,
    namespace_key,
    namespace_of,
    path_length,
    path_slots,
    path_tokens,
)
from .order import EvictionOrder, is_candidate

__all__ = ["RadixTree"]

ALL = sys.maxsize
"""``evict(ALL, tier)``: everything evictable in the tier."""

# A NamedTuple's __new__ is Python code, 0.2-0.3 us a call: a few % of an insert or a match.
# tuple.__new__ makes the same object in C.
_insert_result = partial(tuple.__new__, InsertResult)
_match_result = partial(tuple.__new__, MatchResult)


class RadixTree:
    """A radix tree from token sequences to pool slots, with LRU eviction per tier.

    Not thread-safe: :class:`prefixcache.cache.PrefixCache` holds the lock. Every
    operation that walks a path (``match``, ``descend``, ``insert``) counts as an
    access of each node on it. ``clock`` gives the time of an access in nanoseconds
    (``time.monotonic_ns`` unless a test passes its own); ticks are made strictly
    increasing from it.
    """

    def __init__(self, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self._roots: dict[Hashable, Root] = {}
        self._order = EvictionOrder()  # exactly the candidates of each tier
        self._lists = self._order.lists  # the same lists, for the hot loops
        self._now = clock
        self._last_tick = 0
        self._size = 0  # tokens held by all nodes
        self._tier_size = [0, 0]  # tokens held by device nodes, by host nodes
        self._pinned_size = 0  # tokens held by nodes with pins > 0
        self._n_nodes = 0  # non-root nodes

    # -- reading ------------------------------------------------------------

    @property
    def size(self) -> int:
        """Tokens cached, over all namespaces and tiers. O(1)."""
        return self._size

    def __len__(self) -> int:
        return self._size

    def tier_size(self, tier: Tier) -> int:
        """Tokens whose KV is in ``tier``. O(1)."""
        return self._tier_size[tier]

    @property
    def evictable_size(self) -> int:
        """Tokens that eviction could free now: those of unpinned nodes. O(1)."""
        return self._size - self._pinned_size

    @property
    def pinned_size(self) -> int:
        """Tokens held by pinned nodes. O(1)."""
        return self._pinned_size

    @property
    def n_nodes(self) -> int:
        """Nodes in the tree, roots not counted. O(1)."""
        return self._n_nodes

    @property
    def last_tick(self) -> int:
        """The latest tick handed out (0 before any access)."""
        return self._last_tick

    def now(self) -> int:
        """The clock's time now, in nanoseconds."""
        return self._now()

    def victim(self, tier: Tier = DEVICE) -> Node | None:
        """The node of ``tier`` that eviction takes next (least recently used), or None. O(1)."""
        return self._order.first(tier)

    def root(self, namespace: Hashable = None) -> Root | None:
        """The root of ``namespace``, or None while it holds nothing. O(1)."""
        return self._roots.get(namespace_key(namespace))

    def namespaces(self) -> list[Hashable]:
        """Namespaces that hold at least one token (retired roots left out)."""
        return [root.namespace for root in self._roots.values() if not isinstance(root.lookup, Retired)]

    def iter_nodes(self, *, retired: bool = True) -> Iterator[Node]:
        """Every non-root node, parents before children; ``retired=False`` leaves out those
        under roots :meth:`retire_roots` set aside. O(n)."""
        roots = self._roots.values()
        stack: list[Node] = list(roots if retired else (r for r in roots if not isinstance(r.lookup, Retired)))
        while stack:
            node = stack.pop()
            if node.parent is not None:
                yield node
            stack.extend(node.children.values())

    namespace_of = staticmethod(namespace_of)
    path_tokens = staticmethod(path_tokens)
    path_slots = staticmethod(path_slots)
    path_length = staticmethod(path_length)

    def peek(self, tokens: Sequence[int], namespace: Hashable = None) -> int:
        """Length of the longest cached prefix of ``tokens``, without splitting or touching. O(len(tokens))."""
        toks = as_run(tokens)
        node: Node | None = self._roots.get(namespace_key(namespace))
        pos, n = 0, len(toks)
        raw, width = toks.tobytes(), toks.itemsize  # as in _walk
        while node is not None and pos < n:
            child = node.children.get(toks[pos])
            if child is None:
                break
            key = child.key
            if not raw.startswith(key, pos * width):
                return pos + common_length_raw(key, raw, pos)
            pos += len(key)
            node = child
        return pos

    def owned_slots(self, tier: Tier = DEVICE) -> Iterator[int]:
        """Every slot of ``tier`` held by a node. O(tokens)."""
        for node in self.iter_nodes():
            if node.tier == tier:
                yield from node.slots

    # -- matching and inserting ---------------------------------------------

    def match(self, tokens: Sequence[int], namespace: Hashable = None, max_length: int | None = None) -> MatchResult:
        """Find the longest cached prefix of ``tokens[:max_length]`` and touch its path.

        When the match ends inside an edge, the edge is split there, so that
        ``result.node`` ends exactly at ``result.length`` and can be pinned.
        O(len(tokens) + depth) plus O(log n) to re-list the nodes it touches.

        >>> tree = RadixTree()
        >>> _ = tree.insert([5, 6, 7], array("q", [0, 1, 2]))
        >>> tree.match([5, 6]).length, tree.n_nodes     # split at 2: two nodes now
        (2, 2)
        >>> tree.match([]).length
        0
        """
        toks = as_run(tokens)
        if max_length is not None and max_length < len(toks):
            toks = toks[:max_length]
        root = self._roots.get(namespace_key(namespace))
        if root is None:
            return MatchResult(0, array("q"), None)
        length, node, parts = self._walk(root, toks, 0, self._tick())
        return _match_result((length, array("q", b"".join(parts)), node))

    def descend(
        self, node: Node | None, tokens: Sequence[int], start: int, namespace: Hashable = None, *, slots: bool = True
    ) -> MatchResult:
        """Go on matching ``tokens[start:]`` below ``node``, whose path holds ``tokens[:start]``
        (``None`` or a root: from the root of ``namespace``), touching and splitting as
        :meth:`match` does. The result's ``length`` counts from the start of ``tokens``;
        its ``slots`` are those of ``tokens[start:length]``, or empty with ``slots=False``
        (for a caller that only needs where the path ends: the copy is skipped).
        O(length - start + depth below)."""
        toks = as_run(tokens)
        tick = self._tick()
        if node is None or node.parent is None:
            root = self._roots.get(namespace_key(namespace))
            if root is None:
                return MatchResult(start, array("q"), None)
            node = root
        else:
            self._touch_path(node, tick)
        length, end, parts = self._walk(node, toks, start, tick)
        return _match_result((length, array("q", b"".join(parts)) if slots else array("q"), end))

    def attach(self, node: Node | None, tokens: Run, slots: array, namespace: Hashable = None) -> Node:
        """Hang a new device leaf holding ``tokens`` (non-empty) and ``slots`` under ``node``
        (``None`` or a root: the root of ``namespace``, made if needed). ``node`` must be
        on the device and have no child starting with ``tokens[0]`` (the end of a
        :meth:`descend`). O(log n)."""
        if not tokens or len(slots) != len(tokens):
            raise ValueError(f"slots: expected one slot per token and at least one token, got {len(slots)}")
        tick = self._last_tick or self._tick()  # part of the access that found where to attach
        if node is None or node.parent is None:
            key = namespace_key(namespace)
            root = self._roots.get(key)
            if root is None:
                root = self._roots[key] = Root(namespace, tick)
            node = root
        self._touch_path(node, tick)
        if tokens[0] in node.children:
            raise ValueError(f"tokens: {node!r} already has a child starting with token {tokens[0]}")
        return self._hang(node, tokens, slots, tick)

    def insert(self, tokens: Sequence[int], slots: array, namespace: Hashable = None) -> InsertResult:
        """Cache ``tokens`` with ``slots`` (one per token) and touch the path.

        What is already cached keeps its old slots; the new rest becomes one new leaf.
        ``result.prefix_length`` says how many given slots were not taken.
        O(len(tokens) + depth) plus O(log n) for the eviction order.

        Raises ``ValueError`` when ``len(slots) != len(tokens)``, and when the cached part
        ends on the host tier (after touching it: move it to the device first).

        >>> tree = RadixTree()
        >>> tree.insert([1, 2], array("q", [0, 1])).prefix_length
        0
        >>> tree.insert([1, 2, 3], array("q", [7, 8, 2])).prefix_length   # 7 and 8 are the caller's to free
        2
        """
        # What descend(slots=False) then attach do, less the checks a walk from the root makes needless.
        toks = as_run(tokens)
        n = len(toks)
        if len(slots) != n:
            raise ValueError(f"slots: expected one slot per token ({n}), got {len(slots)}")
        tick = self._tick()
        key = namespace_key(namespace)
        root = self._roots.get(key)
        if root is None:
            if not n:
                return InsertResult(0, Root(namespace, 0))  # nothing to hold: no root is kept
            root = self._roots[key] = Root(namespace, tick)
        length, node, _ = self._walk(root, toks, 0, tick)
        if length == n:
            return _insert_result((length, node))
        return _insert_result((length, self._hang(node, toks[length:], slots[length:], tick)))

    def _hang(self, node: Node, tokens: Run, slots: array, tick: int) -> Node:
        """Hang a new device leaf under ``node`` (touched at ``tick``, no child starting with ``tokens[0]``)."""
        if node.tier != DEVICE:
            raise ValueError("node: the cached part ends on the host tier; move it to the device first")
        lists = self._lists
        if not node.device_children and is_candidate(node):
            lists[DEVICE].remove(node)  # it gets a device child
        leaf = Node(tokens, slots, node, tick)
        node.children[tokens[0]] = leaf
        node.device_children += 1
        lists[DEVICE].add(leaf)
        n = len(tokens)
        self._size += n
        self._tier_size[DEVICE] += n
        self._n_nodes += 1
        return leaf

    def _walk(self, top: Node, toks: Run, pos: int, tick: int) -> tuple[int, Node, list[array]]:
        """Follow ``toks[pos:]`` down from ``top``, touching each node; split the last edge
        where the match ends inside it. Returns where the match ends, the node that ends there,
        and the slots of each node on the way (to join, or not)."""
        if top.parent is None:
            top.tick = tick
        node: Node = top
        n = len(toks)
        raw, width = toks.tobytes(), toks.itemsize  # an edge is compared in place: no slice of toks
        children = top.children
        lists = self._lists
        relist: list[Node] = []
        parts: list[array] = []
        append = parts.append
        while pos < n:
            child = children.get(toks[pos])
            if child is None:
                break
            key = child.key
            end = pos + len(key)
            if not raw.startswith(key, pos * width):  # the match ends inside this edge
                end = pos + common_length_raw(key, raw, pos)
                child = self._split(child, end - pos)  # new, and never a candidate: it has a child
                n = end
            # A candidate is listed under its tick: unlist it before the tick changes. (A node
            # with a device child never is one: most of a path is rejected without a call.)
            elif not child.device_children and is_candidate(child):
                lists[child.tier].remove(child)
                relist.append(child)
            child.tick = tick
            append(child.slots)
            node, pos, children = child, end, child.children
        for listed in relist:
            lists[listed.tier].add(listed)
        return pos, node, parts

    def _touch_path(self, node: Node, tick: int) -> None:
        """Touch ``node`` and its ancestors with ``tick``, the latest (a node is never touched
        after its parent, so the walk stops at the first node already at ``tick``)."""
        cur: Node | None = node
        while cur is not None and cur.tick != tick:
            listed = not cur.device_children and is_candidate(cur)  # (never one with a device child)
            if listed:
                self._order.remove(cur)
            cur.tick = tick
            if listed:
                self._order.add(cur)
            cur = cur.parent

    def _split(self, child: Node, at: int) -> Node:
        """Cut ``child``'s edge after ``at`` tokens; return the new upper node."""
        parent = child.parent
        assert parent is not None and 0 < at < len(child.key)
        upper = Node(child.key[:at], child.slots[:at], parent, child.tick, child.tier)
        upper.pins = child.pins  # every pin through the lower half runs through the upper one
        upper.device_children = 1 if child.tier == DEVICE else 0
        parent.children[child.key[0]] = upper
        held_from = len(child.key) - len(child.wslots)  # the window rows are the edge's last ones
        if held_from < at:
            upper.wslots = child.wslots[: at - held_from]
            child.wslots = child.wslots[at - held_from :]
        child.key = child.key[at:]
        child.slots = child.slots[at:]
        child.parent = upper
        upper.children[child.key[0]] = child
        self._n_nodes += 1
        return upper

    def _tick(self) -> int:
        """Now, and strictly later than any earlier tick."""
        t = self._now()
        if t <= self._last_tick:
            t = self._last_tick + 1
        self._last_tick = t
        return t

    # -- pinning ------------------------------------------------------------

    def pin(self, node: Node | None) -> None:
        """Keep ``node`` and its ancestors from eviction until a matching :meth:`unpin`.

        Pins nest. ``pin(None)`` (or a root) does nothing. O(depth + log n).
        """
        lists = self._lists
        cur = node
        newly = 0  # tokens of the nodes this pin is the first of
        while cur is not None and cur.parent is not None:
            if cur.pins:  # so are all its ancestors: count the pin and go
                while cur.parent is not None:
                    cur.pins += 1
                    cur = cur.parent
                break
            if not cur.device_children and is_candidate(cur):  # (never one with a device child)
                lists[cur.tier].remove(cur)
            newly += len(cur.key)
            cur.pins = 1
            cur = cur.parent
        self._pinned_size += newly

    def unpin(self, node: Node | None) -> None:
        """Undo one :meth:`pin` of ``node``. O(depth + log n).

        Raises ``ValueError`` when ``node`` is not pinned.
        """
        if node is not None and node.parent is not None and node.pins <= 0:
            raise ValueError(f"node: {node!r} is not pinned")
        lists = self._lists
        cur = node
        freed = 0  # tokens of the nodes this unpin was the last pin of
        while cur is not None and cur.parent is not None:
            cur.pins -= 1
            if cur.pins:  # still pinned, and so are all its ancestors: uncount the pin and go
                cur = cur.parent
                while cur.parent is not None:
                    cur.pins -= 1
                    cur = cur.parent
                break
            freed += len(cur.key)
            if not cur.device_children and is_candidate(cur):  # (never one with a device child)
                lists[cur.tier].add(cur)
            cur = cur.parent
        self._pinned_size -= freed

    # -- eviction -----------------------------------------------------------

    def evict(
        self,
        n_tokens: int,
        tier: Tier = DEVICE,
        *,
        older_than: int | None = None,
        demote: Callable[[Node], bool] | None = None,
    ) -> EvictResult:
        """Free ``n_tokens`` tokens of ``tier``, least recently used candidates first: the one
        eviction loop, for every caller.

        Each candidate is offered to ``demote`` first (a device node that it moves to the
        host tier, returning True, leaves the tree with its KV elsewhere); otherwise it is
        dropped whole, with whatever hangs below it (for a device node, its host
        subtree), so more may be freed than asked. When fewer than ``n_tokens`` can go,
        everything that can goes; ``evict(ALL, tier)`` empties what is evictable.
        ``older_than`` stops at the first candidate touched at or after that tick (expiry).
        A parent left without children becomes a candidate in turn. ``evict(0)`` is always
        safe and does nothing. O(k log n) for k nodes taken.

        Raises ``ValueError`` for a negative ``n_tokens``.
        """
        if n_tokens < 0:
            raise ValueError(f"n_tokens: expected an int >= 0, got {n_tokens!r}")
        freed = total = moved = 0
        slots, host_slots, window, snapshots = array("q"), array("q"), array("q"), array("q")
        tier_slots = slots if tier == DEVICE else host_slots
        candidates = self._order.of(tier)
        while freed < n_tokens and candidates:
            victim = candidates[0]
            if older_than is not None and victim.tick >= older_than:
                break
            if demote is not None and demote(victim):
                freed += len(victim.key)
                moved += len(victim.key)
                continue
            before = len(tier_slots)
            total += self._drop(victim, slots, host_slots, window, snapshots)
            freed += len(tier_slots) - before
        return EvictResult(total, slots, host_slots, moved, window, snapshots)

    def drop(self, node: Node) -> EvictResult:
        """Remove ``node`` and everything below it (all unpinned). O(k log n) for k nodes.

        Raises ``ValueError`` when ``node`` is pinned or a root.
        """
        if node.pins or node.parent is None:
            raise ValueError(f"node: {node!r} is pinned or a root; only unpinned nodes can be dropped")
        slots, host_slots, window, snapshots = array("q"), array("q"), array("q"), array("q")
        n = self._drop(node, slots, host_slots, window, snapshots)
        return EvictResult(n, slots, host_slots, 0, window, snapshots)

    def _drop(self, node: Node, slots: array, host_slots: array, window: array, snapshots: array) -> int:
        """Remove ``node`` (unpinned, not a root) and everything below it, adding what they held to
        the arrays; returns how many tokens went."""
        parent = node.parent
        assert parent is not None
        parent_listed = is_candidate(parent)  # losing a child never unlists it
        lists = self._lists
        tier_size = self._tier_size
        n = 0
        for sub in (node,) if not node.children else self._subtree(node):  # mostly a leaf
            if is_candidate(sub):
                lists[sub.tier].remove(sub)
            (slots if sub.tier == DEVICE else host_slots).extend(sub.slots)
            if sub.wslots:
                window.extend(sub.wslots)
            if sub.snap >= 0:
                snapshots.append(sub.snap)
            tier_size[sub.tier] -= len(sub.key)
            n += len(sub.key)
            self._n_nodes -= 1
        del parent.children[node.key[0]]
        if node.tier == DEVICE:
            parent.device_children -= 1
        self._size -= n
        if isinstance(parent, Root):
            if not parent.children:
                del self._roots[parent.lookup]
        elif not parent_listed and is_candidate(parent):
            lists[parent.tier].add(parent)
        return n

    def move(self, node: Node, tier: Tier, slots: array) -> None:
        """Record that ``node``'s KV now lives in ``tier`` at ``slots``; the old slots are the caller's.

        To the host: ``node`` must be unpinned with no device child. To the device: its
        parent must be on the device. Recency is kept. O(log n).
        """
        parent = node.parent
        if parent is None or node.tier == tier or len(slots) != len(node.key):
            raise ValueError(f"node: cannot move {node!r} to tier {tier.name} with {len(slots)} slots")
        if tier == HOST and (node.pins or node.device_children):
            raise ValueError(f"node: {node!r} is pinned or has device children; it must stay on the device")
        if tier == DEVICE and parent.tier != DEVICE:
            raise ValueError(f"node: the parent of {node!r} is on the host; move it to the device first")
        for n in (node, parent):
            self._order.remove_if_candidate(n)
        self._tier_size[node.tier] -= len(node.key)
        self._tier_size[tier] += len(node.key)
        node.tier = tier
        node.slots = slots
        parent.device_children += 1 if tier == DEVICE else -1
        for n in (node, parent):
            self._order.add_if_candidate(n)

    def relabel_slots(self, table: Sequence[int], tier: Tier = DEVICE) -> None:
        """Replace every slot ``s`` of ``tier`` held by the tree with ``table[s]``. O(tokens)."""
        for node in self.iter_nodes():
            if node.tier == tier:
                node.slots = array("q", map(table.__getitem__, node.slots))

    def relabel_window(self, table: Sequence[int]) -> None:
        """Replace every window slot ``s`` with ``table[s]``. O(nodes + window rows)."""
        for node in self.iter_nodes():
            if node.wslots:
                node.wslots = array("q", map(table.__getitem__, node.wslots))

    def relabel_snapshots(self, table: Sequence[int]) -> None:
        """Replace every snapshot slot ``s`` with ``table[s]``. O(nodes)."""
        for node in self.iter_nodes():
            if node.snap >= 0:
                node.snap = table[node.snap]

    def retire_roots(self) -> None:
        """Set every namespace's root aside: no lookup finds its nodes any more, while what
        holds them (pins of requests in flight) stays valid; the nodes go as any others do
        (eviction, ``evict(ALL)``). O(namespaces)."""
        for key in list(self._roots):
            root = self._roots.pop(key)
            root.lookup = Retired(root.namespace)
            self._roots[root.lookup] = root

    @staticmethod
    def _subtree(top: Node) -> Iterator[Node]:
        stack = [top]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    # -- checking -----------------------------------------------------------

    def _check(self) -> None:
        """Assert every structural invariant (see :mod:`prefixcache.tree.check`). O(n)."""
        check_tree(
            self._roots,
            self._order,
            size=self._size,
            tier_size=self._tier_size,
            pinned_size=self._pinned_size,
            n_nodes=self._n_nodes,
        )
