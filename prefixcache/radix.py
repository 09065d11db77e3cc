"""A radix tree over token ids that maps cached prefixes to pool slots.

Edges carry runs of tokens (compressed paths) and the pool slots of those tokens;
children are keyed by the first token of their edge. Every namespace has its own
root, so two namespaces never share a node.

Each node's KV lives in one of two tiers: ``DEVICE`` (the pool on the model's
device) or ``HOST`` (a second, cheaper pool). The device nodes form the top of the
tree: a host node's children are all host nodes, so a path is some device nodes
then some host nodes. Per tier, the nodes eviction may take next are kept in a
sorted list ordered by last access, which makes the least recently used one
O(log n) away: unpinned device nodes with no device child (the edge of the device
part, which can move down to the host tier) and unpinned host leaves.

The tree knows nothing of tensors. Token runs are ``array('i')`` (int32: slices
copy and compare in C, and a token takes 4 bytes); slots are ``array('q')``.
Methods take any sequence of ints and convert it, but an ``array('i')`` is used
as it is, which saves a conversion of about 25 us per 1,000 tokens.

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

import time
from array import array
from collections.abc import Hashable, Iterator, Sequence
from typing import NamedTuple

from sortedcontainers import SortedKeyList

__all__ = ["DEVICE", "HOST", "EvictResult", "InsertResult", "MatchResult", "Node", "RadixTree", "as_run"]

Run = array  # array('i') of token ids

DEVICE = 0
"""Tier of KV held in the pool on the model's device."""
HOST = 1
"""Tier of KV moved out of the device into the host pool."""


def as_run(tokens: Sequence[int]) -> Run:
    """``tokens`` as an ``array('i')``: returned as is when it already is one. O(n).

    Raises ``OverflowError`` for an id outside int32 and ``TypeError`` for a non-int.
    """
    if type(tokens) is array and tokens.typecode == "i":
        return tokens
    return array("i", tokens)


class Node:
    """One edge of the tree and the node it leads to.

    ``key`` is the edge's token run and ``slots`` the slot of each of those tokens
    in the pool of ``tier`` (``DEVICE`` or ``HOST``). ``pins`` counts the pins whose
    path runs through this node; a node with pins is never evicted nor moved to the
    host. ``tick`` is the tree clock (nanoseconds) at the last access. ``dkids``
    counts the children on the device.
    """

    __slots__ = ("children", "dkids", "key", "parent", "pins", "slots", "tick", "tier")

    def __init__(self, key: Run, slots: array, parent: Node | None, tick: int, tier: int = DEVICE) -> None:
        self.key = key
        self.slots = slots
        self.parent = parent
        self.children: dict[int, Node] = {}
        self.pins = 0
        self.tick = tick
        self.tier = tier
        self.dkids = 0

    def __repr__(self) -> str:
        head = ", ".join(map(str, self.key[:4])) + (", ..." if len(self.key) > 4 else "")
        where = "device" if self.tier == DEVICE else "host"
        return f"Node(key=[{head}], tokens={len(self.key)}, {where}, pins={self.pins}, tick={self.tick})"


class _Root(Node):
    __slots__ = ("namespace",)

    def __init__(self, namespace: Hashable, tick: int) -> None:
        super().__init__(array("i"), array("q"), None, tick)
        self.namespace = namespace


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
    """What an eviction removed."""

    n_tokens: int
    """Tokens removed from the tree, both tiers (may exceed what was asked: nodes go whole)."""
    slots: array
    """Their device pool slots, now owned by nobody: the caller frees them."""
    host_slots: array
    """Their host pool slots, likewise."""


def _lru_key(node: Node) -> int:
    return node.tick


def _is_candidate(node: Node) -> bool:
    """May eviction take ``node`` next: unpinned, and no device child (device) or no child (host)."""
    if node.pins or node.parent is None:
        return False
    return node.dkids == 0 if node.tier == DEVICE else not node.children


