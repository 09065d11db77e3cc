"""What a cache's owner does to it besides requests: pins, expiry, eviction, resizing,
forgetting a namespace, starting over for new weights, closing; and the counters that
requests served elsewhere leave. :class:`PrefixCache` inherits these."""

from __future__ import annotations

import dataclasses
from array import array
from collections.abc import Hashable, Sequence

import torch

from ..arguments import as_tokens, check_count, check_namespace, parse_budget
from ..stores import split_budget
from .core import CacheCore

__all__ = ["Administration"]


class Administration:
    """The administration of one cache (a part of :class:`PrefixCache`); every method takes its lock."""

    _core: CacheCore

    def pin(self, tokens: Sequence[int] | torch.Tensor, *, namespace: Hashable = None) -> None:
        """Keep the cached ``tokens`` (a system prompt, say) on the device until :meth:`unpin`.

        Pins nest. The tokens must all be cached (``warm`` or a request stores them);
        pinned KV is never evicted, moved to the host tier or expired. Raises
        ``ValueError`` (cache unchanged) when they are not cached, and when they would not
        fit on the device beside what is pinned already: pinned bytes never exceed the
        budget.
        """
        toks = as_tokens(tokens)
        check_namespace(namespace)
        if not toks:
            raise ValueError("tokens: empty; give the token ids of a cached prefix")
        with self._core.lock:
            self._core.pins.pin_locked(toks, namespace)

    def unpin(self, tokens: Sequence[int] | torch.Tensor, *, namespace: Hashable = None) -> None:
        """Undo one :meth:`pin` of the same ``tokens`` and ``namespace``; ``ValueError`` when they are not pinned."""
        toks = as_tokens(tokens)
        check_namespace(namespace)
        with self._core.lock:
            self._core.pins.unpin_locked(toks, namespace)

    def expire(self) -> int:
        """Drop what has not been used for ``ttl`` seconds now (requests do this too). Returns tokens dropped."""
        with self._core.lock:
            return self._core.expire_locked()

    def evict(self, n_tokens: int) -> int:
        """Free at least ``n_tokens`` device slots, least recently used first, or all that can be.

        With a host tier the KV moves there; without one it is dropped. Returns the device
        tokens freed; ``evict(0)`` does nothing."""
        check_count(n_tokens, "n_tokens")
        with self._core.lock:
            return self._core.pools.make_room(n_tokens)

    def clear(self) -> int:
        """Drop every unpinned token in both tiers (pinned prefixes stay). Returns the tokens dropped."""
        with self._core.lock:
            return self._core.pools.clear()

    def resize(self, budget: int | str, host_budget: int | str | None = None) -> None:
        """Give the device pool (and, with ``host_budget``, the host pool) a new byte budget.

        Shrinking moves least recently used KV to the host tier, or drops it, until the
        rest fits; it never drops pinned tokens, and raises ``ValueError`` (cache
        unchanged) when they alone exceed the new budget. Kept KV is moved into the new
        pool. ``host_budget`` on a cache without a host tier adds one. :attr:`config`
        then holds the new budgets.
        """
        core = self._core
        with core.lock:
            if core.stores is None:
                core.pools.resize(budget, host_budget)
            else:
                self._resize_stores_locked(budget, host_budget)
            core.epoch += 1  # device slots were renumbered
            core.config = dataclasses.replace(core.config, budget=budget)
            if host_budget is not None:
                core.config = dataclasses.replace(core.config, host_budget=host_budget)

    def drop_namespace(self, namespace: Hashable) -> int:
        """Forget what ``namespace`` holds: release the pins :meth:`pin` put on it and drop
        every token of it, in both tiers, that no request in flight holds. Other
        namespaces are untouched. Returns the tokens dropped. O(nodes in the namespace).
        Raises ``TypeError`` for an unhashable namespace.
        """
        check_namespace(namespace)
        with self._core.lock:
            self._core.pins.release_namespace_locked(namespace)
            return self._core.pools.drop_namespace(namespace)

    def rebind(self, fingerprint: str | None) -> int:
        """Start over for other model weights: drop every cached token of every namespace and
        tier, release every :meth:`pin`, and take ``fingerprint`` as the model's, for saved
        files and the remote tier from now on (``wrap`` calls this when it sees the weights
        change). Tokens pinned by requests in flight can no longer be found and are dropped
        once released; what those requests computed is not stored. Returns the tokens dropped.
        Raises ``ValueError`` for a remote tier given no fingerprint.
        """
        core = self._core
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

    def close(self, timeout: float = 2.0) -> None:
        """Flush the remote tier's queue (within ``timeout`` seconds; the rest is dropped and
        counted) and close its connections. The local tiers stay usable; safe to call more
        than once. Without a remote tier it does nothing."""
        if self._core.remote is not None:
            self._core.remote.close(timeout)

    def record_pass_through(self, prompt_tokens: int, requests: int = 1) -> None:
        """Count requests served by the model without the cache (they hit nothing)."""
        self._record(requests=requests, prompt_tokens=prompt_tokens, passed_through=requests)

    def record_verification(self, mismatch: bool) -> None:
        """Count one request run again without the cache and compared; ``mismatch`` if it differed."""
        self._record(verified=1, mismatches=int(bool(mismatch)))

    def _resize_stores_locked(self, budget: int | str, host_budget: int | str | None) -> None:
        """``resize`` of a model with window or snapshot pools: each gets its share of the new
        budget (as when made); least recently used nodes go until what each holds fits."""
        core = self._core
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

    def _record(self, **counts: int) -> None:
        """Add ``counts`` to the counters of the same names."""
        with self._core.lock:
            c = self._core.counters
            for name, n in counts.items():
                setattr(c, name, getattr(c, name) + n)
