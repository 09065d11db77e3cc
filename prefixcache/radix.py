"""A radix tree over token ids that maps cached prefixes to pool slots.

Edges carry runs of tokens (compressed paths) and the pool slots of those tokens;
children are keyed by the first token of their edge. Every namespace has its own
root, so two namespaces never share a node. Unpinned leaves are kept in a sorted
list ordered by last access, which makes the least recently used one O(log n) away.

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

from array import array
from collections.abc import Hashable, Iterator, Sequence
from typing import NamedTuple

from sortedcontainers import SortedKeyList

__all__ = ["EvictResult", "InsertResult", "MatchResult", "Node", "RadixTree", "as_run"]

Run = array  # array('i') of token ids


def as_run(tokens: Sequence[int]) -> Run:
    """``tokens`` as an ``array('i')``: returned as is when it already is one. O(n).

    Raises ``OverflowError`` for an id outside int32 and ``TypeError`` for a non-int.
    """
    if type(tokens) is array and tokens.typecode == "i":
        return tokens
    return array("i", tokens)


class Node:
    """One edge of the tree and the node it leads to.

    ``key`` is the edge's token run and ``slots`` the pool slot of each of those
    tokens. ``pins`` counts the pins whose path runs through this node; a node
    with pins is never evicted. ``tick`` is the tree clock at the last access.
    """

    __slots__ = ("children", "key", "parent", "pins", "slots", "tick")

    def __init__(self, key: Run, slots: array, parent: Node | None, tick: int) -> None:
        self.key = key
        self.slots = slots
        self.parent = parent
        self.children: dict[int, Node] = {}
        self.pins = 0
        self.tick = tick

    def __repr__(self) -> str:
        head = ", ".join(map(str, self.key[:4])) + (", ..." if len(self.key) > 4 else "")
        return f"Node(key=[{head}], tokens={len(self.key)}, pins={self.pins}, tick={self.tick})"


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
    """Tokens removed from the tree (may exceed what was asked: leaves go whole)."""
    slots: array
    """Their pool slots, now owned by nobody: the caller frees them."""


def _lru_key(node: Node) -> int:
    return node.tick


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
        # Exactly the unpinned leaves, least recently used first.
        self._lru: SortedKeyList = SortedKeyList(key=_lru_key)
        self._clock = 0
        self._size = 0  # tokens held by all nodes
        self._pinned_size = 0  # tokens held by nodes with pins > 0
        self._n_nodes = 0  # non-root nodes

    # -- reading ------------------------------------------------------------

    @property
    def size(self) -> int:
        """Tokens cached, over all namespaces. O(1)."""
        return self._size

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
        leaf = Node(toks[pos:], slots[pos:], node, tick)
        if node.parent is not None and not node.children and node.pins == 0:
            self._lru.remove(node)  # it stops being a leaf
        node.children[toks[pos]] = leaf
        self._lru.add(leaf)
        self._size += len(leaf.key)
        self._n_nodes += 1
        return InsertResult(pos, leaf)

    def _walk(self, root: _Root, toks: Run, tick: int, parts: list[array]) -> tuple[Node, int]:
        """Follow ``toks`` down from ``root``, touching each node and appending its slots
        to ``parts``; split the last edge where the match ends inside it."""
        node: Node = root
        root.tick = tick
        pos, n = 0, len(toks)
        children = root.children
        relist = None
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
                child = self._split(child, common)
                kids = child.children
                end = pos + common
                n = end  # stop after this node: the match ends inside the old edge
            elif not kids and not child.pins:
                # An unpinned leaf is listed under its tick: unlist it before the tick changes.
                self._lru.remove(child)
                relist = child
            child.tick = tick
            append(child.slots)
            node, pos, children = child, end, kids
        if relist is not None:
            self._lru.add(relist)
        return node, pos

    def _split(self, child: Node, at: int) -> Node:
        """Cut ``child``'s edge after ``at`` tokens; return the new upper node."""
        parent = child.parent
        assert parent is not None and 0 < at < len(child.key)
        upper = Node(child.key[:at], child.slots[:at], parent, child.tick)
        upper.pins = child.pins  # every pin through the lower half runs through the upper one
        parent.children[child.key[0]] = upper
        child.key = child.key[at:]
        child.slots = child.slots[at:]
        child.parent = upper
        upper.children[child.key[0]] = child
        self._n_nodes += 1
        return upper

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    # -- pinning ------------------------------------------------------------

    def pin(self, node: Node | None) -> None:
        """Keep ``node`` and its ancestors from eviction until a matching :meth:`unpin`.

        Pins nest. ``pin(None)`` does nothing. O(depth + log n).
        """
        cur = node
        while cur is not None and cur.parent is not None:
            if cur.pins == 0:
                if not cur.children:
                    self._lru.remove(cur)
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
                if not cur.children:
                    self._lru.add(cur)
            cur = cur.parent

    # -- eviction -----------------------------------------------------------

    def evict(self, n_tokens: int) -> EvictResult:
        """Remove least recently used unpinned leaves until ``n_tokens`` tokens are freed.

        Leaves go whole, so more may be freed than asked; when fewer than
        ``n_tokens`` are evictable, everything evictable goes. A parent left
        childless becomes a candidate in turn. ``evict(0)`` is always safe and
        does nothing. O(k log n) for k leaves removed.

        Raises ``ValueError`` for a negative ``n_tokens``.
        """
        if n_tokens < 0:
            raise ValueError(f"n_tokens: expected an int >= 0, got {n_tokens!r}")
        freed = 0
        slots = array("q")
        lru = self._lru
        while freed < n_tokens and lru:
            leaf = lru.pop(0)
            parent = leaf.parent
            assert parent is not None
            del parent.children[leaf.key[0]]
            slots += leaf.slots
            freed += len(leaf.key)
            self._n_nodes -= 1
            if not parent.children:
                if isinstance(parent, _Root):
                    del self._roots[parent.namespace]
                elif parent.pins == 0:
                    lru.add(parent)
        self._size -= freed
        return EvictResult(freed, slots)

    def relabel_slots(self, table: Sequence[int]) -> None:
        """Replace every slot ``s`` held by the tree with ``table[s]``. O(tokens)."""
        for node in self.iter_nodes():
            node.slots = array("q", map(table.__getitem__, node.slots))

    # -- checking -----------------------------------------------------------

    def _check(self) -> None:
        """Assert every structural invariant. O(n)."""
        lru_ids = {id(node) for node in self._lru}
        assert len(lru_ids) == len(self._lru), "a node is listed twice"
        ticks = [node.tick for node in self._lru]
        assert ticks == sorted(ticks), "the LRU list is out of order"
        size = pinned = n_nodes = 0
        leaves: set[int] = set()
        seen_slots: set[int] = set()
        for ns, root in self._roots.items():
            assert isinstance(root, _Root) and root.namespace == ns and root.parent is None
            assert len(root.key) == 0 and len(root.slots) == 0
            assert root.children and root.pins == 0, f"empty or pinned root for namespace {ns!r}"
            for node in self._subtree(root):
                if node is root:
                    continue
                n_nodes += 1
                parent = node.parent
                assert parent is not None and node.key, f"{node!r} has no parent or an empty edge"
                assert parent.children.get(node.key[0]) is node, f"{node!r} is not keyed by its first token"
                assert len(node.slots) == len(node.key), f"{node!r}: slots and tokens differ in length"
                for slot in node.slots:
                    assert slot not in seen_slots, f"slot {slot} is owned by two nodes"
                    seen_slots.add(slot)
                size += len(node.key)
                child_pins = sum(child.pins for child in node.children.values())
                assert node.pins >= child_pins >= 0, f"{node!r}: fewer pins than its children"
                if node.pins:
                    pinned += len(node.key)
                if not node.children and node.pins == 0:
                    leaves.add(id(node))
                if parent.parent is not None:
                    assert parent.tick >= node.tick, f"{node!r} was touched after its parent"
        assert size == self._size, f"token count {self._size} != {size} held by nodes"
        assert pinned == self._pinned_size, f"pinned count {self._pinned_size} != {pinned}"
        assert n_nodes == self._n_nodes, f"node count {self._n_nodes} != {n_nodes}"
        assert lru_ids == leaves, "the LRU list is not exactly the unpinned leaves"

    def owned_slots(self) -> Iterator[int]:
        """Every slot held by a node. O(tokens)."""
        for node in self.iter_nodes():
            yield from node.slots

    @staticmethod
    def _subtree(top: Node) -> Iterator[Node]:
        stack = [top]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())
