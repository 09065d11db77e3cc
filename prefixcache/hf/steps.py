"""The steps of a request between the cache and the model.

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
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from ..cache import Hit, PrefixCache
from ..checks import TokenIds
from ..kv.layout import LayerKV
from .batch import Batch
from .kvcache import CacheBuilder
from .layers import ModelLayers
from .positions import Positions

__all__ = ["PromptStore", "prefix_cache", "reuse", "store_prompts"]


@contextlib.contextmanager
def reuse(
    cache: PrefixCache, batch: Batch, namespace: Hashable, positions: Positions, limit: int | None = None
) -> Iterator[tuple[list[Hit], int]]:
    """Match and pin every row (leaving its last token to compute, and at most ``limit``
    tokens; none for a padded row of a model whose positions count the padding); yield
    the hits and the common cached length C; release them all however the request ends."""
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
        yield hits, aligned_length(cache, batch, hits)
    finally:
        for hit in hits:
            hit.release()


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


def prefix_cache(
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


def store_prompts(
    cache: PrefixCache,
    batch: Batch,
    hits: list[Hit],
    layers: list[LayerKV],
    fed: np.ndarray | None,
    eos: np.ndarray | None,
    row_ends: Sequence[int] | None,
    positions: Positions,
    window: Sequence[LayerKV] | None = None,
    width: int = 0,
    snapshots: Sequence[dict[int, torch.Tensor]] | None = None,
    expand: int = 1,
) -> None:
    """Insert each prompt and its ``fed`` generated tokens (those whose KV is in
    ``layers``) below the row's hit: a row is cut after its first end-of-sequence token
    (what follows is padding fed to the model) and at ``row_ends[r]`` when given; a padded
    row of a model whose positions count the padding is not stored. ``window`` holds the
    window layers' KV of the last padded positions of the ``width`` the cache spans;
    ``snapshots[k]`` maps a token count of the cache's row ``k`` to its snapshot row there.

    With ``expand`` rows per prompt (several sequences per prompt), the cache's row
    ``r * expand + j`` is prompt ``r``'s sequence ``j``: each is stored as its own branch
    below the prompt (``fed`` has a row for each), or the prompt alone from its first row."""
    window_skip = width - window[0][0].shape[2] if window else 0
    for k in range(len(batch.prompts) * (expand if fed is not None else 1)):
        r = k // expand if fed is not None else k
        row, hit = batch.prompts[r], hits[r]
        k = k if fed is not None else r * expand
        if not positions.row_reusable(batch.pads[r]):
            continue
        tokens: TokenIds = row
        if fed is not None:
            more = fed[k]
            if eos is not None and len(more):
                ends = np.flatnonzero(np.isin(more, eos))
                more = more[: int(ends[0]) + 1] if len(ends) else more
            tokens = TokenIds("i", row)  # the model's own tokens are in range too
            tokens.frombytes(more.astype(np.int32).tobytes())
        if row_ends is not None and row_ends[r] < len(tokens):
            tokens = TokenIds("i", tokens[: max(row_ends[r], hit.length)])
        if window is None and snapshots is None:
            cache.insert(tokens, layers, offset=batch.pads[r], row=k, hit=hit)
            continue
        cache.insert(
            tokens,
            layers,
            offset=batch.pads[r],
            row=k,
            hit=hit,
            window=window,
            window_offset=batch.pads[r] - window_skip,
            snapshots={n: rows for n, rows in (snapshots[k] if snapshots else {}).items() if n <= len(tokens)},
        )


class PromptStore(StoppingCriteria):
    """Runs ``store`` once, when ``generate`` checks whether to stop after its first step: the
    prompt's forward pass is done then and the cache handed in holds the prompt. It never
    stops anything."""

    def __init__(self, store: Callable[[], None]) -> None:
        self._store = store
        self.done = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if not self.done:
            self.done = True
            self._store()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def added_to(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``generate``'s options with this beside the caller's own stopping criteria."""
        return {**kwargs, "stopping_criteria": StoppingCriteriaList([*(kwargs.get("stopping_criteria") or ()), self])}
