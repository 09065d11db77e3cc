"""The remote tier in a request: what Redis holds past a request's local hit is fetched before
the model runs (outside the lock), and its new complete chunks are handed to the writer after.

    # [0, have)                 held locally (device or host tier)
    # [start, start + n)        fetched: whole chunks, start = (have // C) * C <= have
    # [have, start + n)         stored on the device and added to the hit
"""

from __future__ import annotations

from array import array
from collections.abc import Hashable, Sequence

import torch

from ..hit import Lease
from ..kv import LayerKV
from ..tree import DEVICE
from .core import CacheCore

__all__ = ["fetch_remote", "share"]


def fetch_remote(core: CacheCore, lease: Lease, toks: array, limit: int, namespace: Hashable) -> int:
    """Bring the complete chunks that follow the lease's prefix from the remote tier into the
    device pool (the fetch runs outside the lock) and extend the lease over them. Returns the
    tokens added."""
    remote = core.remote
    have = len(lease.slots)
    if remote is None or (limit // remote.layout.chunk_tokens) * remote.layout.chunk_tokens <= have:
        return 0
    if lease.generation != core.generation:  # the weights changed: Redis holds other KV now
        return 0
    try:
        fetched = remote.fetch(namespace, toks[:limit], have)
    except ValueError:  # a namespace Redis keys cannot hold: served locally only
        return 0
    if fetched.stop <= have:
        return 0
    rows, start = fetched.rows, fetched.start

    def write(slots: array, first: int) -> None:
        core.pools.device.write_rows(slots, rows[first - start : first - start + len(slots)])

    with core.lock:
        if lease.generation != core.generation:
            return 0
        if lease.epoch != core.epoch:
            lease.slots, lease.epoch = core.tree.path_slots(lease.node), core.epoch
        stored = core.store_locked(toks[: fetched.stop], lease.node, have, namespace, write)
        if stored.length <= have or stored.node is None or stored.node.tier != DEVICE:
            return 0
        core.tree.pin(stored.node)
        core.tree.unpin(lease.node)
        lease.node = stored.node
        lease.slots = lease.slots + stored.slots
        return stored.length - have


def share(core: CacheCore, toks: array, kv: Sequence[LayerKV], offset: int, row: int, namespace: Hashable) -> None:
    """Hand the complete chunks of ``toks`` the remote tier does not hold yet to its writer;
    their rows are copied out of ``kv`` now (asynchronously from a GPU), never waited for."""
    remote = core.remote
    assert remote is not None
    try:
        lo, hi = remote.pending(namespace, toks)
    except ValueError:  # a namespace Redis keys cannot hold
        return
    if hi > lo:
        pool = core.pools.device
        rows = torch.empty(hi - lo, pool.width, dtype=pool.dtype, device=pool.device)
        pool.layout.rows_of(kv, offset + lo, hi - lo, row, rows)
        remote.submit(namespace, toks, rows, start=lo)
