"""What a cache's owner does to it besides requests: pins, expiry, eviction, resizing,
forgetting a namespace, starting over for new weights; and the counters requests leave."""

from __future__ import annotations

import dataclasses
from array import array
from collections.abc import Hashable, Sequence

import torch

from ..arguments import as_tokens, check_count, check_namespace, parse_budget
from ..stores import split_budget
from .core import CacheCore

__all__ = ["Admin"]


class Admin:
    """The administration of one cache; every method takes its lock."""

    def __init__(self, core: CacheCore) -> None:
        self.core = core

    def pin(self, tokens: Sequence[int] | torch.Tensor, namespace: Hashable) -> None:
        toks = as_tokens(tokens)
        check_namespace(namespace)
        if not toks:
            raise ValueError("tokens: empty; give the token ids of a cached prefix")
        with self.core.lock:
            self.core.pins.pin_locked(toks, namespace)

    def unpin(self, tokens: Sequence[int] | torch.Tensor, namespace: Hashable) -> None:
        toks = as_tokens(tokens)
        check_namespace(namespace)
        with self.core.lock:
            self.core.pins.unpin_locked(toks, namespace)

    def expire(self) -> int:
        with self.core.lock:
            return self.core.expire_locked()

    def evict(self, n_tokens: int) -> int:
        check_count(n_tokens, "n_tokens")
        with self.core.lock:
            return self.core.pools.make_room(n_tokens)

    def clear(self) -> int:
        with self.core.lock:
            return self.core.pools.clear()

    def resize(self, budget: int | str, host_budget: int | str | None) -> None:
        core = self.core
        with core.lock:
            if core.stores is None:
                core.pools.resize(budget, host_budget)
            else:
                self._resize_stores_locked(budget, host_budget)
            core.epoch += 1  # device slots were renumbered
            core.config = dataclasses.replace(core.config, budget=budget)
            if host_budget is not None:
                core.config = dataclasses.replace(core.config, host_budget=host_budget)

    def _resize_stores_locked(self, budget: int | str, host_budget: int | str | None) -> None:
        """``resize`` of a model with window or snapshot pools: each gets its share of the new
        budget (as when made); least recently used nodes go until what each holds fits."""
        core = self.core
        stores, pool, tree = core.stores, core.pools.device, core.tree
        assert stores is not None
        if host_budget is not None:
            raise ValueError("host_budget: not available for a model with sliding-window, chunked or recurrent layers")
        window, snapshots = stores.window, stores.snapshots
        shares = split_budget(
            parse_budget(budget),
            pool.bytes_per_slot,
            window.bytes_per_token if window is not None else 0,
            snapshots.bytes_per_snapshot if snapshots is not None else 0,
            window_ratio=core.config.window_ratio,
            state_share=core.config.state_share,
        )
        if window is not None and window.capacity_for(shares[1]) < 1:
            raise ValueError(f"budget: {budget!r} leaves no room for one token's window rows; give a larger budget")
        if snapshots is not None and shares[2] < snapshots.bytes_per_snapshot:
            raise ValueError(f"budget: {budget!r} leaves no room for one state snapshot; give a larger budget")
        core.pools.resize(shares[0], None)
        if window is not None:
            capacity = window.capacity_for(shares[1])
            core.pools.make_room_until(lambda: window.n_used <= capacity)
            tree.relabel_window(window.resize(shares[1], array("q", (s for n in tree.iter_nodes() for s in n.wslots))))
        if snapshots is not None:
            count = shares[2] // snapshots.bytes_per_snapshot
            core.pools.make_room_until(lambda: snapshots.n_used <= count)
            kept = array("q", (n.snap for n in tree.iter_nodes() if n.snap >= 0))
            tree.relabel_snapshots(snapshots.resize(shares[2], kept))

    def drop_namespace(self, namespace: Hashable) -> int:
        check_namespace(namespace)
        with self.core.lock:
            self.core.pins.release_namespace_locked(namespace)
            return self.core.pools.drop_namespace(namespace)

    def rebind(self, fingerprint: str | None) -> int:
        core = self.core
        if core.remote is not None and not (isinstance(fingerprint, str) and fingerprint):
            raise ValueError(f"fingerprint: the remote tier needs the new weights' fingerprint, got {fingerprint!r}")
        with core.lock:
            core.generation += 1
            core.pins.release_all_locked()
            core.tree.retire_roots()
            dropped = core.pools.clear()
            core.fingerprint = fingerprint
            if core.remote is not None:
                assert fingerprint is not None
                core.remote.rebind(fingerprint)
            core.claims_changed.notify_all()
            return dropped

    def record(self, **counts: int) -> None:
        """Add ``counts`` to the counters of the same names."""
        with self.core.lock:
            c = self.core.counters
            for name, n in counts.items():
                setattr(c, name, getattr(c, name) + n)
