"""The integrity check of a radix tree, through its public readers. O(n).

What it asserts: every root is a non-empty, unpinned device root of its namespace;
every node has a non-empty edge, is keyed by its edge's first token, has one slot
per token, and is on the device only below device nodes; ``device_children`` is
right; no slot is owned twice within a tier; a node has at least as many pins as
its children together, and was touched no later than its parent; the token,
per-tier, pinned and node counts add up; and each tier's eviction order is sorted
by tick and holds exactly the nodes :func:`is_candidate` accepts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .node import DEVICE, HOST, Node, Retired, Root, Tier
from .order import is_candidate

if TYPE_CHECKING:
    from .radix import RadixTree

__all__ = ["check_tree"]


def check_tree(tree: RadixTree) -> None:
    """Assert every structural invariant of ``tree`` (see the module doc)."""
    listed: list[set[int]] = []
    for tier in Tier:
        candidates = tree.candidates(tier)
        listed.append({id(node) for node in candidates})
        assert len(listed[-1]) == len(candidates), "a node is listed twice"
        ticks = [node.tick for node in candidates]
        assert ticks == sorted(ticks), "an eviction order is out of order"
    size = pinned = n_nodes = 0
    tier_size = [0, 0]
    candidates_seen: tuple[set[int], set[int]] = (set(), set())
    seen_slots: tuple[set[int], set[int]] = (set(), set())
    seen_window: set[int] = set()
    seen_snapshots: set[int] = set()
    for root in tree.roots():
        ns = root.namespace
        assert isinstance(root, Root) and root.parent is None
        assert isinstance(root.lookup, Retired) or tree.root(ns) is root, f"root of {ns!r} not found by it"
        assert len(root.key) == 0 and len(root.slots) == 0
        assert root.children and root.pins == 0, f"empty or pinned root for namespace {ns!r}"
        assert root.tier == DEVICE
        stack: list[Node] = list(root.children.values())
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            n_nodes += 1
            parent = node.parent
            assert parent is not None and node.key, f"{node!r} has no parent or an empty edge"
            assert parent.children.get(node.key[0]) is node, f"{node!r} is not keyed by its first token"
            assert len(node.slots) == len(node.key), f"{node!r}: slots and tokens differ in length"
            assert node.tier in (DEVICE, HOST), f"{node!r}: no such tier"
            assert parent.tier == DEVICE or node.tier == HOST, f"{node!r} is on the device below a host node"
            device_children = sum(c.tier == DEVICE for c in node.children.values())
            assert node.device_children == device_children, f"{node!r}: device_children"
            seen = seen_slots[node.tier]
            for slot in node.slots:
                assert slot not in seen, f"slot {slot} is owned by two nodes"
                seen.add(slot)
            assert len(node.wslots) <= len(node.key), f"{node!r}: more window rows than tokens"
            assert not (node.wslots or node.snap >= 0) or node.tier == DEVICE, f"{node!r}: window or state on host"
            for slot in node.wslots:
                assert slot not in seen_window, f"window slot {slot} is owned by two nodes"
                seen_window.add(slot)
            if node.snap >= 0:
                assert node.snap not in seen_snapshots, f"snapshot slot {node.snap} is owned by two nodes"
                seen_snapshots.add(node.snap)
            size += len(node.key)
            tier_size[node.tier] += len(node.key)
            child_pins = sum(child.pins for child in node.children.values())
            assert node.pins >= child_pins >= 0, f"{node!r}: fewer pins than its children"
            if node.pins:
                pinned += len(node.key)
            if is_candidate(node):
                candidates_seen[node.tier].add(id(node))
            if parent.parent is not None:
                assert parent.tick >= node.tick, f"{node!r} was touched after its parent"
    assert size == tree.size, f"token count {tree.size} != {size} held by nodes"
    assert pinned == tree.pinned_size, f"pinned count {tree.pinned_size} != {pinned}"
    assert n_nodes == tree.n_nodes, f"node count {tree.n_nodes} != {n_nodes}"
    for tier in Tier:
        assert tree.tier_size(tier) == tier_size[tier], f"tokens in {tier.name} {tree.tier_size(tier)} != {tier_size}"
        assert listed[tier] == candidates_seen[tier], f"the {tier.name} order is not exactly its candidates"