def _common_length(key: Run, tokens: Run, pos: int) -> int:
    """Length of the common prefix of ``key`` and ``tokens[pos:]``, known to be >= 1.

    A binary search over slice compares: O(len(key)) element compares in C and
    O(log len(key)) Python steps, instead of a Python loop per token.
    """
    lo, hi = 1, min(len(key), len(tokens) - pos)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if key[lo:mid] == tokens[pos + lo : pos + mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class RadixTree:
    """A radix tree from token sequences to pool slots, with LRU leaf eviction.

    Not thread-safe: :class:`prefixcache.cache.PrefixCache` holds the lock.
    Every operation that walks a path (``match``, ``insert``) counts as an access
    of each node on it.
    """

    def __init__(self) -> None:
        self._roots: dict[Hashable, _Root] = {}
        # Per tier, exactly the nodes for which _is_candidate holds, least recently used first.
        self._lru: tuple[SortedKeyList, SortedKeyList] = (SortedKeyList(key=_lru_key), SortedKeyList(key=_lru_key))
        self._clock = 0  # the latest tick handed out
        self._now = time.monotonic_ns  # where ticks come from (a test may put a fake clock here)
        self._size = 0  # tokens held by all nodes
        self._tier_size = [0, 0]  # tokens held by device nodes, by host nodes
        self._pinned_size = 0  # tokens held by nodes with pins > 0
        self._n_nodes = 0  # non-root nodes

    # -- reading ------------------------------------------------------------

    @property
    def size(self) -> int:
        """Tokens cached, over all namespaces. O(1)."""
        return self._size

    def tier_size(self, tier: int) -> int:
        """Tokens whose KV is in ``tier`` (``DEVICE`` or ``HOST``). O(1)."""
        return self._tier_size[tier]

    @property
    def evictable_size(self) -> int:
        """Tokens that eviction could free now: those of unpinned nodes. O(1)."""
        return self._size - self._pinned_size

    def victim(self, tier: int = DEVICE) -> Node | None:
        """The node of ``tier`` that eviction takes next (least recently used), or None. O(1)."""
        lru = self._lru[tier]
        return lru[0] if lru else None

    def now(self) -> int:
        """The clock ticks are read from (``time.monotonic_ns()``)."""
        return self._now()

    @property
    def pinned_size(self) -> int:
        """Tokens held by pinned nodes. O(1)."""
        return self._pinned_size

    @property
    def n_nodes(self) -> int:
        """Nodes in the tree, roots not counted. O(1)."""
        return self._n_nodes

    def __len__(self) -> int:
        return self._size

    def namespaces(self) -> list[Hashable]:
        """Namespaces that hold at least one token (or a pinned empty root)."""
        return list(self._roots)

    def iter_nodes(self) -> Iterator[Node]:
        """Every non-root node, parents before children. O(n)."""
        stack: list[Node] = list(self._roots.values())
        while stack:
            node = stack.pop()
            if node.parent is not None:
                yield node
            stack.extend(node.children.values())

    @staticmethod
    def namespace_of(node: Node) -> Hashable:
        """The namespace whose root ``node`` hangs under. O(depth)."""
        while node.parent is not None:
            node = node.parent
        assert isinstance(node, _Root)
        return node.namespace

    def path_tokens(self, node: Node) -> Run:
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

    def peek(self, tokens: Sequence[int], namespace: Hashable = None) -> int:
        """Length of the longest cached prefix of ``tokens``, without splitting or touching. O(len(tokens))."""
        toks = as_run(tokens)
        node: Node | None = self._roots.get(namespace)
        pos, n = 0, len(toks)
        while node is not None and pos < n:
            child = node.children.get(toks[pos])
            if child is None:
                break
            key = child.key
            if toks[pos : pos + len(key)] == key:
                pos += len(key)
                node = child
            else:
                return pos + _common_length(key, toks, pos)
        return pos

    # -- matching and inserting ---------------------------------------------

    def match(self, tokens: Sequence[int], namespace: Hashable = None) -> MatchResult:
        """Find the longest cached prefix of ``tokens`` and touch its path.

        When the match ends inside an edge, the edge is split there, so that
        ``result.node`` ends exactly at ``result.length`` and can be pinned.
        O(len(tokens) + depth) plus O(log n) to re-key the leaf it may end on.

        >>> tree = RadixTree()
        >>> _ = tree.insert([5, 6, 7], array("q", [0, 1, 2]))
        >>> tree.match([5, 6]).length, tree.n_nodes     # split at 2: two nodes now
        (2, 2)
        >>> tree.match([]).length
        0
        """
        toks = as_run(tokens)
        root = self._roots.get(namespace)
        if root is None:
            return MatchResult(0, array("q"), None)
        parts: list[array] = []
        node, pos = self._walk(root, toks, self._tick(), parts)
        return MatchResult(pos, array("q", b"".join(parts)), node)

    def insert(self, tokens: Sequence[int], slots: array, namespace: Hashable = None) -> InsertResult:
        """Cache ``tokens`` with ``slots`` (one per token) and touch the path.

        What is already cached keeps its old slots; the new rest becomes one new
        leaf. ``result.prefix_length`` says how many given slots were not taken.
        O(len(tokens) + depth) plus O(log n) for the LRU list.

        Raises ``ValueError`` when ``len(slots) != len(tokens)``.

        >>> tree = RadixTree()
        >>> tree.insert([1, 2], array("q", [0, 1])).prefix_length
        0
        >>> tree.insert([1, 2, 3], array("q", [7, 8, 2])).prefix_length   # 7 and 8 are the caller's to free
        2
        """
        toks = as_run(tokens)
        if len(slots) != len(toks):
            raise ValueError(f"slots: expected one slot per token ({len(toks)}), got {len(slots)}")
        tick = self._tick()
        root = self._roots.get(namespace)
        if root is None:
            if not toks:
                return InsertResult(0, _Root(namespace, tick))  # nothing to hold: no root is kept
            root = self._roots[namespace] = _Root(namespace, tick)
        node, pos = self._walk(root, toks, tick, [])
        if pos == len(toks):
            return InsertResult(pos, node)
        if node.tier != DEVICE:
            raise ValueError("tokens: the cached part ends on the host tier; move it to the device first")
        leaf = Node(toks[pos:], slots[pos:], node, tick)
        if _is_candidate(node):
            self._lru[DEVICE].remove(node)  # it gets a device child
        node.children[toks[pos]] = leaf
        node.dkids += 1
        self._lru[DEVICE].add(leaf)
        self._size += len(leaf.key)
        self._tier_size[DEVICE] += len(leaf.key)
        self._n_nodes += 1
        return InsertResult(pos, leaf)

    def _walk(self, root: _Root, toks: Run, tick: int, parts: list[array]) -> tuple[Node, int]:
        """Follow ``toks`` down from ``root``, touching each node and appending its slots
        to ``parts``; split the last edge where the match ends inside it."""
        node: Node = root
        root.tick = tick
        pos, n = 0, len(toks)
        children = root.children
        relist: list[Node] = []
        append = parts.append
        while pos < n:
            child = children.get(toks[pos])
            if child is None:
                break
            key = child.key
            kids = child.children
            end = pos + len(key)
            if toks[pos:end] != key:
                common = _common_length(key, toks, pos)
                child = self._split(child, common)  # new, so in no list yet
                kids = child.children
                end = pos + common
                n = end  # stop after this node: the match ends inside the old edge
                if _is_candidate(child):
                    relist.append(child)
            elif not child.pins and (not kids or (child.dkids == 0 and child.tier == DEVICE)):
                # A candidate is listed under its tick: unlist it before the tick changes.
                self._lru[child.tier].remove(child)
                relist.append(child)
            child.tick = tick
            append(child.slots)
            node, pos, children = child, end, kids
        for listed in relist:
            self._lru[listed.tier].add(listed)
        return node, pos

    def _split(self, child: Node, at: int) -> Node:
        """Cut ``child``'s edge after ``at`` tokens; return the new upper node."""
        parent = child.parent
        assert parent is not None and 0 < at < len(child.key)
        upper = Node(child.key[:at], child.slots[:at], parent, child.tick, child.tier)
        upper.pins = child.pins  # every pin through the lower half runs through the upper one
        upper.dkids = 1 if child.tier == DEVICE else 0
        parent.children[child.key[0]] = upper
        child.key = child.key[at:]
        child.slots = child.slots[at:]
        child.parent = upper
        upper.children[child.key[0]] = child
        self._n_nodes += 1
        return upper

    def _tick(self) -> int:
        """Now, in nanoseconds, and strictly later than any earlier tick."""
        t = self._now()
        if t <= self._clock:
            t = self._clock + 1
        self._clock = t
        return t

    # -- pinning ------------------------------------------------------------

    def pin(self, node: Node | None) -> None:
        """Keep ``node`` and its ancestors from eviction until a matching :meth:`unpin`.

        Pins nest. ``pin(None)`` does nothing. O(depth + log n).
        """
        cur = node
        while cur is not None and cur.parent is not None:
            if cur.pins == 0:
                if _is_candidate(cur):
                    self._lru[cur.tier].remove(cur)
                self._pinned_size += len(cur.key)
            cur.pins += 1
            cur = cur.parent

    def unpin(self, node: Node | None) -> None:
        """Undo one :meth:`pin` of ``node``. O(depth + log n).

        Raises ``ValueError`` when ``node`` is not pinned.
        """
        if node is not None and node.parent is not None and node.pins <= 0:
            raise ValueError(f"node: {node!r} is not pinned")
        cur = node
        while cur is not None and cur.parent is not None:
            cur.pins -= 1
            if cur.pins == 0:
                self._pinned_size -= len(cur.key)
                if _is_candidate(cur):
                    self._lru[cur.tier].add(cur)
            cur = cur.parent

    # -- eviction -----------------------------------------------------------

    def evict(self, n_tokens: int, tier: int = DEVICE) -> EvictResult:
        """Drop least recently used candidates of ``tier`` until ``n_tokens`` of its tokens are freed.

        Nodes go whole, with whatever hangs below them (for a device node, its host
        subtree), so more may be freed than asked; when fewer than ``n_tokens`` are
        evictable, everything evictable in the tier goes. A parent left without
        children becomes a candidate in turn. ``evict(0)`` is always safe and does
        nothing. O(k log n) for k nodes removed.

        Raises ``ValueError`` for a negative ``n_tokens``.
        """
        if n_tokens < 0:
            raise ValueError(f"n_tokens: expected an int >= 0, got {n_tokens!r}")
        freed = total = 0
        slots, host_slots = array("q"), array("q")
        lru = self._lru[tier]
        while freed < n_tokens and lru:
            out = self.drop(lru[0])
            total += out.n_tokens
            slots += out.slots
            host_slots += out.host_slots
            freed += len(out.slots if tier == DEVICE else out.host_slots)
        return EvictResult(total, slots, host_slots)

    def drop(self, node: Node) -> EvictResult:
        """Remove ``node`` and everything below it (all unpinned). O(k log n) for k nodes."""
        if node.pins or node.parent is None:
            raise ValueError(f"node: {node!r} is pinned or a root; only unpinned nodes can be dropped")
        parent = node.parent
        parent_listed = _is_candidate(parent)  # losing a child never unlists it
        if not node.children:  # the common case: an unpinned leaf, listed as a candidate
            self._lru[node.tier].remove(node)
            slots, host_slots = (node.slots, array("q")) if node.tier == DEVICE else (array("q"), node.slots)
            self._tier_size[node.tier] -= len(node.key)
            self._n_nodes -= 1
        else:
            slots, host_slots = array("q"), array("q")
            for sub in self._subtree(node):
                if _is_candidate(sub):
                    self._lru[sub.tier].remove(sub)
                (slots if sub.tier == DEVICE else host_slots).extend(sub.slots)
                self._tier_size[sub.tier] -= len(sub.key)
                self._n_nodes -= 1
        del parent.children[node.key[0]]
        if node.tier == DEVICE:
            parent.dkids -= 1
        n = len(slots) + len(host_slots)
        self._size -= n
        if isinstance(parent, _Root):
            if not parent.children:
                del self._roots[parent.namespace]
        elif not parent_listed and _is_candidate(parent):
            self._lru[parent.tier].add(parent)
        return EvictResult(n, slots, host_slots)

    def move(self, node: Node, tier: int, slots: array) -> None:
        """Record that ``node``'s KV now lives in ``tier`` at ``slots``; the old slots are the caller's.

        To the host: ``node`` must be unpinned with no device child. To the device:
        its parent must be on the device. Recency is kept. O(log n).
        """
        parent = node.parent
        if parent is None or node.tier == tier or len(slots) != len(node.key):
            raise ValueError(f"node: cannot move {node!r} to tier {tier} with {len(slots)} slots")
        if tier == HOST and (node.pins or node.dkids):
            raise ValueError(f"node: {node!r} is pinned or has device children; it must stay on the device")
        if tier == DEVICE and parent.tier != DEVICE:
            raise ValueError(f"node: the parent of {node!r} is on the host; move it to the device first")
        for n in (node, parent):
            if _is_candidate(n):
                self._lru[n.tier].remove(n)
        self._tier_size[node.tier] -= len(node.key)
        self._tier_size[tier] += len(node.key)
        node.tier = tier
        node.slots = slots
        parent.dkids += 1 if tier == DEVICE else -1
        for n in (node, parent):
            if _is_candidate(n):
                self._lru[n.tier].add(n)

    def relabel_slots(self, table: Sequence[int], tier: int = DEVICE) -> None:
        """Replace every slot ``s`` of ``tier`` held by the tree with ``table[s]``. O(tokens)."""
        for node in self.iter_nodes():
            if node.tier == tier:
                node.slots = array("q", map(table.__getitem__, node.slots))

    # -- checking -----------------------------------------------------------

    def _check(self) -> None:
        """Assert every structural invariant. O(n)."""
        lru_ids: list[set[int]] = []
        for lru in self._lru:
            lru_ids.append({id(node) for node in lru})
            assert len(lru_ids[-1]) == len(lru), "a node is listed twice"
            ticks = [node.tick for node in lru]
            assert ticks == sorted(ticks), "an LRU list is out of order"
        size = pinned = n_nodes = 0
        tier_size = [0, 0]
        candidates: tuple[set[int], set[int]] = (set(), set())
        seen_slots: tuple[set[int], set[int]] = (set(), set())
        for ns, root in self._roots.items():
            assert isinstance(root, _Root) and root.namespace == ns and root.parent is None
            assert len(root.key) == 0 and len(root.slots) == 0
            assert root.children and root.pins == 0, f"empty or pinned root for namespace {ns!r}"
            assert root.tier == DEVICE
            for node in self._subtree(root):
                if node is root:
                    continue
                n_nodes += 1
                parent = node.parent
                assert parent is not None and node.key, f"{node!r} has no parent or an empty edge"
                assert parent.children.get(node.key[0]) is node, f"{node!r} is not keyed by its first token"
                assert len(node.slots) == len(node.key), f"{node!r}: slots and tokens differ in length"
                assert node.tier in (DEVICE, HOST), f"{node!r}: no such tier"
                assert parent.tier == DEVICE or node.tier == HOST, f"{node!r} is on the device below a host node"
                assert node.dkids == sum(c.tier == DEVICE for c in node.children.values()), f"{node!r}: dkids"
                seen = seen_slots[node.tier]
                for slot in node.slots:
                    assert slot not in seen, f"slot {slot} is owned by two nodes"
                    seen.add(slot)
                size += len(node.key)
                tier_size[node.tier] += len(node.key)
                child_pins = sum(child.pins for child in node.children.values())
                assert node.pins >= child_pins >= 0, f"{node!r}: fewer pins than its children"
                if node.pins:
                    pinned += len(node.key)
                if _is_candidate(node):
                    candidates[node.tier].add(id(node))
                if parent.parent is not None:
                    assert parent.tick >= node.tick, f"{node!r} was touched after its parent"
        assert size == self._size, f"token count {self._size} != {size} held by nodes"
        assert pinned == self._pinned_size, f"pinned count {self._pinned_size} != {pinned}"
        assert n_nodes == self._n_nodes, f"node count {self._n_nodes} != {n_nodes}"
        assert tier_size == self._tier_size, f"tokens per tier {self._tier_size} != {tier_size} held by nodes"
        for tier in (DEVICE, HOST):
            assert lru_ids[tier] == candidates[tier], f"the LRU list of tier {tier} is not exactly its candidates"

    def owned_slots(self, tier: int = DEVICE) -> Iterator[int]:
        """Every slot of ``tier`` held by a node. O(tokens)."""
        for node in self.iter_nodes():
            if node.tier == tier:
                yield from node.slots

    @staticmethod
    def _subtree(top: Node) -> Iterator[Node]:
        stack = [top]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())
