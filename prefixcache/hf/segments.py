"""A prompt computed in segments, for a model with recurrent layers: its state exists only where
a forward pass ends, so the cache ends one wherever a snapshot is due.

For one row with ``hit`` cached tokens of its ``n``, the snapshots due are at:

    hit.matched   where the tree held more than could be served (no snapshot there yet):
                  the next request with this start hits all of it
    k * interval  along the way (``snapshot_interval``), so a later request that leaves
                  the path somewhere in between computes at most ``interval`` tokens again
    n - 1         the prompt but its last token: where a repeated prompt hits

and, after the request, at the end of what it stored (the state its cache ends with).
In a left-padded batch a row's token count ``c`` is padded position ``pad + c``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch

from ..hit import Hit
from .batch import Batch
from .kvcache import CacheKeywords
from .layers import ModelLayers

__all__ = ["plan", "run", "rows_of"]


def plan(batch: Batch, hits: list[Hit], start: int, end: int, interval: int) -> tuple[list[int], list[set[int]]]:
    """The padded positions in ``(start, end)`` to end a forward pass at, and each row's token
    counts to keep a snapshot of (see the module doc)."""
    points: set[int] = set()
    wanted: list[set[int]] = []
    for row, hit, pad in zip(batch.prompts, hits, batch.pads, strict=True):
        n = len(row)
        counts = {hit.matched, n - 1}
        if interval:
            counts.update(range((hit.length // interval + 1) * interval, n - 1, interval))
        counts = {c for c in counts if hit.length < c < n}
        wanted.append(counts)
        points.update(pad + c for c in counts if start < pad + c < end)
    return sorted(points), wanted


def run(
    model: Any,
    keywords: CacheKeywords,
    layers: ModelLayers,
    batch: Batch,
    cache: Any,
    start: int,
    end: int,
    points: list[int],
    position_kwargs: Callable[[int, int], dict[str, Any]],
    keep: int,
    takes_logits_to_keep: bool,
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Compute padded positions ``[start, end)`` on ``cache`` (changed in place), one forward pass
    per segment between ``points``; return the logits of the last ``keep`` positions (all:
    ``keep = end - start``) and the snapshot rows (``[batch, width]``) after each segment, by
    its end (none for a model without recurrent layers). ``position_kwargs(a, b)`` gives the
    position ids of ``[a, b)``, or none."""
    logits: list[torch.Tensor] = []
    captured: dict[int, torch.Tensor] = {}
    bounds = [start, *(p for p in points if start < p < end), end]
    for a, b in itertools.pairwise(bounds):
        wanted = max(0, b - max(a, end - keep))
        kwargs = position_kwargs(a, b)
        if takes_logits_to_keep:
            kwargs["logits_to_keep"] = max(wanted, 1)
        out = model(
            input_ids=batch.input_ids[:, a:b],
            attention_mask=batch.attention_mask[:, :b],
            use_cache=True,
            **keywords.to_forward(cache),
            **kwargs,
        )
        if wanted:
            logits.append(out.logits[:, -wanted:])
        if layers.kinds.states is not None:
            captured[b] = layers.snapshot_rows(cache)
    return torch.cat(logits, dim=1), captured


def rows_of(batch: Batch, wanted: list[set[int]], captured: dict[int, torch.Tensor]) -> list[dict[int, torch.Tensor]]:
    """Each row's snapshots, by its own token count, of those ``wanted`` that were captured."""
    out = []
    for r, (counts, pad) in enumerate(zip(wanted, batch.pads, strict=True)):
        out.append({c: captured[pad + c][r] for c in counts if pad + c in captured})
    return out
