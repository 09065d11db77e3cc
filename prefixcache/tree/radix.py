"""A radix tree over token ids that maps cached prefixes to pool slots.

Edges carry runs of tokens (compressed paths) and the pool slots of those tokens;
children are keyed by the first token of their edge. Every namespace has its own
root, so two namespaces never share a node. Each node's KV lives in one tier (see
:class:`Tier`); the device nodes form the top of the tree: a host node's children
are all host nodes, so a path is some device nodes, then some host nodes.

The tree knows nothing of tensors. Methods take any sequence of ints and convert
it, but an ``array('i')`` is used as it is.

:class:`RadixTree` is built in three layers: its state and the reads over it
(:mod:`prefixcache.tree.structure`), taking nodes out and relabelling them
(:mod:`prefixcache.tree.removal`), and here what a request does: lookup, insertion
and pins.

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

from array import array
from collections.abc import Hashable, Sequence
from functools import partial

from .node import DEVICE, InsertResult, MatchResult, Node, Root, Run, as_run, common_length_raw, namespace_key
from .order import is_candidate
from .removal import ALL, TreeRemoval

__all__ = ["ALL", "RadixTree"]

# A NamedTuple's __new__ is Python code, 0.2-0.3 us a call: a few % of an insert or a match.
# tuple.__new__ makes the same object in C.
_insert_result = partial(tuple.__new__, InsertResult)
_match_result = partial(tuple.__new__, MatchResult)


class RadixTree(TreeRemoval):
    """A radix tree from token sequences to pool slots, with LRU eviction per tier.

    Not thread-safe: :class:`prefixcache.cache.PrefixCache` holds the lock. Every
    operation that walks a path (``match``, ``descend``, ``insert``) counts as an
    access of each node on it. ``clock`` gives the time of an access in nanoseconds
    (``time.monotonic_ns`` unless a test passes its own); ticks are made strictly
    increasing from it.
    """

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
