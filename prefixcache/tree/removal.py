"""Taking nodes out of the radix tree, moving them between tiers, and relabelling slots.

:class:`TreeRemoval` is the part of :class:`prefixcache.tree.RadixTree` that frees
what the tree holds: the one eviction loop (least recently used candidates first,
offered to a demotion before they are dropped), dropping a subtree, recording a
node's move to the other tier, renumbering the slots a pool was compacted to, and
setting every namespace's root aside. Each hands back what it freed
(:class:`EvictResult`) for the caller to free in its pools.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable, Iterator, Sequence

from .node import DEVICE, HOST, EvictResult, Node, Retired, Root, Tier
from .order import is_candidate
from .structure import TreeStructure

__all__ = ["ALL", "TreeRemoval"]

ALL = sys.maxsize
"""``evict(ALL, tier)``: everything evictable in the tier."""


class TreeRemoval(TreeStructure):
    """Eviction, drops, tier moves and relabelling: the part of :class:`prefixcache.tree.RadixTree`
    that takes nodes out or changes what they hold."""

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
