"""What a request stores: the KV of whatever part of its tokens is not cached yet, below the
node its hit pinned, with window rows and snapshots for a model that has such layers.

    # [0, hit.length)           cached: found again below nothing, walked below the hit's node
    # [hit.length, len(tokens)) computed by the request: what is not cached yet is stored
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Hashable, Mapping, Sequence

import torch

from ..arguments import as_tokens, check_count, check_int, check_namespace
from ..hit import Hit
from ..kv import LayerKV
from ..kv.layout import check_kv
from ..stores import RowSource, store_parts
from .core import CacheCore
from .lookup import Lookup
from .shared import share

__all__ = ["insert"]


def insert(
    core: CacheCore,
    lookup: Lookup,
    tokens: Sequence[int] | torch.Tensor,
    kv: Sequence[LayerKV],
    *,
    namespace: Hashable,
    offset: int,
    row: int,
    hit: Hit | None,
    window: Sequence[LayerKV] | None,
    window_offset: int,
    snapshots: Mapping[int, torch.Tensor] | None,
) -> int:
    """:meth:`PrefixCache.insert`: checks everything first, then stores under the lock."""
    if hit is not None:
        lookup.check_hit(hit)
    # The tokens a hit was matched on were checked then.
    toks = hit.tokens if hit is not None and tokens is hit.tokens else as_tokens(tokens)
    check_namespace(namespace)
    check_count(offset, "offset")
    check_count(row, "row")
    pool = core.pools.device
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

    source = _row_source(core, toks, write, row, window, window_offset, snapshots) if core.stores else None
    lease = hit.lease if hit is not None else None
    with core.lock:
        if lease is not None and lease.released:
            raise ValueError("hit: already released; match again")
        if lease is not None and lease.generation != core.generation:
            # Computed with the weights before rebind: of no use to requests from now on.
            if lease.claim is not None:
                lookup.end_claim_locked(lease)
            return 0
        core.expire_locked()
        try:
            top = lease.node if lease is not None else None
            if source is not None and core.stores is not None:
                stored = store_parts(core.stores, core.tree, core.pools, toks, top, start, namespace, source)
                core.counters.inserted_tokens += stored.stored
            else:
                stored = core.store_locked(toks, top, start, namespace, write)
        finally:
            if lease is not None and lease.claim is not None:
                lookup.end_claim_locked(lease)
    if core.remote is not None:
        share(core, toks, kv, offset, row, namespace)
    return stored.stored


def _row_source(
    core: CacheCore,
    toks: array,
    write: Callable[[array, int], None],
    row: int,
    window: Sequence[LayerKV] | None,
    window_offset: int,
    snapshots: Mapping[int, torch.Tensor] | None,
) -> RowSource:
    """What :func:`store_parts` reads a request's window rows and snapshots from, checked."""
    stores = core.stores
    assert stores is not None
    window_write = None
    if stores.window is not None and window is not None:
        check_int(window_offset, "window_offset")
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
            check_int(length, "snapshots: a key", 1, len(toks))
            if not isinstance(state, torch.Tensor) or state.shape != (width,):
                raise ValueError(f"snapshots[{length}]: expected a tensor of shape [{width}]")
            rows[length] = state
    return RowSource(write, window_write, max(0, -window_offset), rows)
