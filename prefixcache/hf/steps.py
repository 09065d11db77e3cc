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
        yield hits, min(pad + hit.length for pad, hit in zip(batch.pads, hits, strict=True))
    finally:
        for hit in hits:
            hit.release()


def prefix_cache(cache: PrefixCache, builder: CacheBuilder, batch: Batch, hits: list[Hit], length: int) -> Any:
    """A DynamicCache holding positions [0, length) of every row: gathered KV, zeros for padding."""
    if length == 0:
        return builder.empty()
    pads = batch.pads
    if len(hits) == 1 and pads[0] == 0:
        # Views of the pool when the prefix's slots are a run: the model only reads them
        # (its first update concatenates them into a new tensor), and the hit keeps them
        # allocated until the request ends.
        return builder.filled(cache.gather(hits[0], length, copy=False))
    gathered = [
        cache.gather(hit, length - pad, copy=False) if length > pad else None
        for hit, pad in zip(hits, pads, strict=True)
    ]
    pool = cache.pool
    layers = []
    for i, spec in enumerate(pool.layers):
        keys = torch.zeros(len(hits), spec.kv_heads, length, spec.key_dim, dtype=pool.dtype, device=pool.device)
        values = torch.zeros(len(hits), spec.kv_heads, length, spec.value_dim, dtype=pool.dtype, device=pool.device)
        for r, kv in enumerate(gathered):
            if kv is not None:
                keys[r, :, pads[r] :] = kv[i][0][0]
                values[r, :, pads[r] :] = kv[i][1][0]
        layers.append((keys, values))
    return builder.filled(layers)


def store_prompts(
    cache: PrefixCache,
    batch: Batch,
    hits: list[Hit],
    layers: list[LayerKV],
    fed: np.ndarray | None,
    eos: np.ndarray | None,
    row_ends: Sequence[int] | None,
    positions: Positions,
) -> None:
    """Insert each prompt and its ``fed`` generated tokens (those whose KV is in
    ``layers``) below the row's hit: a row is cut after its first end-of-sequence token
    (what follows is padding fed to the model) and at ``row_ends[r]`` when given; a padded
    row of a model whose positions count the padding is not stored."""
    for r, (row, hit) in enumerate(zip(batch.prompts, hits, strict=True)):
        if not positions.row_reusable(batch.pads[r]):
            continue
        tokens: TokenIds = row
        if fed is not None:
            more = fed[r]
            if eos is not None and len(more):
                ends = np.flatnonzero(np.isin(more, eos))
                more = more[: int(ends[0]) + 1] if len(ends) else more
            tokens = TokenIds("i", row)  # the model's own tokens are in range too
            tokens.frombytes(more.astype(np.int32).tobytes())
        if row_ends is not None and row_ends[r] < len(tokens):
            tokens = TokenIds("i", tokens[: max(row_ends[r], hit.length)])
        cache.insert(tokens, layers, offset=batch.pads[r], row=r, hit=hit)


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
