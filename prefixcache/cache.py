"""PrefixCache: the radix tree, the KV pools and the budget behind one lock.

A request looks up the longest cached prefix of its tokens (``match``, which pins
it and keeps its slots), reads its KV (``gather``), computes the rest, and stores
what is new under the node the hit pinned (``insert(..., hit=hit)``): the tree is
walked twice per request, once down from the root and once below the hit.

    with cache.match(tokens, max_length=len(tokens) - 1) as hit:
        prefix_kv = cache.gather(hit)             # [0, hit.length): from the pool
        kv = model(tokens[hit.length:], prefix_kv)  # [hit.length, len(tokens)): computed now
        cache.insert(tokens, kv, hit=hit)         # stores only what is not cached yet

Every public method takes the cache's one lock (a plain ``threading.Lock``); the
methods whose names end in ``_locked`` assume the caller holds it. None runs a model.
"""

from __future__ import annotations

import os
import threading
import time
from array import array
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch

from . import persist
from .checks import as_tokens, check_count, check_kv, check_namespace
from .claims import Claims
from .config import UNSET, CacheConfig, Unset, parse_budget
from .hit import Hit, Lease
from .kv import KVLayout, KVPool, LayerKV, LayerSpec
from .kv.pool import TOKEN_BOOKKEEPING
from .kv.state import SnapshotPool
from .pins import UserPins
from .remote import RemoteTier
from .stats import CacheStats, Counters
from .stores import LayerKinds, RowSource, Servable, Stored, Stores, split_budget, store_parts
from .tiers import Tiers
from .tree import DEVICE, HOST, Node, RadixTree, path_length, window_slots

__all__ = ["Hit", "PrefixCache", "SavedNode"]


class SavedNode(NamedTuple):
    """One node of the tree as :meth:`PrefixCache.export` gives it."""

    parent: int
    """Index of the parent node in the exported list; -1 under the namespace's root."""
    namespace: Hashable
    tokens: array
    """The edge's token ids (``array('i')``)."""
    rows: torch.Tensor
    """``[len(tokens), width]`` KV rows on the CPU, in the device pool's dtype."""
    tick: int
    """Last access; larger is more recent."""


