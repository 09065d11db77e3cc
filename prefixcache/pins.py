"""Prefixes a user keeps on the device (``PrefixCache.pin``) until they unpin them.

A user pin is a tree pin held on behalf of a token sequence and namespace rather
than of a request in flight; pins of the same sequence nest.
"""

from __future__ import annotations

from array import array
from collections.abc import Hashable

from .pools import Pools
from .tree import HOST, Node, RadixTree, namespace_key

__all__ = ["UserPins"]


class UserPins:
    """The nodes pinned by :meth:`PrefixCache.pin`, by (namespace, tokens).

    Every method whose name ends in ``_locked`` assumes the caller holds the cache's lock.
    """

    def __init__(self, tree: RadixTree, pools: Pools) -> None:
        self._tree = tree
        self._pools = pools
        self._nodes: dict[tuple[Hashable, bytes], list[Node]] = {}

    def pin_locked(self, toks: array, namespace: Hashable) -> None:
        """Pin the cached ``toks`` (bringing host-resident KV back to the device first).

        Raises ``ValueError`` (nothing pinned) when they are not all cached, or do not fit
        on the device beside what is pinned there already."""
        tree = self._tree
        cached = tree.peek(toks, namespace)
        if cached < len(toks):
            raise ValueError(
                f"tokens: only {cached} of their {len(toks)} tokens are cached in namespace {namespace!r}; "
                "store them first (CachedModel.warm, or a request)"
            )
        node = tree.match(toks, namespace).node
        assert node is not None
        tree.pin(node)
        if node.tier == HOST and self._pools.promote(node)[0] is not node:
            tree.unpin(node)
            raise ValueError(
                f"tokens: {len(toks)} tokens do not fit on the device beside the {tree.pinned_size} pinned "
                f"there (the pool holds {self._pools.device.capacity}); pinned bytes cannot exceed the budget"
            )
        self._nodes.setdefault((namespace_key(namespace), toks.tobytes()), []).append(node)

    def unpin_locked(self, toks: array, namespace: Hashable) -> None:
        """Undo one :meth:`pin_locked` of the same tokens; ``ValueError`` when they are not pinned."""
        key = (namespace_key(namespace), toks.tobytes())
        nodes = self._nodes.get(key)
        if not nodes:
            raise ValueError(f"tokens: these {len(toks)} tokens are not pinned in namespace {namespace!r}")
        self._tree.unpin(nodes.pop())
        if not nodes:
            del self._nodes[key]

    def tokens(self) -> int:
        """Tokens held by user pins (each counted once). O(pinned nodes)."""
        seen: set[int] = set()
        total = 0
        for nodes in self._nodes.values():
            cur: Node | None = nodes[0]
            while cur is not None and cur.parent is not None and id(cur) not in seen:
                seen.add(id(cur))
                total += len(cur.key)
                cur = cur.parent
        return total

    def _check(self) -> None:
        for nodes in self._nodes.values():
            assert nodes and all(node.pins > 0 and node.tier != HOST for node in nodes), "a user pin was lost"

    def release_all_locked(self) -> None:
        """Undo every pin of every namespace."""
        for nodes in self._nodes.values():
            for node in nodes:
                self._tree.unpin(node)
        self._nodes.clear()

    def release_namespace_locked(self, namespace: Hashable) -> None:
        """Undo every pin held in ``namespace``, however often each was pinned."""
        lookup = namespace_key(namespace)
        for key in [key for key in self._nodes if key[0] == lookup]:
            for node in self._nodes.pop(key):
                self._tree.unpin(node)
