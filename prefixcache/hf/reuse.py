"""The hits of a request's rows, and the cache the model is handed: their cached prefixes
laid out as the model's own cache would hold them.

For a left-padded batch of ``B`` prompts padded to ``P`` tokens (row ``r`` has
``pad[r]`` padding tokens and hits ``hit[r]`` cached tokens):

    # positions, in padded coordinates, of one row:
    # [0, pad[r])            padding: masked out, zeros in the cache
    # [pad[r], C)            already cached: gathered from the pool
    # [C, P)                 computed now, then inserted below the row's hit
    #
    # C = min over rows of (pad[r] + hit[r]), the longest cached length all rows share
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import torch

from ..cache import Hit, PrefixCache
from ..kv.layout import LayerKV
from .batch import Batch
from .kvcache import CacheBuilder
from .layers import ModelLayers
from .positions import Positions

__all__ = ["CatchUp", "aligned_length", "model_cache", "reuse"]


CatchUp = Callable[[Batch, Hit, int, int], None]
"""``catch_up(row, hit, start, end)``: compute the one-row batch ``row``'s positions
``[start, end)`` on its ``hit`` (servable at ``start``) and store them, with a window
or a snapshot at ``end``."""


@contextlib.contextmanager
def reuse(
    cache: PrefixCache,
    batch: Batch,
    namespace: Hashable,
    positions: Positions,
    limit: int | None = None,
    catch_up: CatchUp | None = None,
) -> Iterator[tuple[list[Hit], int]]:
    """Match and pin every row (leaving its last token to compute, and at most ``limit``
    tokens; none for a padded row of a model whose positions count the padding); yield
    the hits and the common cached length C; release them all however the request ends.

    A batch of a model with window or recurrent layers can be cut only where every row
    can: with ``catch_up``, each row that holds more than that but cannot be cut where
    the rows' cached lengths meet is first computed alone up to there (see :func:`_meet`)."""
    hits: list[Hit] = []
    # A lone request may wait for another computing its prefix; the rows of a batch never
    # wait (each leaves a claim, and a request holding claims must not wait on others).
    wait = cache.config.shared_wait if len(batch.prompts) == 1 else 0.0
    padded = positions.zeros_for_padding or not any(batch.pads)
    try:
        for row, pad in zip(batch.prompts, batch.pads, strict=True):
            most = len(row) - 1 if limit is None else min(len(row) - 1, limit)
            if not positions.row_reusable(pad) or not padded:
                most = 0
            hits.append(cache.match(row, namespace=namespace, max_length=most, claim=most > 0, wait=wait))
        cached = [hit.length for hit in hits]  # what each row takes from the cache
        length = aligned_length(cache, batch, hits)
        if catch_up is not None and not cache.kinds.plain and len(hits) > 1:
            length = _meet(cache, batch, hits, length, catch_up, cached)
        for hit, pad, own in zip(hits, batch.pads, cached, strict=True):
            used = min(own, max(0, length - pad))
            if used < hit.length:  # what the row holds beyond that is computed (again)
                cache.reused(hit, used)
        yield hits, length
    finally:
        for hit in hits:
            hit.release()


def _meet(cache: PrefixCache, batch: Batch, hits: list[Hit], length: int, catch_up: CatchUp, cached: list[int]) -> int:
    """Where the rows' cached lengths meet (the smallest ``pad + hit.matched``), computed for
    each row that cannot be cut there, alone, from its last servable length before it; then
    the batch's common cached length again. ``hits`` are extended in place where a row's
    hit grew, and ``cached[r]`` lowered to where row ``r`` began computing.

        row 0  |pad|====== cached ======|.... computed alone ....|  C   the batch from here
        row 1  |      pad      |=== cached ===================== C
    """
    meet = min(pad + hit.matched for pad, hit in zip(batch.pads, hits, strict=True))
    if meet <= length:
        return length
    for r, (hit, pad) in enumerate(zip(hits, batch.pads, strict=True)):
        end = meet - pad
        can = cache.servable(hit)
        if end <= 0 or end in can:
            continue
        start = max(p for p in (*can.points, min(can.hi, end - 1)) if p < end and p in can)
        row = Batch(
            batch.input_ids[r : r + 1, pad:],
            torch.ones_like(batch.input_ids[r : r + 1, pad:]),
            (0,),
            (batch.prompts[r],),
        )
        catch_up(row, hit, start, end)
        cached[r] = min(cached[r], start)
        if end > hit.length:
            hits[r] = cache.extend(hit, end)
    return aligned_length(cache, batch, hits)


