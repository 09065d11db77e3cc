"""A request's way into the cache: ``match`` finds and pins the longest cached prefix it can
be served (bringing host-resident KV back, fetching what Redis holds past it, waiting for
another request computing it), and ``release`` lets it go.

    # [0, hit.length)           served: pinned until released
    # [hit.length, hit.matched) cached but not servable there (no snapshot, no window): computed again
    # [hit.matched, limit)      not cached: computed, claimed meanwhile (see prefixcache/claims.py)
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Hashable, Sequence

import torch

from ..arguments import as_tokens, check_count, check_int, check_namespace, check_seconds
from ..hit import Hit, Lease
from ..tree import HOST
from .core import CacheCore
from .shared import fetch_remote

__all__ = ["Lookup"]


class Lookup:
    """``match`` and ``release`` of one cache (and the owner of the hits it makes)."""

    def __init__(self, core: CacheCore) -> None:
        self.core = core

    def cached_length(self, tokens: Sequence[int] | torch.Tensor, namespace: Hashable) -> int:
        toks = as_tokens(tokens)
        check_namespace(namespace)
        with self.core.lock:
            return self.core.tree.peek(toks, namespace)

    def match(
        self,
        tokens: Sequence[int] | torch.Tensor,
        namespace: Hashable,
        max_length: int | None,
        claim: bool,
        wait: float,
    ) -> Hit:
        core = self.core
        toks = as_tokens(tokens)
        check_namespace(namespace)
        if max_length is not None:
            check_count(max_length, "max_length")
        check_seconds(wait, "wait")
        limit = len(toks) if max_length is None else min(max_length, len(toks))
        lease = Lease(self, None, array("q"), core.epoch, core.generation)
        try:
            with core.lock:
                core.expire_locked()
                from_host = self.extend_locked(lease, toks, limit, namespace)
                if core.remote is None:  # all of it under this one hold of the lock
                    self._settle_locked(lease, toks, limit, namespace, claim, wait, from_host, 0)
            if core.remote is not None:
                from_remote = fetch_remote(core, lease, toks, limit, namespace)
                with core.lock:
                    self._settle_locked(lease, toks, limit, namespace, claim, wait, from_host, from_remote)
        except BaseException:
            self.release(Hit(lease, namespace, toks))
            raise
        return Hit(lease, namespace, toks)

    def _settle_locked(
        self,
        lease: Lease,
        toks: array,
        limit: int,
        namespace: Hashable,
        claim: bool,
        wait: float,
        from_host: int,
        from_remote: int,
    ) -> None:
        """The end of a match: wait for a claim worth waiting for, leave one's own, count the request."""
        core = self.core
        waited = self._wait_locked(lease, toks, limit, namespace, wait) if claim and wait else False
        if claim and len(lease.slots) < limit:
            lease.claim = core.claims.open(lease.node, namespace, toks, len(lease.slots), limit)
        c = core.counters
        c.requests += 1
        c.prompt_tokens += len(toks)
        c.hit_tokens += len(lease.slots)
        lease.counted = len(lease.slots)
        c.host_hit_tokens += from_host
        c.remote_hit_tokens += from_remote
        c.shared_waits += waited

    def extend_locked(self, lease: Lease, toks: array, limit: int, namespace: Hashable) -> int:
        """Go on matching ``toks[:limit]`` below the lease's node (from the root at first), bringing
        host-resident KV back to the device, and move the lease's pin and slots there, as far
        as a hit may end (see :mod:`prefixcache.stores`). Returns the tokens that came from the
        host."""
        core = self.core
        tree, have = core.tree, len(lease.slots)
        if lease.epoch != core.epoch:  # device slots were renumbered since
            lease.slots, lease.epoch = tree.path_slots(lease.node), core.epoch
        found = tree.descend(lease.node, toks[:limit] if limit < len(toks) else toks, have, namespace)
        node, slots = found.node, found.slots
        lease.matched = max(lease.matched, found.length)
        if core.stores is not None and node is not None:  # end where every kind of layer can serve
            node, length = core.stores.servable_end(node, found.length)
            if length <= have:
                return 0
            slots = slots[: length - have]
        if node is lease.node or len(slots) == 0:
            return 0
        tree.pin(node)
        from_host = 0
        if node is not None and node.tier == HOST:
            try:
                top, from_host = core.pools.promote(node)
            except BaseException:
                tree.unpin(node)
                raise
            if top is not node:  # the device could not take it all: serve what is there
                tree.pin(top)
                tree.unpin(node)
                node = top
            slots = tree.path_slots(node)[have:]
            from_host = min(from_host, len(slots))
        tree.unpin(lease.node)
        lease.node = node
        lease.slots = lease.slots + slots if have else slots
        return from_host

    def _wait_locked(self, lease: Lease, toks: array, limit: int, namespace: Hashable, wait: float) -> bool:
        """While another thread's request computes enough of ``toks[have:limit]`` (an open claim
        below the lease's node), wait for it (at most ``wait`` seconds in all) and match again.
        Returns whether it waited."""
        core = self.core
        deadline = time.monotonic() + wait
        waited = False
        while len(lease.slots) < limit:
            if core.claims.shared(lease.node, namespace, toks, len(lease.slots), limit) is None:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            waited = True
            core.claims_changed.wait(left)
            self.extend_locked(lease, toks, limit, namespace)
        return waited

    def release(self, hit: Hit) -> None:
        self.check_hit(hit)
        lease = hit.lease
        with self.core.lock:
            if not lease.released:
                lease.released = True
                self.core.tree.unpin(lease.node)
                if lease.claim is not None:  # its request computed nothing it stored: a waiter takes over
                    self.end_claim_locked(lease)

    def extend(self, hit: Hit, max_length: int | None) -> Hit:
        self.check_hit(hit)
        if max_length is not None:
            check_count(max_length, "max_length")
        toks, lease = hit.tokens, hit.lease
        limit = len(toks) if max_length is None else min(max_length, len(toks))
        with self.core.lock:
            if lease.released:
                raise ValueError("hit: already released; match again")
            if limit > len(lease.slots):
                self.extend_locked(lease, toks, limit, hit.namespace)
        return Hit(lease, hit.namespace, toks)

    def reused(self, hit: Hit, length: int) -> None:
        self.check_hit(hit)
        check_int(length, "length", 0, hit.length)
        lease = hit.lease
        with self.core.lock:
            self.core.counters.hit_tokens += length - lease.counted
            lease.counted = length

    def end_claim_locked(self, lease: Lease) -> None:
        assert lease.claim is not None
        self.core.claims.close(lease.claim)
        lease.claim = None
        self.core.claims_changed.notify_all()

    def check_hit(self, hit: object) -> Hit:
        """``hit`` if it is one of this cache's, else ``TypeError``/``ValueError``."""
        if not isinstance(hit, Hit):
            raise TypeError(f"hit: expected a Hit returned by PrefixCache.match, got {type(hit).__name__}")
        if hit.lease.owner is not self:
            raise ValueError("hit: it comes from another PrefixCache")
        return hit
