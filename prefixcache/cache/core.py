"""What every part of a :class:`PrefixCache` shares: the options, the tree, the pools, the one
lock and the counters, and the store both a request and a restore write through.

Methods whose names end in ``_locked`` assume the caller holds :attr:`CacheCore.lock`.
"""

from __future__ import annotations

import threading
from array import array
from collections.abc import Callable, Hashable

import torch

from ..claims import Claims
from ..config import CacheConfig
from ..kv import KVLayout, KVPool, LayerSpec
from ..kv.pool import TOKEN_BOOKKEEPING
from ..kv.state import SnapshotPool
from ..pins import UserPins
from ..pools import Pools
from ..remote import RemoteTier
from ..stats import Counters
from ..stores import LayerKinds, Stored, Stores, split_budget
from ..tree import HOST, Node, RadixTree

__all__ = ["CacheCore"]


class CacheCore:
    """The state of one cache. Made by :class:`PrefixCache`; its parts read and change it under
    :attr:`lock`."""

    def __init__(
        self,
        config: CacheConfig,
        layers: tuple[LayerSpec, ...] | KVLayout,
        kinds: LayerKinds | None,
        device: torch.device | str,
        dtype: torch.dtype,
        fingerprint: str | None,
        clock: Callable[[], int] | None,
    ) -> None:
        self.config = config
        self.stores: Stores | None = None
        if kinds is not None and not kinds.plain:
            pool, self.stores = _pools_of(config, kinds, device, dtype)
        else:
            pool = KVPool(layers, config.budget, device=device, dtype=dtype)
        self.kinds = kinds or LayerKinds(pool.layers)
        self.fingerprint = fingerprint
        self.remote: RemoteTier | None = None
        if config.remote is not None:
            if fingerprint is None:
                raise ValueError(
                    f"remote: {config.remote!r} needs the fingerprint of the model whose KV is shared "
                    "(wrap(model, remote=...) gives it); give fingerprint= to PrefixCache"
                )
            self.remote = RemoteTier(
                config.remote,
                fingerprint=fingerprint,
                layers=pool.layers,
                dtype=pool.dtype,
                chunk_tokens=config.remote_chunk_tokens,
                pin_memory=pool.device.type == "cuda",
            )
        self.tree = RadixTree(clock) if clock is not None else RadixTree()
        self.counters = Counters()
        self.pools = Pools(self.tree, pool, None, self.counters, self.stores)
        if config.host_budget is not None:
            self.pools.add_host(config.host_budget, config.host_dtype)
        self.lock = threading.Lock()
        self.claims_changed = threading.Condition(self.lock)  # a claim ended: waiters match again
        self.claims = Claims()
        self.pins = UserPins(self.tree, self.pools)
        self.epoch = 0  # bumped when device slots are renumbered: a Hit's slots are then stale
        self.generation = 0  # bumped by rebind: hits made before it store nothing

    def expire_locked(self) -> int:
        """Drop what has not been used for ``ttl`` seconds; the tokens dropped."""
        ttl_ns = self.config.ttl_ns
        if ttl_ns is None:
            return 0
        return self.pools.expire(self.tree.now() - ttl_ns)

    def store_locked(
        self, toks: array, node: Node | None, start: int, namespace: Hashable, write: Callable[[array, int], None]
    ) -> Stored:
        """Store the uncached rest of ``toks`` below ``node`` (whose path holds ``toks[:start]``):
        ``write(slots, first)`` fills ``slots`` with the KV of tokens ``first, first + 1, ...``.
        Returns how many tokens it stored and where the cached path now ends."""
        tree, pool = self.tree, self.pools.device
        found = tree.descend(node, toks, start, namespace)
        new = len(toks) - found.length
        parent = found.node
        if new == 0:
            return Stored(0, parent, found.length, found.slots)
        tree.pin(parent)  # keep the path while making room
        cached_slots = found.slots
        try:
            if parent is not None and parent.tier == HOST:
                if self.pools.promote(parent)[0] is not parent:
                    return Stored(0, parent, found.length, found.slots)  # the cached part could not come back
                # The host part of the path now lives in new device slots: found.slots named host ones.
                cached_slots = tree.path_slots(parent)[start:]
            if new > pool.n_free:
                self.pools.make_room(new - pool.n_free)
            fits = min(new, pool.n_free)
            if fits == 0:
                return Stored(0, parent, found.length, cached_slots)
            slots = pool.alloc(fits)
            try:
                write(slots, found.length)
                leaf = tree.attach(parent, toks[found.length : found.length + fits], slots, namespace)
            except BaseException:
                pool.free(slots)
                raise
        finally:
            tree.unpin(parent)
        self.counters.inserted_tokens += fits
        return Stored(fits, leaf, found.length + fits, cached_slots + slots)

    def check_locked(self) -> None:
        """Assert every invariant of the tree, the pools and their bookkeeping. O(n)."""
        self.tree._check()
        self.pools._check()
        self.pins._check()
        if self.stores is not None:
            self.stores._check(list(self.tree.iter_nodes()))


def _pools_of(
    config: CacheConfig, kinds: LayerKinds, device: torch.device | str, dtype: torch.dtype
) -> tuple[KVPool, Stores]:
    """The pool, and the window and snapshot pools, of a model with more than full attention;
    refuses what such a model cannot have yet (a host tier, a remote tier)."""
    for option, value in (("host_budget", config.host_budget), ("remote", config.remote)):
        if value is not None:
            raise ValueError(
                f"{option}: not available for a model with sliding-window, chunked or recurrent layers "
                "(their window rows and state snapshots stay in the device pool); leave it unset"
            )
    full = KVLayout(kinds.full, empty=True)
    window = KVLayout(kinds.window, empty=True)
    state_bytes = kinds.states.width * kinds.states.dtype.itemsize if kinds.states is not None else 0
    shares = split_budget(
        config.budget_bytes,
        full.width * dtype.itemsize or TOKEN_BOOKKEEPING,
        window.width * dtype.itemsize,
        state_bytes,
        window_ratio=config.window_ratio,
        state_share=config.state_share,
    )
    pool = KVPool(full, shares[0], device=device, dtype=dtype)
    window_pool = KVPool(window, shares[1], device=device, dtype=dtype) if kinds.window else None
    snapshots = SnapshotPool(kinds.states, shares[2], device=device) if kinds.states is not None else None
    return pool, Stores(kinds, window_pool, snapshots)