def aligned_length(cache: PrefixCache, batch: Batch, hits: list[Hit]) -> int:
    """The longest cached length C all rows share: the smallest ``pad + hit.length``, lowered
    until every row that has begun by C may be cut at its own ``C - pad`` (a row of a model
    with recurrent layers has a snapshot only where one was taken)."""
    length = min(pad + hit.length for pad, hit in zip(batch.pads, hits, strict=True))
    if cache.kinds.plain or len(hits) == 1:
        return length
    servable = [cache.servable(hit) for hit in hits]
    candidates = {0}
    for pad, can in zip(batch.pads, servable, strict=True):
        candidates.update(pad + p for p in can.points)
        candidates.update(pad + p for p in (can.lo, can.hi) if can.lo <= can.hi)
        candidates.add(pad)
    for c in sorted((c for c in candidates if c <= length), reverse=True):
        if all(c <= pad or c - pad in can for pad, can in zip(batch.pads, servable, strict=True)):
            return c
    return 0


def model_cache(
    cache: PrefixCache, builder: CacheBuilder, batch: Batch, hits: list[Hit], length: int, layers: ModelLayers
) -> Any:
    """A DynamicCache holding positions [0, length) of every row: gathered KV, zeros for padding;
    for window layers their last ``span - 1`` positions, and the states after ``length``
    (zeros for a row that has not begun: a fresh state)."""
    if not layers.plain:
        return _parts_cache(cache, batch, hits, length, layers)
    if length == 0:
        return builder.empty()
    pads = batch.pads
    if len(hits) == 1 and pads[0] == 0:
        # Views of the pool when the prefix's slots are a run: the model only reads them
        # (its first update concatenates them into a new tensor), and the hit keeps them
        # allocated until the request ends.
        return builder.filled(cache.gather(hits[0], length, copy=False))
    return builder.filled(_full_rows(cache, batch, hits, length))


def _full_rows(cache: PrefixCache, batch: Batch, hits: list[Hit], length: int) -> list[LayerKV]:
    """Positions [0, length) of every row's full-attention KV, zeros for padding (copies)."""
    pool, pads = cache.pool, batch.pads
    gathered = [
        cache.gather(hit, length - pad, copy=False) if length > pad else None
        for hit, pad in zip(hits, pads, strict=True)
    ]
    layers = []
    for i, spec in enumerate(pool.layers):
        keys = torch.zeros(len(hits), spec.kv_heads, length, spec.key_dim, dtype=pool.dtype, device=pool.device)
        values = torch.zeros(len(hits), spec.kv_heads, length, spec.value_dim, dtype=pool.dtype, device=pool.device)
        for r, kv in enumerate(gathered):
            if kv is not None:
                keys[r, :, pads[r] :] = kv[i][0][0]
                values[r, :, pads[r] :] = kv[i][1][0]
        layers.append((keys, values))
    return layers


def _parts_cache(cache: PrefixCache, batch: Batch, hits: list[Hit], length: int, layers: ModelLayers) -> Any:
    #  padded positions of row r:  [0, pad[r]) padding | [pad[r], length) its cached tokens
    #  window layers get          [length - n, length), n = min(length, span - 1), zeros before pad[r]
    full = _full_rows(cache, batch, hits, length)
    kinds, pads = cache.kinds, batch.pads
    window = []
    if kinds.window:
        n = min(length, kinds.need)
        rows = [
            cache.gather_window(hit, length - pad) if length > pad else None
            for hit, pad in zip(hits, pads, strict=True)
        ]
        window_pool = cache.window_pool
        assert window_pool is not None
        for i, spec in enumerate(kinds.window):
            dtype, device = window_pool.dtype, window_pool.device
            keys = torch.zeros(len(hits), spec.kv_heads, n, spec.key_dim, dtype=dtype, device=device)
            values = torch.zeros(len(hits), spec.kv_heads, n, spec.value_dim, dtype=dtype, device=device)
            for r, kv in enumerate(rows):
                if kv is not None and kv[i][0].shape[2]:
                    held = kv[i][0].shape[2]
                    keys[r, :, n - held :] = kv[i][0][0]
                    values[r, :, n - held :] = kv[i][1][0]
            window.append((keys, values))
    states: list[torch.Tensor] = []
    layout = kinds.states
    if layout is not None:
        snapshot_pool = cache.snapshot_pool
        assert snapshot_pool is not None
        rows_of = torch.zeros(len(hits), layout.width, dtype=layout.dtype, device=snapshot_pool.device)
        for r, (hit, pad) in enumerate(zip(hits, pads, strict=True)):
            row = cache.snapshot(hit, length - pad) if length > pad else None
            if row is not None:
                rows_of[r] = row
        states = layout.split(rows_of)
    return layers.filled(full, window, states, length)
