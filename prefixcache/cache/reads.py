"""What a hit's prefix holds, read for a request's model: the full layers' KV, the window
layers' last rows, the recurrent state's snapshot, and where else the prefix may be cut."""

from __future__ import annotations

from array import array

import torch

from ..arguments import check_int
from ..hit import Hit, Lease
from ..kv import LayerKV
from ..stores import Servable
from ..tree import Node, path_length, window_slots
from .core import CacheCore
from .lookup import Lookup

__all__ = ["Reads"]


class Reads:
    """``gather``, ``gather_window``, ``snapshot`` and ``servable`` of one cache."""

    def __init__(self, core: CacheCore, lookup: Lookup) -> None:
        self.core = core
        self.lookup = lookup

    def gather(self, hit: Hit, length: int | None, copy: bool) -> list[LayerKV]:
        core = self.core
        self.lookup.check_hit(hit)
        length = hit.length if length is None else check_int(length, "length", 0, hit.length)
        lease = hit.lease
        with core.lock:
            if lease.released:
                raise ValueError("hit: already released; match again")
            slots = lease.slots if lease.epoch == core.epoch else core.tree.path_slots(lease.node)
            return core.pools.device.gather(slots[:length] if length < len(slots) else slots, copy=copy)

    def gather_window(self, hit: Hit, length: int | None) -> list[LayerKV]:
        core = self.core
        lease = self.lookup.check_hit(hit).lease
        length = hit.length if length is None else length
        with core.lock:
            stores = core.stores
            if stores is None or stores.window is None:
                return []
            n = min(length, stores.need)
            node = _node_at(lease, length)
            return stores.window.gather(window_slots(node, length, n) if n else array("q"))

    def snapshot(self, hit: Hit, length: int | None) -> torch.Tensor | None:
        core = self.core
        lease = self.lookup.check_hit(hit).lease
        length = hit.length if length is None else length
        with core.lock:
            stores = core.stores
            if stores is None or stores.snapshots is None or length == 0:
                return None
            node = _node_at(lease, length)
            if node is None or node.snap < 0:
                raise ValueError(f"length: no snapshot of the state after {length} tokens is held")
            return stores.snapshots.read([node.snap])[0]

    def servable(self, hit: Hit) -> Servable:
        core = self.core
        lease = self.lookup.check_hit(hit).lease
        with core.lock:
            if core.stores is None:
                return Servable(frozenset(), 0, hit.length)
            return core.stores.servable(lease.node)


def _node_at(lease: Lease, length: int) -> Node | None:
    """The node of the lease's path that ends at ``length`` (or covers it)."""
    node, end = lease.node, path_length(lease.node)
    while node is not None and node.parent is not None and end - len(node.key) >= length:
        end -= len(node.key)
        node = node.parent
    return node
