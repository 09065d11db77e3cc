"""What a request leaves in the cache: every row's prompt, and the tokens it generated whose
KV was computed, each below the row's hit; and the stopping criterion that stores the prompt
as soon as generate's first step is done.

    # padded positions of row r in the cache the model leaves (width P, ``positions`` in all):
    # [0, pad[r])            padding
    # [pad[r], P)            the prompt: stored below the hit (what is not cached yet)
    # [P, positions)         generated tokens fed back: stored too, cut after an end of sequence
    # the last generated token was never fed back: it has no KV
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from ..arguments import TokenIds
from ..cache import Hit, PrefixCache
from ..kv.layout import LayerKV
from ..rope import Regime
from .batch import Batch
from .kvcache import cache_layers
from .positions import Positions
from .serving import Serving

__all__ = ["PromptStore", "store", "store_prompts"]


def store(
    serving: Serving,
    batch: Batch,
    hits: list[Hit],
    kv_cache: Any,
    generated: torch.Tensor | None = None,
    kwargs: Any = None,
    regime: Regime | None = None,
    *,
    prompt_only: bool = False,
    snapshots: list[dict[int, torch.Tensor]] | None = None,
    expand: int = 1,
) -> None:
    """Insert every row's prompt, and the generated tokens whose KV was computed, below its hit.

    ``prompt_only``: called after generate's first step, when ``kv_cache`` should hold
    the prompt alone; it stores nothing if it holds anything else. ``expand``: the cache
    holds that many rows per prompt (several sequences per prompt), each its own branch
    below the prompt.

    The last generated token was never fed back, so it has no KV: a ``generate`` that
    kept the cache it was handed to the end leaves exactly the prompt and every other
    generated token in it, and one that did not (it dropped or replaced it) has
    nothing stored. A finished row's later tokens are padding fed to the model; their
    KV is right for those tokens but of no use, so a row is cut after its first
    end-of-sequence token. With a ``regime``, a row is also cut where ``kv_cache``
    ends and where its tokens stop being computed in the regime.
    """
    window = None
    model_layers = serving.layers
    if model_layers.plain:
        layers = cache_layers(kv_cache)
        if layers is None:
            return
        positions = layers[0][0].shape[2]
    else:
        parts = model_layers.parts(kv_cache)
        layers, window, positions = parts.full, parts.window, model_layers.positions(kv_cache)
    width = batch.input_ids.shape[1]
    if prompt_only and positions != width:
        return
    fed = eos = None
    if generated is not None:
        if not 1 <= generated.shape[1] == positions - width + 1:
            if generated.shape[1]:
                serving.notice(
                    "the model's generate did not keep the cache it was given (it dropped or replaced it, as "
                    "Phi-3's does past original_max_position_embeddings); what it computed is not stored"
                )
            return
        if positions > width:
            fed = generated[:, : positions - width].cpu().numpy()
            eos = _eos_ids(serving.model, kwargs)
    row_ends = None  # without a regime every row's tokens have KV up to their end: no cut
    if serving.regimes is not None and regime is not None:
        row_ends = serving.regimes.row_ends(batch, regime, positions)
    elif positions < width:  # the prompt but its last token, computed before generate
        row_ends = [positions - pad for pad in batch.pads]
    if model_layers.kinds.states is not None and snapshots is None and fed is not None:
        # The state the cache ends with is that after every token fed: a row's own only
        # where it was not cut after an end-of-sequence token.
        rows = model_layers.snapshot_rows(kv_cache)
        snapshots = [{len(batch.prompts[k // expand]) + len(more): rows[k]} for k, more in enumerate(fed)]
    store_prompts(
        serving.cache, batch, hits, layers, fed, eos, row_ends, serving.positions, window, positions, snapshots, expand
    )


def _eos_ids(model: Any, kwargs: dict[str, Any]) -> np.ndarray | None:
    config = kwargs.get("generation_config") or model.generation_config
    eos = kwargs.get("eos_token_id", getattr(config, "eos_token_id", None))
    return None if eos is None else torch.as_tensor(eos).reshape(-1).cpu().numpy()


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
        below: Hit | None = hit
        if row_ends is not None and row_ends[r] < hit.length:
            # Computed up to a point inside the hit (a padded batch's row, alone, up to where
            # the rows meet): nothing new but the window or snapshot there, found from the root.
            tokens, below = TokenIds("i", tokens[: row_ends[r]]), None
        cache.insert(
            tokens,
            layers,
            namespace=hit.namespace,
            offset=batch.pads[r],
            row=k,
            hit=below,
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
