"""The order eviction takes nodes in: per tier, the candidates by last access.

A node is a *candidate* of its tier when eviction may take it next: it is
unpinned, not a root, and nothing below it must stay where it is. For a device
node that means no child on the device (its host children may go with it, or it
may move down to the host above them); for a host node, no child at all.
:func:`is_candidate` is that rule, written once; :class:`EvictionOrder` keeps
exactly the candidates of each tier sorted by tick, so the least recently used
one is O(1) away and a change is O(log n).
"""

from __future__ import annotations

from sortedcontainers import SortedKeyList

from .node import DEVICE, Node, Tier

__all__ = ["EvictionOrder", "is_candidate"]


def is_candidate(node: Node) -> bool:
    """May eviction take ``node`` next (see the module doc). O(1)."""
    if node.pins or node.parent is None:
        return False
    return node.device_children == 0 if node.tier == DEVICE else not node.children


def _tick(node: Node) -> int:
    return node.tick


class EvictionOrder:
    """Per tier, the candidate nodes, least recently used first.

    A node is listed under its tick: unlist it before its tick changes, and list it
    again after.
    """

    __slots__ = ("_lists",)

    def __init__(self) -> None:
        self._lists = (SortedKeyList(key=_tick), SortedKeyList(key=_tick))

    @property
    def lists(self) -> tuple[SortedKeyList, SortedKeyList]:
        """The candidates of each tier, indexed by tier: for the tree's hot loops, which keep
        them exactly as :meth:`add` and :meth:`remove` would."""
        return self._lists

    def of(self, tier: Tier) -> SortedKeyList:
        """The candidates of ``tier`` (read them; change them through add and remove)."""
        return self._lists[tier]

    def first(self, tier: Tier) -> Node | None:
        """The least recently used candidate of ``tier``, or None. O(1)."""
        lst = self._lists[tier]
        return lst[0] if lst else None

    def add(self, node: Node) -> None:
        """List ``node`` in its tier. O(log n)."""
        self._lists[node.tier].add(node)

    def remove(self, node: Node) -> None:
        """Unlist ``node`` from its tier. O(log n)."""
        self._lists[node.tier].remove(node)

    def add_if_candidate(self, node: Node) -> None:
        if is_candidate(node):
            self._lists[node.tier].add(node)

    def remove_if_candidate(self, node: Node) -> None:
        if is_candidate(node):
            self._lists[node.tier].remove(node)
