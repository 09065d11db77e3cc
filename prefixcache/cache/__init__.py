"""PrefixCache: the radix tree, the KV pools and the budget behind one lock.

A request looks up the longest cached prefix of its tokens (``match``, which pins
it and keeps its slots), reads its KV (``gather``), computes the rest, and stores
what is new under the node the hit pinned (``insert(..., hit=hit)``): the tree is
walked twice per request, once down from the root and once below the hit.

    with cache.match(tokens, max_length=len(tokens) - 1) as hit:
        prefix_kv = cache.gather(hit)             # [0, hit.length): from the pool
        kv = model(tokens[hit.length:], prefix_kv)  # [hit.length, len(tokens)): computed now
        cache.insert(tokens, kv, hit=hit)         # stores only what is not cached yet

:class:`PrefixCache` is a facade over parts of one concept each, sharing one
:class:`~prefixcache.cache.core.CacheCore` (the tree, the pools, the lock):

- :mod:`.lookup`: ``match`` and ``release``, and :mod:`.shared` the remote tier in a request;
- :mod:`.reads`: what a hit's prefix holds (``gather``, ``gather_window``, ``snapshot``);
- :mod:`.writes`: ``insert``;
- :mod:`.admin`: pins, expiry, eviction, resizing, namespaces, new weights (the methods of
  :class:`~.admin.Administration`, which PrefixCache inherits);
- :mod:`.export`: the tree as plain data, and ``save``/``load`` (:class:`~.export.Saving`,
  inherited) through :mod:`prefixcache.persist`.

Every public method takes the cache's one lock; none runs a model.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import torch

from ..config import UNSET, CacheConfig, Unset
from ..hit import Hit
from ..kv import KVLayout, KVPool, LayerKV, LayerSpec
from ..kv.state import SnapshotPool
from ..remote import RemoteTier
from ..stats import CacheStats
from ..stores import LayerKinds, Servable
from ..tree import RadixTree
from .admin import Administration
from .core import CacheCore
from .export import SavedNode, Saving
from .lookup import Lookup
from .reads import Reads
from .writes import insert

__all__ = ["Hit", "PrefixCache", "SavedNode"]


class PrefixCache(Administration, Saving):
    """Cached KV of token prefixes, bounded by a byte budget, safe to share between threads.

    ``layers`` gives each layer's KV shape for one token; the pool takes
    ``config.budget`` bytes on ``device`` in ``dtype``. The options (``budget``,
    ``host_budget``, ``host_dtype``, ``ttl``, ``remote``, ...) are those of
    :class:`CacheConfig`, given as keyword arguments or as ``config``. ``fingerprint``
    names the model whose KV this is (``wrap`` gives it; a remote tier and saved files
    need it). ``clock`` (nanoseconds) is where the tree's ticks and expiry read the
    time. ``kinds`` says what a model with sliding-window, chunked or recurrent layers
    keeps (see :mod:`prefixcache.stores`; ``wrap`` reads it). Raises
    ``TypeError``/``ValueError`` naming the bad argument, and ``ImportError`` for a
    remote tier without redis-py.
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
        specs = layers if isinstance(layers, KVLayout) else tuple(layers)
        core = CacheCore(CacheConfig.of(config, budget, **options), specs, kinds, device, dtype, fingerprint, clock)
        self._core = core
        self._lookup = Lookup(core)
        self._reads = Reads(core, self._lookup)

    # -- reading ------------------------------------------------------------

    @property
    def config(self) -> CacheConfig:
        """The options (kept up to date by :meth:`resize`)."""
        return self._core.config

    @property
    def kinds(self) -> LayerKinds:
        """What the model's layers keep, by kind (see :mod:`prefixcache.stores`)."""
        return self._core.kinds

    @property
    def fingerprint(self) -> str | None:
        """Identifies the model whose KV this is; saved files carry it (see :meth:`rebind`)."""
        return self._core.fingerprint

    @fingerprint.setter
    def fingerprint(self, value: str | None) -> None:
        self._core.fingerprint = value

    @property
    def pool(self) -> KVPool:
        """The KV pool on the device (read its shape; do not alloc or free behind the cache)."""
        return self._core.pools.device

    @property
    def window_pool(self) -> KVPool | None:
        """The window layers' pool (None for a model without sliding-window or chunked layers)."""
        return self._core.stores.window if self._core.stores is not None else None

    @property
    def snapshot_pool(self) -> SnapshotPool | None:
        """The recurrent-state snapshot pool (None for a model without recurrent layers)."""
        return self._core.stores.snapshots if self._core.stores is not None else None

    @property
    def host_pool(self) -> KVPool | None:
        """The host tier's pool, or None without one."""
        return self._core.pools.host

    @property
    def layout(self) -> KVLayout:
        """The shape of one token's KV."""
        return self._core.pools.device.layout

    @property
    def tree(self) -> RadixTree:
        """The radix tree (for inspection only)."""
        return self._core.tree

    @property
    def remote(self) -> RemoteTier | None:
        """The remote tier, or None without one."""
        return self._core.remote

    @property
    def stats(self) -> CacheStats:
        """A snapshot of the counters."""
        core = self._core
        remote = core.remote.stats if core.remote is not None else None
        with core.lock:
            return CacheStats(
                **core.counters.as_dict(),
                **core.pools.sizes(),
                user_pinned_tokens=core.pins.tokens(),
                remote_bytes_fetched=remote.bytes_fetched if remote else 0,
                remote_bytes_written=remote.bytes_written if remote else 0,
                remote_errors=remote.errors if remote else 0,
                remote_invalid_chunks=remote.invalid_chunks if remote else 0,
                remote_queue_drops=remote.queue_drops + remote.write_drops if remote else 0,
            )

    def cached_length(self, tokens: Sequence[int] | torch.Tensor, *, namespace: Hashable = None) -> int:
        """How many leading ``tokens`` are cached (in either tier), without counting a
        request or touching anything. O(len(tokens))."""
        return self._lookup.cached_length(tokens, namespace)

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
        """Find and pin the longest cached prefix of ``tokens`` (at most ``max_length`` long)
        that can be served (see :mod:`prefixcache.stores`).

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
        return self._lookup.match(tokens, namespace, max_length, claim, wait)

    def extend(self, hit: Hit, max_length: int | None = None) -> Hit:
        """``hit`` carried on below its node as far as the cache now holds and can serve its
        tokens (at most ``max_length``), still pinned: for a request that inserted what
        follows its hit and reads it back. Returns the longer hit; ``hit`` shares its pin
        (release either). Counts nothing: ``stats.hit_tokens`` keeps what was matched.
        ``ValueError`` if the hit was released or comes from another cache."""
        return self._lookup.extend(hit, max_length)

    def reused(self, hit: Hit, length: int) -> None:
        """Record that ``hit``'s request reused only its first ``length`` tokens (a row of a
        padded batch reuses what every row shares): ``stats.hit_tokens`` counts those
        instead of all it matched. ``ValueError`` for a length outside ``[0, hit.length]``."""
        self._lookup.reused(hit, length)

    def gather(self, hit: Hit, length: int | None = None, *, copy: bool = True) -> list[LayerKV]:
        """The KV of ``hit``'s first ``length`` tokens (all of them by default): per layer
        ``(keys, values)``, each ``[1, kv_heads, length, head_dim]``.

        ``copy=False`` may return views of the pool instead of copies (see
        :meth:`KVPool.gather`): read them only, and only until the hit is released.
        Raises ``TypeError`` for something that is not a Hit, and ``ValueError`` if the
        hit was released, comes from another cache, or is shorter than ``length``.
        """
        return self._reads.gather(hit, length, copy)

    def gather_window(self, hit: Hit, length: int | None = None) -> list[LayerKV]:
        """The window layers' KV of the last ``min(length, span - 1)`` of ``hit``'s first
        ``length`` tokens (all by default): per window layer ``(keys, values)``, each ``[1,
        kv_heads, n, head_dim]`` (copies). ``length`` must be servable (:meth:`servable`).
        Empty for a model without window layers."""
        return self._reads.gather_window(hit, length)

    def snapshot(self, hit: Hit, length: int | None = None) -> torch.Tensor | None:
        """The snapshot row (``[width]``, a copy) of the recurrent state after ``hit``'s first
        ``length`` tokens (all by default), or None at length 0 and for a model without
        recurrent layers. ``length`` must be servable (:meth:`servable`)."""
        return self._reads.snapshot(hit, length)

    def servable(self, hit: Hit) -> Servable:
        """The lengths at which ``hit``'s prefix may be cut and still served (every length up to
        it for a model with full attention only)."""
        return self._reads.servable(hit)

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
        return insert(
            self._core,
            self._lookup,
            tokens,
            kv,
            namespace=namespace,
            offset=offset,
            row=row,
            hit=hit,
            window=window,
            window_offset=window_offset,
            snapshots=snapshots,
        )

    def release(self, hit: Hit) -> None:
        """Unpin ``hit`` (what :meth:`Hit.release` does). Safe to call more than once."""
        self._lookup.release(hit)

    def _check(self) -> None:
        """Assert every invariant of the tree, the pools and their bookkeeping. O(n)."""
        with self._core.lock:
            self._core.check_locked()
