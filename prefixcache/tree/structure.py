"""The radix tree's state and the reads over it.

:class:`TreeStructure` holds what every operation of
:class:`prefixcache.tree.RadixTree` shares: the root of each namespace, the eviction
order of each tier, the clock, and the token, pin and node counts that every change
keeps up to date. What reads them is here too: sizes, the roots and namespaces, every
node or slot, the next victim, a lookup that touches nothing, and the integrity
check. Changing the tree is in :mod:`prefixcache.tree.radix` (lookup, insertion,
pins) and :mod:`prefixcache.tree.removal` (eviction, drops, tier moves, relabelling).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterator, Sequence

from .check import check_tree
from .node import (
    DEVICE,
    Node,
    Retired,
    Root,
    Tier,
    as_run,
    common_length_raw,
    namespace_key,
    namespace_of,
    path_length,
    path_slots,
    path_tokens,
)
from .order import EvictionOrder

__all__ = ["TreeStructure"]


class TreeStructure:
    """The state of a radix tree, and reading it: the base of :class:`prefixcache.tree.RadixTree`.

    ``clock`` gives the time of an access in nanoseconds (``time.monotonic_ns`` unless
    a test passes its own).
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