class PrefixCache:
    """Cached KV of token prefixes, bounded by a byte budget, safe to share between threads.

    ``layers`` gives each layer's KV shape for one token; the pool takes
    ``config.budget`` bytes on ``device`` in ``dtype``. The options (``budget``,
    ``host_budget``, ``host_dtype``, ``ttl``, ``remote``, ...) are those of
    :class:`CacheConfig`, given as keyword arguments or as ``config``. ``fingerprint``
    names the model whose KV this is (``wrap`` gives it; a remote tier and saved files
    need it). ``clock`` (nanoseconds) is where the tree's ticks and expiry read the
    time. Raises ``TypeError``/``ValueError`` naming the bad argument, and
    ``ImportError`` for a remote tier without redis-py.
    """

    def __init__(
        self,
        layers: Sequence[LayerSpec] | KVLayout,
        budget: int | str | Unset = UNSET,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        config: CacheConfig | None = None,
        fingerprint: str | None = None,
        clock: Callable[[], int] | None = None,
        kinds: LayerKinds | None = None,
        **options: Any,
    ) -> None:
        self.config = CacheConfig.of(config, budget, **options)
        self._stores: Stores | None = None
        if kinds is not None and not kinds.plain:
            pool, self._stores = self._make_stores(kinds, device, dtype)
        else:
            pool = KVPool(layers, self.config.budget, device=device, dtype=dtype)
        self.kinds = kinds or LayerKinds(pool.layers)
        """What the model's layers keep, by kind (see :mod:`prefixcache.stores`)."""
        self.fingerprint = fingerprint
        """Identifies the model whose KV this is; saved files carry it."""
        self._remote: RemoteTier | None = None
        if self.config.remote is not None:
            if fingerprint is None:
                raise ValueError(
                    f"remote: {self.config.remote!r} needs the fingerprint of the model whose KV is shared "
                    "(wrap(model, remote=...) gives it); give fingerprint= to PrefixCache"
                )
            self._remote = RemoteTier(
                self.config.remote,
                fingerprint=fingerprint,
                layers=pool.layers,
                dtype=pool.dtype,
                chunk_tokens=self.config.remote_chunk_tokens,
                pin_memory=pool.device.type == "cuda",
            )
        self._tree = RadixTree(clock) if clock is not None else RadixTree()
        self._counters = Counters()
        self._tiers = Tiers(self._tree, pool, None, self._counters, self._stores)
        if self.config.host_budget is not None:
            self._tiers.add_host(self.config.host_budget, self.config.host_dtype)
        self._lock = threading.Lock()
        self._claims_changed = threading.Condition(self._lock)  # a claim ended: waiters match again
        self._claims = Claims()
        self._pins = UserPins(self._tree, self._tiers)
        self._epoch = 0  # bumped when device slots are renumbered: a Hit's slots are then stale
        self._generation = 0  # bumped by rebind: hits made before it store nothing

    def _make_stores(self, kinds: LayerKinds, device: torch.device | str, dtype: torch.dtype) -> tuple[KVPool, Stores]:
        """The pool, and the window and snapshot pools, of a model with more than full attention;
        refuses what such a model cannot have yet (a host tier, a remote tier)."""
        config = self.config
        for option, value in (("host_budget", config.host_budget), ("remote", config.remote)):
            if value is not None:
                raise ValueError(
                    f"{option}: not available for a model with sliding-window, chunked or recurrent layers "
                    "(their window rows and state snapshots stay in the device pool); leave it unset"
                )
        full = KVLayout(kinds.full, empty=True)
        window = KVLayout(kinds.window, empty=True)
        state_bytes = kinds.states.width * kinds.states.dtype.itemsize if kinds.states is not None else 0
        full_bytes = full.width * dtype.itemsize or TOKEN_BOOKKEEPING
        shares = split_budget(
            config.budget_bytes,
            full_bytes,
            window.width * dtype.itemsize,
            state_bytes,
            window_ratio=config.window_ratio,
            state_share=config.state_share,
        )
        pool = KVPool(full, shares[0], device=device, dtype=dtype)
        window_pool = KVPool(window, shares[1], device=device, dtype=dtype, name="budget") if kinds.window else None
        snapshots = SnapshotPool(kinds.states, shares[2], device=device) if kinds.states is not None else None
        return pool, Stores(kinds, window_pool, snapshots)

    # -- reading ------------------------------------------------------------

    @property
    def pool(self) -> KVPool:
        """The KV pool on the device (read its shape; do not alloc or free behind the cache)."""
        return self._tiers.device

    @property
    def window_pool(self) -> KVPool | None:
        """The window layers' pool (None for a model without sliding-window or chunked layers)."""
        return self._stores.window if self._stores is not None else None

    @property
    def snapshot_pool(self) -> SnapshotPool | None:
        """The recurrent-state snapshot pool (None for a model without recurrent layers)."""
        return self._stores.snapshots if self._stores is not None else None

    @property
    def host_pool(self) -> KVPool | None:
        """The host tier's pool, or None without one."""
        return self._tiers.host

    @property
    def layout(self) -> KVLayout:
        """The shape of one token's KV."""
        return self._tiers.device.layout

    @property
    def tree(self) -> RadixTree:
        """The radix tree (for inspection only)."""
        return self._tree

    @property
    def remote(self) -> RemoteTier | None:
        """The remote tier, or None without one."""
        return self._remote

    @property
    def stats(self) -> CacheStats:
        """A snapshot of the counters."""
        remote = self._remote.stats if self._remote is not None else None
        with self._lock:
            return CacheStats(
                **self._counters.as_dict(),
                **self._tiers.sizes(),
                user_pinned_tokens=self._pins.tokens(),
                remote_bytes_fetched=remote.bytes_fetched if remote else 0,
                remote_bytes_written=remote.bytes_written if remote else 0,
                remote_errors=remote.errors if remote else 0,
                remote_invalid_chunks=remote.invalid_chunks if remote else 0,
                remote_queue_drops=remote.queue_drops + remote.write_drops if remote else 0,
            )

    def cached_length(self, tokens: Sequence[int] | torch.Tensor, *, namespace: Hashable = None) -> int:
        """How many leading ``tokens`` are cached (in either tier), without counting a
        request or touching anything. O(len(tokens))."""
        toks = as_tokens(tokens)
        check_namespace(namespace)
        with self._lock:
            return self._tree.peek(toks, namespace)

    # -- a request ----------------------------------------------------------

    def match(
        self,
        tokens: Sequence[int] | torch.Tensor,
        *,
        namespace: Hashable = None,
        max_length: int | None = None,
        claim: bool = False,
        wait: float = 0.0,
    ) -> Hit:
        """Find and pin the longest cached prefix of ``tokens`` (at most ``max_length`` long).

        KV of the prefix found in the host tier is first copied back to the device (moving
        other device KV out as needed); if the device cannot take all of it, the hit ends
        where the device part ends. With a remote tier, the complete chunks that follow in
        Redis are fetched (outside the lock) and stored on the device first. With
        ``claim``, the hit records that its request will compute the rest (see
        :mod:`prefixcache.claims`): requests of other threads that share enough of it wait
        up to ``wait`` seconds for its insert rather than compute it too, and this one
        waits likewise before claiming. Counts one request of ``len(tokens)`` prompt
        tokens. The result must be released (``with`` or :meth:`Hit.release`).
        O(len(tokens) + log n) plus the copies. Raises ``TypeError``/``ValueError`` for
        bad tokens, namespace, max_length or wait.
        """
        toks = as_tokens(tokens)
        check_namespace(namespace)
        if max_length is not None:
            check_count(max_length, "max_length")
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait < float("inf"):
            raise ValueError(f"wait: expected a number of seconds >= 0, got {wait!r}")
        limit = len(toks) if max_length is None else min(max_length, len(toks))
        lease = Lease(self, None, array("q"), self._epoch, self._generation)
        try:
            with self._lock:
                self._expire_locked()
                from_host = self._extend_locked(lease, toks, limit, namespace)
                if self._remote is None:  # all of it under this one hold of the lock
                    self._settle_locked(lease, toks, limit, namespace, claim, wait, from_host, 0)
            if self._remote is not None:
                from_remote = self._fetch_remote(lease, toks, limit, namespace)
                with self._lock:
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
        waited = self._wait_locked(lease, toks, limit, namespace, wait) if claim and wait else False
        if claim and len(lease.slots) < limit:
            lease.claim = self._claims.open(lease.node, namespace, toks, len(lease.slots), limit)
        c = self._counters
        c.requests += 1
        c.prompt_tokens += len(toks)
        c.hit_tokens += len(lease.slots)
        c.host_hit_tokens += from_host
        c.remote_hit_tokens += from_remote
        c.shared_waits += waited

    def _extend_locked(self, lease: Lease, toks: array, limit: int, namespace: Hashable) -> int:
        """Go on matching ``toks[:limit]`` below the lease's node (from the root at first), bringing
        host-resident KV back to the device, and move the lease's pin and slots there. Returns
        the tokens that came from the host."""
        tree, have = self._tree, len(lease.slots)
        if lease.epoch != self._epoch:  # device slots were renumbered since
            lease.slots, lease.epoch = tree.path_slots(lease.node), self._epoch
        found = tree.descend(lease.node, toks[:limit] if limit < len(toks) else toks, have, namespace)
        node, slots = found.node, found.slots
        lease.matched = max(lease.matched, found.length)
        if self._stores is not None and node is not None:  # end where every kind of layer can serve
            node, length = self._stores.servable_end(node, found.length)
            if length <= have:
                return 0
            slots = slots[: length - have]
        if node is lease.node or len(slots) == 0:
            return 0
        tree.pin(node)
        from_host = 0
        if node is not None and node.tier == HOST:
            try:
                top, from_host = self._tiers.promote(node)
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

    def _fetch_remote(self, lease: Lease, toks: array, limit: int, namespace: Hashable) -> int:
        """Bring the complete chunks that follow the lease's prefix from the remote tier into the
        device pool (the fetch runs outside the lock) and extend the lease over them. Returns the
        tokens added."""
        remote = self._remote
        have = len(lease.slots)
        if remote is None or (limit // remote.layout.chunk_tokens) * remote.layout.chunk_tokens <= have:
            return 0
        if lease.generation != self._generation:  # the weights changed: Redis holds other KV now
            return 0
        try:
            fetched = remote.fetch(namespace, toks[:limit], have)
        except ValueError:  # a namespace Redis keys cannot hold: served locally only
            return 0
        if fetched.stop <= have:
            return 0
        rows, start = fetched.rows, fetched.start

        def write(slots: array, first: int) -> None:
            self._tiers.device.write_rows(slots, rows[first - start : first - start + len(slots)])

        with self._lock:
            if lease.generation != self._generation:
                return 0
            if lease.epoch != self._epoch:
                lease.slots, lease.epoch = self._tree.path_slots(lease.node), self._epoch
            stored = self._store_locked(toks[: fetched.stop], lease.node, have, namespace, write)
            if stored.length <= have or stored.node is None or stored.node.tier != DEVICE:
                return 0
            self._tree.pin(stored.node)
            self._tree.unpin(lease.node)
            lease.node = stored.node
            lease.slots = lease.slots + stored.slots
            return stored.length - have

    def _wait_locked(self, lease: Lease, toks: array, limit: int, namespace: Hashable, wait: float) -> bool:
        """While another thread's request computes enough of ``toks[have:limit]`` (an open claim
        below the lease's node), wait for it (at most ``wait`` seconds in all) and match again.
        Returns whether it waited."""
        deadline = time.monotonic() + wait
        waited = False
        while len(lease.slots) < limit:
            if self._claims.shared(lease.node, namespace, toks, len(lease.slots), limit) is None:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            waited = True
            self._claims_changed.wait(left)
            self._extend_locked(lease, toks, limit, namespace)
        return waited

    def gather(self, hit: Hit, length: int | None = None, *, copy: bool = True) -> list[LayerKV]:
        """The KV of ``hit``'s first ``length`` tokens (all of them by default): per layer
        ``(keys, values)``, each ``[1, kv_heads, length, head_dim]``.

        ``copy=False`` may return views of the pool instead of copies (see
        :meth:`KVPool.gather`): read them only, and only until the hit is released.
        Raises ``TypeError`` for something that is not a Hit, and ``ValueError`` if the
        hit was released, comes from another cache, or is shorter than ``length``.
        """
        self._check_hit(hit)
        if length is None:
            length = hit.length
        elif isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= hit.length:
            raise ValueError(f"length: expected an int in [0, {hit.length}], got {length!r}")
        lease = hit.lease
        with self._lock:
            if lease.released:
                raise ValueError("hit: already released; match again")
            slots = lease.slots if lease.epoch == self._epoch else self._tree.path_slots(lease.node)
            return self._tiers.device.gather(slots[:length] if length < len(slots) else slots, copy=copy)

    def gather_window(self, hit: Hit, length: int | None = None) -> list[LayerKV]:
        """The window layers' KV of the last ``min(length, span - 1)`` of ``hit``'s first
        ``length`` tokens (all by default): per window layer ``(keys, values)``, each ``[1,
        kv_heads, n, head_dim]`` (copies). ``length`` must be servable (:meth:`servable`).
        Empty for a model without window layers."""
        lease = hit.lease
        length = hit.length if length is None else length
        with self._lock:
            stores = self._stores
            if stores is None or stores.window is None:
                return []
            n = min(length, stores.need)
            node = self._node_at_locked(lease, length)
            return stores.window.gather(window_slots(node, length, n) if n else array("q"))

    def snapshot(self, hit: Hit, length: int | None = None) -> torch.Tensor | None:
        """The snapshot row (``[width]``, a copy) of the recurrent state after ``hit``'s first
        ``length`` tokens (all by default), or None at length 0 and for a model without
        recurrent layers. ``length`` must be servable (:meth:`servable`)."""
        lease = hit.lease
        length = hit.length if length is None else length
        with self._lock:
            stores = self._stores
            if stores is None or stores.snapshots is None or length == 0:
                return None
            node = self._node_at_locked(lease, length)
            if node is None or node.snap < 0:
                raise ValueError(f"length: no snapshot of the state after {length} tokens is held")
            return stores.snapshots.read([node.snap])[0]

    def servable(self, hit: Hit) -> Servable:
        """The lengths at which ``hit``'s prefix may be cut and still served (every length up to
        it for a model with full attention only)."""
        lease = hit.lease
        with self._lock:
            if self._stores is None:
                return Servable(frozenset(), 0, hit.length)
            return self._stores.servable(lease.node)

    def _node_at_locked(self, lease: Lease, length: int) -> Node | None:
        """The node of the lease's path that ends at ``length`` (or covers it)."""
        node, end = lease.node, path_length(lease.node)
        while node is not None and node.parent is not None and end - len(node.key) >= length:
            end -= len(node.key)
            node = node.parent
        return node

    def insert(
        self,
        tokens: Sequence[int] | torch.Tensor,
        kv: Sequence[LayerKV],
        *,
        namespace: Hashable = None,
        offset: int = 0,
        row: int = 0,
        hit: Hit | None = None,
        window: Sequence[LayerKV] | None = None,
        window_offset: int = 0,
        snapshots: Mapping[int, torch.Tensor] | None = None,
    ) -> int:
        """Store the KV of whatever part of ``tokens`` is not cached yet.

        Token ``i``'s KV is read at ``kv[layer][k or v][row, :, offset + i, :]``. With
        ``hit`` (a hit on the first ``hit.length`` of these tokens, still pinned) the new
        tokens are attached below the hit's node, in the hit's namespace, without a walk
        from the root. Evicts least recently used KV to make room; when even that is not
        enough (the rest is pinned), stores the longest prefix that fits. Returns how many
        tokens were stored. Raises ``TypeError``/``ValueError`` for bad arguments, leaving
        the cache as it was.

        For a model with window layers, ``window`` holds their KV, token ``i``'s at
        position ``window_offset + i`` (tokens before position 0 are not there); the
        nodes of the way get the window rows a hit may need of them. For one with recurrent
        layers, ``snapshots`` maps a token count to the snapshot row of the state after that
        many tokens; a node ends at each.
        """
        if hit is not None:
            self._check_hit(hit)
        # The tokens a hit was matched on were checked then.
        toks = hit.tokens if hit is not None and tokens is hit.tokens else as_tokens(tokens)
        check_namespace(namespace)
        check_count(offset, "offset")
        check_count(row, "row")
        pool = self._tiers.device
        check_kv(kv, pool.layers, pool.device, positions=offset + len(toks), row=row)
        start = 0
        if hit is not None:
            start = hit.length
            if namespace is not None and namespace != hit.namespace:
                raise ValueError(f"namespace: {namespace!r}, but the hit is in namespace {hit.namespace!r}")
            namespace = hit.namespace
            if toks is not hit.tokens and (len(toks) < start or toks[:start] != hit.tokens[:start]):
                raise ValueError(f"tokens: they do not begin with the hit's {start} cached tokens")

        def write(slots: array, first: int) -> None:
            pool.write(slots, kv, start=offset + first, row=row)

        source = None
        if self._stores is not None:
            source = self._row_source(toks, write, row, window, window_offset, snapshots)
        lease = hit.lease if hit is not None else None
        with self._lock:
            if lease is not None and lease.released:
                raise ValueError("hit: already released; match again")
            if lease is not None and lease.generation != self._generation:
                # Computed with the weights before rebind: of no use to requests from now on.
                if lease.claim is not None:
                    self._end_claim_locked(lease)
                return 0
            self._expire_locked()
            try:
                top = lease.node if lease is not None else None
                if source is not None and self._stores is not None:
                    stored = store_parts(self._stores, self._tree, self._tiers, toks, top, start, namespace, source)
                    self._counters.inserted_tokens += stored.stored
                else:
                    stored = self._store_locked(toks, top, start, namespace, write)
            finally:
                if lease is not None and lease.claim is not None:
                    self._end_claim_locked(lease)
        if self._remote is not None:
            self._share(toks, kv, offset, row, namespace)
        return stored.stored

    def _row_source(
        self,
        toks: array,
        write: Callable[[array, int], None],
        row: int,
        window: Sequence[LayerKV] | None,
        window_offset: int,
        snapshots: Mapping[int, torch.Tensor] | None,
    ) -> RowSource:
        """What :func:`store_parts` reads a request's window rows and snapshots from, checked."""
        stores = self._stores
        assert stores is not None
        window_write = None
        if stores.window is not None and window is not None:
            if isinstance(window_offset, bool) or not isinstance(window_offset, int):
                raise TypeError(f"window_offset: expected an int, got {window_offset!r}")
            pool = stores.window
            check_kv(window, pool.layers, pool.device, positions=window_offset + len(toks), row=row)

            def window_write(slots: array, first: int) -> None:
                pool.write(slots, window, start=window_offset + first, row=row)

        rows: dict[int, torch.Tensor] = {}
        if snapshots:
            if stores.snapshots is None:
                raise ValueError("snapshots: this cache's model has no recurrent layers")
            width = stores.snapshots.layout.width
            for length, state in snapshots.items():
                if isinstance(length, bool) or not isinstance(length, int) or not 0 < length <= len(toks):
                    raise ValueError(f"snapshots: a key must be a token count in [1, {len(toks)}], got {length!r}")
                if not isinstance(state, torch.Tensor) or state.shape != (width,):
                    raise ValueError(f"snapshots[{length}]: expected a tensor of shape [{width}]")
                rows[length] = state
        return RowSource(write, window_write, max(0, -window_offset), rows)

    def _share(self, toks: array, kv: Sequence[LayerKV], offset: int, row: int, namespace: Hashable) -> None:
        """Hand the complete chunks of ``toks`` the remote tier does not hold yet to its writer;
        their rows are copied out of ``kv`` now (asynchronously from a GPU), never waited for."""
        remote = self._remote
        assert remote is not None
        try:
            lo, hi = remote.pending(namespace, toks)
        except ValueError:  # a namespace Redis keys cannot hold
            return
        if hi > lo:
            pool = self._tiers.device
            rows = torch.empty(hi - lo, pool.width, dtype=pool.dtype, device=pool.device)
            pool.layout.rows_of(kv, offset + lo, hi - lo, row, rows)
            remote.submit(namespace, toks, rows, start=lo)

    def _store_locked(
        self, toks: array, node: Node | None, start: int, namespace: Hashable, write: Callable[[array, int], None]
    ) -> Stored:
        """Store the uncached rest of ``toks`` below ``node`` (whose path holds ``toks[:start]``):
        ``write(slots, first)`` fills ``slots`` with the KV of tokens ``first, first + 1, ...``.
        Returns how many tokens it stored and where the cached path now ends."""
        tree, pool = self._tree, self._tiers.device
        found = tree.descend(node, toks, start, namespace)
        new = len(toks) - found.length
        parent = found.node
        if new == 0:
            return Stored(0, parent, found.length, found.slots)
        tree.pin(parent)  # keep the path while making room
        cached_slots = found.slots
        try:
            if parent is not None and parent.tier == HOST:
                if self._tiers.promote(parent)[0] is not parent:
                    return Stored(0, parent, found.length, found.slots)  # the cached part could not come back
                # The host part of the path now lives in new device slots: found.slots named host ones.
                cached_slots = tree.path_slots(parent)[start:]
            if new > pool.n_free:
                self._tiers.make_room(new - pool.n_free)
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
        self._counters.inserted_tokens += fits
        return Stored(fits, leaf, found.length + fits, cached_slots + slots)

    def record_pass_through(self, prompt_tokens: int, requests: int = 1) -> None:
        """Count requests served by the model without the cache (they hit nothing)."""
        with self._lock:
            c = self._counters
            c.requests += requests
            c.prompt_tokens += prompt_tokens
            c.passed_through += requests

    def release(self, hit: Hit) -> None:
        """Unpin ``hit`` (what :meth:`Hit.release` does). Safe to call more than once."""
        self._check_hit(hit)
        lease = hit.lease
        with self._lock:
            if not lease.released:
                lease.released = True
                self._tree.unpin(lease.node)
                if lease.claim is not None:  # its request computed nothing it stored: a waiter takes over
                    self._end_claim_locked(lease)

    def _end_claim_locked(self, lease: Lease) -> None:
        assert lease.claim is not None
        self._claims.close(lease.claim)
        lease.claim = None
        self._claims_changed.notify_all()

    def _check_hit(self, hit: object) -> None:
        if not isinstance(hit, Hit):
            raise TypeError(f"hit: expected a Hit returned by PrefixCache.match, got {type(hit).__name__}")
        if hit.lease.owner is not self:
            raise ValueError("hit: it comes from another PrefixCache")

    # -- pins and expiry ----------------------------------------------------

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
        with self._lock:
            self._pins.pin_locked(toks, namespace)

    def unpin(self, tokens: Sequence[int] | torch.Tensor, *, namespace: Hashable = None) -> None:
        """Undo one :meth:`pin` of the same ``tokens`` and ``namespace``.

        Raises ``ValueError`` when they are not pinned."""
        toks = as_tokens(tokens)
        check_namespace(namespace)
        with self._lock:
            self._pins.unpin_locked(toks, namespace)

    def expire(self) -> int:
        """Drop what has not been used for ``ttl`` seconds now (requests do this too). Returns tokens dropped."""
        with self._lock:
            return self._expire_locked()

    def _expire_locked(self) -> int:
        ttl_ns = self.config.ttl_ns
        if ttl_ns is None:
            return 0
        return self._tiers.expire(self._tree.now() - ttl_ns)

    # -- memory -------------------------------------------------------------

    def evict(self, n_tokens: int) -> int:
        """Free at least ``n_tokens`` device slots, least recently used first, or all that can be.

        With a host tier the KV moves there; without one it is dropped. Returns the device
        tokens freed; ``evict(0)`` does nothing."""
        check_count(n_tokens, "n_tokens")
        with self._lock:
            return self._tiers.make_room(n_tokens)

    def clear(self) -> int:
        """Drop every unpinned token in both tiers (pinned prefixes stay). Returns the tokens dropped."""
        with self._lock:
            return self._tiers.clear()

    def resize(self, budget: int | str, host_budget: int | str | None = None) -> None:
        """Give the device pool (and, with ``host_budget``, the host pool) a new byte budget.

        Shrinking moves least recently used KV to the host tier, or drops it, until the
        rest fits; it never drops pinned tokens, and raises ``ValueError`` (cache
        unchanged) when they alone exceed the new budget. Kept KV is moved into the new
        pool. ``host_budget`` on a cache without a host tier adds one.
        """
        with self._lock:
            if self._stores is None:
                self._tiers.resize(budget, host_budget)
            else:
                self._resize_stores_locked(budget, host_budget)
            self._epoch += 1  # device slots were renumbered

    def _resize_stores_locked(self, budget: int | str, host_budget: int | str | None) -> None:
        """``resize`` of a model with window or snapshot pools: each gets its share of the new
        budget (as when made); least recently used nodes go until what each holds fits."""
        stores, pool = self._stores, self._tiers.device
        assert stores is not None
        if host_budget is not None:
            raise ValueError("host_budget: not available for a model with sliding-window, chunked or recurrent layers")
        window, snapshots = stores.window, stores.snapshots
        shares = split_budget(
            parse_budget(budget),
            pool.bytes_per_slot,
            window.bytes_per_token if window is not None else 0,
            snapshots.bytes_per_snapshot if snapshots is not None else 0,
            window_ratio=self.config.window_ratio,
            state_share=self.config.state_share,
        )
        if window is not None and window.capacity_for(shares[1]) < 1:
            raise ValueError(f"budget: {budget!r} leaves no room for one token's window rows; give a larger budget")
        if snapshots is not None and shares[2] < snapshots.bytes_per_snapshot:
            raise ValueError(f"budget: {budget!r} leaves no room for one state snapshot; give a larger budget")
        self._tiers.resize(shares[0], None)
        tree = self._tree
        if window is not None:
            capacity = window.capacity_for(shares[1])
            self._tiers.make_room_until(lambda: window.n_used <= capacity)
            tree.relabel_window(window.resize(shares[1], array("q", (s for n in tree.iter_nodes() for s in n.wslots))))
        if snapshots is not None:
            count = shares[2] // snapshots.bytes_per_snapshot
            self._tiers.make_room_until(lambda: snapshots.n_used <= count)
            kept = array("q", (n.snap for n in tree.iter_nodes() if n.snap >= 0))
            tree.relabel_snapshots(snapshots.resize(shares[2], kept))

    def close(self, timeout: float = 2.0) -> None:
        """Flush the remote tier's queue (within ``timeout`` seconds; the rest is dropped and
        counted) and close its connections. The local tiers stay usable; safe to call more
        than once. Without a remote tier it does nothing."""
        if self._remote is not None:
            self._remote.close(timeout)

    # -- saving and loading -------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write every cached prefix and its KV to ``path`` (one safetensors file), atomically.

        The file records :attr:`fingerprint` (set by ``wrap`` from the model) so that
        :meth:`load` can refuse a file made with another model. See :mod:`prefixcache.persist`.
        """
        persist.save(self, path)

    def load(self, path: str | os.PathLike[str]) -> int:
        """Add the prefixes saved in ``path`` to this cache; returns the tokens stored.

        The whole file is read and checked (format, checksums, the model's fingerprint,
        layer shapes) before anything changes: a file that fails any check raises
        ``ValueError`` and leaves the cache as it was.
        """
        return persist.load(self, path)

    def export(self) -> list[SavedNode]:
        """Every node, parents before children, with its KV rows copied to the CPU (under the lock).

        Raises ``ValueError`` for a model with window or recurrent layers: their window rows
        and snapshots have no place in the file format yet."""
        if self._stores is not None:
            raise ValueError(
                "cache: saving is not available for a model with sliding-window, chunked or recurrent layers "
                "(the file format holds full-attention KV only)"
            )
        with self._lock:
            index: dict[int, int] = {}
            out: list[SavedNode] = []
            dtype = self._tiers.device.dtype
            for node in self._tree.iter_nodes(retired=False):
                parent = node.parent
                assert parent is not None
                index[id(node)] = len(out)
                rows = self._tiers.pool(node.tier).read_rows(node.slots).to("cpu", dtype)
                out.append(
                    SavedNode(index.get(id(parent), -1), self._tree.namespace_of(node), node.key, rows, node.tick)
                )
            return out

    def restore(self, paths: Iterable[tuple[array, torch.Tensor, Hashable]]) -> int:
        """Store each ``(tokens, rows, namespace)`` in turn, ``rows[i]`` the KV row of ``tokens[i]``
        (``[len(tokens), width]``), for the part not cached yet, making room as :meth:`insert`
        does; the lock is held throughout. Returns the tokens stored."""
        pool = self._tiers.device
        stored = 0
        with self._lock:
            for tokens, rows, namespace in paths:
                if rows.shape != (len(tokens), pool.width):
                    raise ValueError(f"rows: expected shape [{len(tokens)}, {pool.width}], got {list(rows.shape)}")

                def write(slots: array, first: int, rows: torch.Tensor = rows) -> None:
                    pool.write_rows(slots, rows[first : first + len(slots)])

                stored += self._store_locked(as_tokens(tokens), None, 0, namespace, write).stored
        return stored

    # -- checking -----------------------------------------------------------

    def _check(self) -> None:
        """Assert every invariant of the tree, both pools and their bookkeeping. O(n)."""
        with self._lock:
            self._tree._check()
            self._tiers._check()
            self._pins._check()
            if self._stores is not None:
                self._stores._check(list(self._tree.iter_nodes()))

    # -- forgetting a namespace, counting verifications ---------------------

    def drop_namespace(self, namespace: Hashable) -> int:
        """Forget what ``namespace`` holds: release the pins :meth:`pin` put on it and drop
        every token of it, in both tiers, that no request in flight holds. Other
        namespaces are untouched. Returns the tokens dropped. O(nodes in the namespace).
        Raises ``TypeError`` for an unhashable namespace.
        """
        check_namespace(namespace)
        with self._lock:
            self._pins.release_namespace_locked(namespace)
            return self._tiers.drop_namespace(namespace)

    def rebind(self, fingerprint: str | None) -> int:
        """Start over for other model weights: drop every cached token of every namespace and
        tier, release every :meth:`pin`, and take ``fingerprint`` as the model's, for saved
        files and the remote tier from now on (``wrap`` calls this when it sees the weights
        change). Tokens pinned by requests in flight can no longer be found and are dropped
        once released; what those requests computed is not stored. Returns the tokens dropped.
        Raises ``ValueError`` for a remote tier given no fingerprint.
        """
        if self._remote is not None and not (isinstance(fingerprint, str) and fingerprint):
            raise ValueError(f"fingerprint: the remote tier needs the new weights' fingerprint, got {fingerprint!r}")
        with self._lock:
            self._generation += 1
            self._pins.release_all_locked()
            self._tree.retire_roots()
            dropped = self._tiers.clear()
            self.fingerprint = fingerprint
            if self._remote is not None:
                assert fingerprint is not None
                self._remote.rebind(fingerprint)
            self._claims_changed.notify_all()
            return dropped

    def record_verification(self, mismatch: bool) -> None:
        """Count one request run again without the cache and compared; ``mismatch`` if it differed."""
        with self._lock:
            c = self._counters
            c.verified += 1
            c.mismatches += bool(mismatch)
