"""The integrity check of a radix tree, given the pieces of its state. O(n).

What it asserts: every root is a non-empty, unpinned device root, found under its
lookup key (and, unless retired, by its namespace), holding no tokens, window rows
nor snapshot; every node is reached once, has a non-empty edge, is keyed by its
edge's first token, has one slot per token, token runs of ``array('i')`` and slots of
``array('q')``, and is on the device only below device nodes; ``device_children`` is
right at every node and root; no slot is owned twice within a tier, nor a window or
snapshot slot twice; window rows and snapshots are on the device only, and no more
window rows than tokens; a node has at least as many pins as its children together,
and was touched no later than its parent; the token, per-tier, pinned and node counts
add up; and each tier's eviction order is sorted by tick and holds exactly the nodes
:func:`is_candidate` accepts.

:meth:`RadixTree._check <prefixcache.tree.RadixTree._check>` hands it its state; the
check knows nothing of the class, so neither module imports the other.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from .node import DEVICE, HOST, Node, Retired, Root, Tier, namespace_key
from .order import EvictionOrder, is_candidate

__all__ = ["check_tree"]


def check_tree(
    roots: Mapping[Hashable, Root],
    order: EvictionOrder,
    *,
    size: int,
    tier_size: Sequence[int],
    pinned_size: int,
    n_nodes: int,
) -> None:
    """Assert every structural invariant (see the module doc) of the tree whose roots by lookup
    key are ``roots``, whose eviction order is ``order``, and whose counts are the rest.

    Raises ``AssertionError`` naming the first invariant found broken.
    """
    listed: list[set[int]] = []
    for tier in Tier:
        candidates = list(order.of(tier))
        listed.append({id(node) for node in candidates})
        assert len(listed[-1]) == len(candidates), "a node is listed twice"
        ticks = [node.tick for node in candidates]
        assert ticks == sorted(ticks), "an eviction order is out of order"
    counted_size = counted_pinned = counted_nodes = 0
    counted_tier = [0, 0]
    candidates_seen: tuple[set[int], set[int]] = (set(), set())
    reached: set[int] = set()
    seen_slots: tuple[set[int], set[int]] = (set(), set())
    seen_window: set[int] = set()
    seen_snapshots: set[int] = set()
    for lookup, root in roots.items():
        ns = root.namespace
        assert isinstance(root, Root) and root.parent is None, f"{root!r} under {lookup!r} is not a root"
        assert root.lookup == lookup, f"root of {ns!r} is kept under {lookup!r}, not its lookup {root.lookup!r}"
        if not isinstance(lookup, Retired):
            assert roots.get(namespace_key(ns)) is root, f"root of {ns!r} not found by it"
        assert len(root.key) == 0 and len(root.slots) == 0, f"root of {ns!r} holds tokens"
        assert not root.wslots and root.snap < 0, f"root of {ns!r} holds window rows or a snapshot"
        assert root.children and root.pins == 0, f"empty or pinned root for namespace {ns!r}"
        assert root.tier == DEVICE, f"root of {ns!r} is not on the device"
        device_children = sum(c.tier == DEVICE for c in root.children.values())
        assert root.device_children == device_children, f"root of {ns!r}: device_children"
        stack: list[Node] = list(root.children.values())
        while stack:
            node = stack.pop()
            assert id(node) not in reached, f"{node!r} is reached twice"
            reached.add(id(node))
            stack.extend(node.children.values())
            counted_nodes += 1
            parent = node.parent
            assert parent is not None and node.key, f"{node!r} has no parent or an empty edge"
            assert parent.children.get(node.key[0]) is node, f"{node!r} is not keyed by its first token"
            typecodes = node.key.typecode, node.slots.typecode, node.wslots.typecode
            assert typecodes == ("i", "q", "q"), f"{node!r}: token, slot, window typecodes {typecodes}"
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
            counted_size += len(node.key)
            counted_tier[node.tier] += len(node.key)
            child_pins = sum(child.pins for child in node.children.values())
            assert node.pins >= child_pins >= 0, f"{node!r}: fewer pins than its children"
            if node.pins:
                counted_pinned += len(node.key)
            if is_candidate(node):
                candidates_seen[node.tier].add(id(node))
            if parent.parent is not None:
                assert parent.tick >= node.tick, f"{node!r} was touched after its parent"
    assert counted_size == size, f"token count {size} != {counted_size} held by nodes"
    assert counted_pinned == pinned_size, f"pinned count {pinned_size} != {counted_pinned}"
    assert counted_nodes == n_nodes, f"node count {n_nodes} != {counted_nodes}"
    for tier in Tier:
        assert tier_size[tier] == counted_tier[tier], f"tokens in {tier.name} {tier_size[tier]} != {counted_tier[tier]}"
        assert listed[tier] == candidates_seen[tier], f"the {tier.name} order is not exactly its candidates"
