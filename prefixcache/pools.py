"""Where cached KV lives and how it moves: the device pool, the host pool, and eviction.

The device pool is the first tier; an optional host pool is the second. Making
room on the device moves its least recently used nodes to the host (when the host
has room, dropping the host's own least recently used leaves if needed) or drops
them; a request that reaches host-resident KV brings it back first. Expiry and
clearing drop nodes in both tiers. Every one of these goes through
:meth:`RadixTree.evict`, the one eviction loop, and :meth:`Pools.copy`, the one
copy between pools.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Hashable
from typing import Protocol

import torch

from .kv import Int8Codec, KVPool
from .stats import Counters
from .tree import ALL, DEVICE, HOST, EvictResult, Node, RadixTree, Tier

__all__ = ["Pools", "SidePools"]


class SidePools(Protocol):
    """Pools that hold more of a node than its token rows (:class:`prefixcache.stores.Stores`:
    window rows and state snapshots), freed when the node is dropped."""

    def release(self, window_slots: array, snapshots: array) -> None: ...

    def sizes(self) -> dict[str, int]:
        """``window_tokens``, ``snapshots``, ``snapshot_capacity``, ``bytes_used`` and
        ``bytes_reserved`` of these pools."""
        ...


class Pools:
    """The tree's KV in its pools, with the moves and drops between them.

    Every method assumes the caller (:class:`prefixcache.cache.PrefixCache`) holds
    the cache's lock. Counters of evicted, moved and expired tokens are kept in
    ``counters``.
    """

    def __init__(
        self, tree: RadixTree, device: KVPool, host: KVPool | None, counters: Counters, stores: SidePools | None = None
    ) -> None:
        self.tree = tree
        self.device = device
        self.host = host
        self.counters = counters
        self.stores = stores
        """The window and snapshot pools of a model with sliding-window or recurrent layers."""

    def add_host(self, budget: int | str, dtype: torch.dtype | None) -> None:
        """Add a host tier of ``budget`` bytes: the device pool's layers in host memory (page-locked
        when the device is a GPU), in ``dtype`` (``None``: the device's; ``torch.int8``: packed)."""
        device = self.device
        pin = device.device.type == "cuda"
        if dtype == torch.int8:
            codec = Int8Codec(device.layout)
            self.host = KVPool(
                device.layout,
                budget,
                device="cpu",
                dtype=torch.float32,
                pin_memory=pin,
                codec=codec,
                name="host_budget",
            )
        else:
            self.host = KVPool(
                device.layout, budget, device="cpu", dtype=dtype or device.dtype, pin_memory=pin, name="host_budget"
            )

    def pool(self, tier: Tier) -> KVPool:
        pool = self.device if tier == DEVICE else self.host
        assert pool is not None, "no host tier"
        return pool

    def make_room(self, n_tokens: int) -> int:
        """Free ``n_tokens`` device slots (or all that can be), least recently used first: each
        node moves to the host tier if it can, else it is dropped. Returns the device tokens
        freed (nodes go whole, so it may be more)."""
        out = self.tree.evict(n_tokens, DEVICE, demote=self._demote if self.host is not None else None)
        self.release(out)
        return len(out.slots) + out.moved

    def make_room_until(self, enough: Callable[[], bool]) -> None:
        """Drop least recently used device nodes, one at a time, until ``enough()`` or none can go
        (for the window and snapshot pools, whose room follows the nodes')."""
        while not enough() and self.tree.victim(DEVICE) is not None:
            self.release(self.tree.evict(1, DEVICE))

    def _demote(self, node: Node) -> bool:
        if not self._host_room(len(node.key)):
            return False
        self.copy(node, HOST)
        return True

    def _host_room(self, n_tokens: int) -> bool:
        """Drop least recently used host leaves until ``n_tokens`` host slots are free; False if they cannot be."""
        host = self.host
        assert host is not None
        if n_tokens > host.capacity:
            return False
        if host.n_free < n_tokens:
            self.release(self.tree.evict(n_tokens - host.n_free, HOST))
        return host.n_free >= n_tokens

    def promote(self, node: Node) -> tuple[Node | None, int]:
        """Copy the host part of ``node``'s (pinned) path back to the device, top down, while
        the device can take it. Returns the deepest node of the path now on the device
        (None: not even the first) and the tokens moved."""
        on_host: list[Node] = []
        cur = node
        while cur.tier == HOST:
            on_host.append(cur)
            assert cur.parent is not None
            cur = cur.parent
        top: Node | None = cur if cur.parent is not None else None
        moved = 0
        device = self.device
        for up in reversed(on_host):
            n = len(up.key)
            if device.n_free < n:
                self.make_room(n - device.n_free)  # the path is pinned: none of it goes
            if device.n_free < n:
                break
            self.copy(up, DEVICE)
            top = up
            moved += n
        return top, moved

    def copy(self, node: Node, tier: Tier) -> None:
        """Copy ``node``'s KV into free slots of ``tier``'s pool (the caller made room), record
        the move in the tree and free the old slots; count tokens and bytes moved.

        The only copy between pools. :meth:`KVPool.write_rows` makes it safe on a GPU:
        rows reaching host memory are synchronised before the host reads them.
        """
        source, target = self.pool(node.tier), self.pool(tier)
        n = len(node.key)
        slots = target.alloc(n)
        try:
            target.write_rows(slots, source.read_rows(node.slots))
        except BaseException:
            target.free(slots)
            raise
        old = node.slots
        self.tree.move(node, tier, slots)
        source.free(old)
        moved_bytes = n * self.device.bytes_per_token
        c = self.counters
        if tier == HOST:
            c.demoted_tokens += n
            c.bytes_to_host += moved_bytes
        else:
            c.promoted_tokens += n
            c.bytes_to_device += moved_bytes

    def expire(self, cutoff: int) -> int:
        """Drop every node of either tier last touched before tick ``cutoff``. Returns tokens dropped."""
        dropped = 0
        for tier in (HOST, DEVICE):  # host nodes are older than the device node above them
            out = self.tree.evict(ALL, tier, older_than=cutoff)
            self.release(out)
            dropped += out.n_tokens
        self.counters.expired_tokens += dropped
        return dropped

    def clear(self) -> int:
        """Drop every unpinned node of both tiers. Returns tokens dropped."""
        dropped = 0
        for tier in (HOST, DEVICE):
            out = self.tree.evict(ALL, tier)
            self.release(out)
            dropped += out.n_tokens
        return dropped

    def shrink_host(self, capacity: int) -> None:
        """Drop least recently used host leaves until the host tier holds at most ``capacity`` tokens."""
        excess = self.tree.tier_size(HOST) - capacity
        if excess > 0:
            self.release(self.tree.evict(excess, HOST))

    def resize(self, budget: int | str, host_budget: int | str | None) -> None:
        """Give the device pool (and the host pool, or a new one) a new budget: move or drop
        least recently used KV until the rest fits, then renumber the kept slots.

        Raises ``ValueError``/``TypeError`` (nothing changed) for a budget that does not
        parse, holds less than a token, or holds less than what is pinned."""
        tree, pool = self.tree, self.device
        capacity = pool.capacity_for(budget)
        if capacity < max(1, tree.pinned_size):
            what = "one token of KV" if capacity < 1 else f"the {tree.pinned_size} tokens pinned"
            raise ValueError(
                f"budget: {budget!r} holds {capacity} tokens of {pool.bytes_per_token} bytes, less than "
                f"{what}; give at least {max(1, tree.pinned_size) * pool.bytes_per_token} bytes"
            )
        if host_budget is not None:
            host = self.host
            if host is None:
                self.add_host(host_budget, None)
            else:
                host_capacity = host.capacity_for(host_budget, "host_budget")
                if host_capacity < 1:
                    raise ValueError(
                        f"host_budget: {host_budget!r} is smaller than one token of KV ({host.bytes_per_token} bytes)"
                    )
                self.shrink_host(host_capacity)
                tree.relabel_slots(host.resize(host_budget, self.owned(HOST)), HOST)
        if tree.tier_size(DEVICE) > capacity:
            self.make_room(tree.tier_size(DEVICE) - capacity)
        tree.relabel_slots(pool.resize(budget, self.owned(DEVICE)), DEVICE)

    def sizes(self) -> dict[str, int]:
        """What :class:`CacheStats` reports of the tree and the pools now."""
        tree, pool, host = self.tree, self.device, self.host
        side = self.stores.sizes() if self.stores is not None else {}
        return {
            "cached_tokens": tree.tier_size(DEVICE),
            "pinned_tokens": tree.pinned_size,
            "capacity_tokens": pool.capacity,
            "bytes_used": pool.n_used * pool.bytes_per_token + side.get("bytes_used", 0),
            "bytes_reserved": pool.reserved_bytes + side.get("bytes_reserved", 0),
            "window_tokens": side.get("window_tokens", 0),
            "snapshots": side.get("snapshots", 0),
            "snapshot_capacity": side.get("snapshot_capacity", 0),
            "nodes": tree.n_nodes,
            "host_cached_tokens": tree.tier_size(HOST),
            "host_capacity_tokens": host.capacity if host is not None else 0,
            "host_bytes_used": host.n_used * host.bytes_per_token if host is not None else 0,
            "host_bytes_reserved": host.reserved_bytes if host is not None else 0,
        }

    def release(self, out: EvictResult) -> None:
        """Give the slots of dropped nodes back to their pools and count the tokens."""
        self.device.free(out.slots)
        if out.host_slots:
            self.pool(HOST).free(out.host_slots)
        if self.stores is not None:
            self.stores.release(out.window_slots, out.snapshots)
        self.counters.evicted_tokens += out.n_tokens

    def owned(self, tier: Tier) -> array:
        """Every slot of ``tier`` the tree holds."""
        return array("q", self.tree.owned_slots(tier))

    def _check(self) -> None:
        """Assert that every slot of each pool is owned by exactly one node or free, and that
        no pool is over its budget. O(cached tokens + capacity)."""
        tree = self.tree
        for tier, pool in ((DEVICE, self.device), (HOST, self.host)):
            if pool is None:
                assert tree.tier_size(tier) == 0, "KV on the host tier of a cache without one"
                continue
            owned = list(tree.owned_slots(tier))
            free = list(pool.free_slots())
            where = tier.name.lower()
            assert len(set(owned)) == len(owned), f"a {where} slot is owned twice"
            assert len(set(free)) == len(free), f"a {where} slot is free twice"
            assert not set(owned) & set(free), f"a {where} slot is both owned and free"
            assert len(owned) + len(free) == pool.capacity, (
                f"{len(owned)} owned + {len(free)} free {where} slots != capacity {pool.capacity}: a slot leaked"
            )
            assert set(owned) | set(free) == set(range(pool.capacity)), f"a {where} slot number is out of range"
            assert pool.n_used == tree.tier_size(tier), f"{where} pool use and tree size disagree"
            assert pool.reserved_bytes <= pool.budget, f"the {where} pool reserves more than its budget"

    def drop_namespace(self, namespace: Hashable) -> int:
        """Drop every node of ``namespace``, in both tiers, but the paths pinned nodes need
        (a pinned node's ancestors are pinned too, so what is dropped is whole subtrees).
        Returns tokens dropped. O(nodes in the namespace)."""
        root = self.tree.root(namespace)
        stack = list(root.children.values()) if root is not None else []
        dropped = 0
        while stack:
            node = stack.pop()
            if node.pins:  # a request in flight or a pin holds it: keep it, look below it
                stack.extend(node.children.values())
                continue
            out = self.tree.drop(node)
            self.release(out)
            dropped += out.n_tokens
        return dropped
