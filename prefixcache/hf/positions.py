"""How a model numbers a prompt's positions, read once by running it, and what that allows.

Cached KV was computed at the positions its request gave its tokens; reused, it must sit
at the positions the uncached run would give them. Three facts about a model decide that:

- ``takes_ids``: its forward takes ``position_ids`` (``generate`` then numbers each row
  from 0 at its first real token, and so do the cache's own forward passes).
- ``own_numbering``: called without them, it numbers an unpadded prompt otherwise than
  0, 1, ... (RoBERTa's family counts from ``padding_idx + 1``). ``prefill`` must equal the
  forward pass the user would call, so for such a model an unpadded ``prefill`` passes no
  position ids, and its entries are kept apart from ``generate``'s, which numbers from 0.
- ``padding_safe``: a row's logits are the same alone and left-padded in a batch. They
  are not where positions count the padding (learned absolute positions that take no
  ``position_ids``: Bart's decoder and its family, Whisper's), or where the model attends
  to the KV of cached padding (GIT's, whose masks do not cover cached positions): a padded
  row's KV then differs from the same tokens' alone, so a padded row neither reuses nor
  stores, and in the second case a batch with padding reuses nothing (the cache hands
  zeros for padding).

The padded run also measures the model's own rounding noise (a float64 model that
computes parts in float32 differs from itself by float32 rounding between two shapes
of one computation), which the split check allows for (see :mod:`.support`).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from .batch import Batch, position_ids

if TYPE_CHECKING:
    from .layers import ModelLayers
from .kvcache import CacheKeywords, Parts, model_cache, returned_cache

__all__ = ["NATIVE_POSITIONS", "NOISE_CEILING", "Positions", "probe_positions"]

NATIVE_POSITIONS = "prefixcache:native-positions"
"""The tag of the namespace an own-numbering model's unpadded ``prefill`` stores under."""

NOISE_CEILING = 1e-6
"""The largest difference between two shapes of one computation (relative to 1 + the
largest logit) taken for rounding rather than for a real difference: float32 rounding in
a float64 model is about 1e-8."""

_PAD = 3  # padding tokens of the padded probe


class Positions(NamedTuple):
    """What :func:`probe_positions` found; see the module doc."""

    takes_ids: bool
    own_numbering: bool
    padding_safe: bool
    zeros_for_padding: bool
    """Whether the KV handed for padding positions may be anything (zeros): false where the
    model attends to cached padding (GIT's), so that a padded batch reuses nothing."""
    noise: float
    """The model's rounding noise relative to 1 + the largest logit (0 where not measured)."""

    def forward_ids(self, batch: Batch, numbered: bool = False) -> bool:
        """Whether a forward pass over ``batch`` passes position ids (numbered from 0 at each
        row's first real token): where the model takes them, unless it numbers an unpadded
        prompt its own way, as the user's own call would (``numbered``: as generate would)."""
        return self.takes_ids and (numbered or not (self.own_numbering and not any(batch.pads)))

    def key(self, namespace: Hashable, batch: Batch, numbered: bool = False) -> Hashable:
        """The namespace a forward pass over ``batch`` stores under: apart from generate's
        where it numbers positions otherwise."""
        apart = self.takes_ids and not self.forward_ids(batch, numbered)
        return (NATIVE_POSITIONS, namespace) if apart else namespace

    def kwargs(self, batch: Batch, start: int, numbered: bool = False) -> dict[str, Any]:
        """``position_ids`` for a forward over the batch's positions from ``start`` on, or none."""
        if not self.forward_ids(batch, numbered):
            return {}
        return {"position_ids": position_ids(batch.attention_mask)[:, start:]}

    def row_reusable(self, pad: int) -> bool:
        """Whether a row with ``pad`` padding tokens may reuse and store KV."""
        return pad == 0 or self.padding_safe


def probe_positions(
    model: Any,
    ids: torch.Tensor,
    whole: torch.Tensor,
    takes_ids: bool,
    allowed: float,
    keywords: CacheKeywords,
    layers: ModelLayers,
) -> Positions:
    """Run ``ids`` (``[1, n]``, whose logits without position ids are ``whole``) numbered from
    0, left-padded, and left-padded in two parts on the model's own cache with zeros where
    the padding was, and compare logits and KV; ``allowed`` is the difference (relative to
    1 + the largest value) taken as the same."""
    n = ids.shape[1]
    own = False
    with torch.no_grad():
        numbering = {"position_ids": torch.arange(n, device=ids.device)[None]} if takes_ids else {}
        alone = model(input_ids=ids, use_cache=True, **keywords.to_forward(model_cache(model)), **numbering)
        if takes_ids:
            own = _difference(alone.logits, whole) > allowed * _scale(whole)
        padded_ids = torch.cat([ids[:, :1].expand(1, _PAD), ids], dim=1)  # masked out: any id pads
        mask = torch.ones_like(padded_ids)
        mask[:, :_PAD] = 0
        numbered = position_ids(mask)
        padded = model(
            input_ids=padded_ids,
            attention_mask=mask,
            use_cache=True,
            **keywords.to_forward(model_cache(model)),
            **({"position_ids": numbered} if takes_ids else {}),
        )
        # A padded row on top of a cache: what a padded row that reuses KV is computed as.
        split = _PAD + n // 2
        first = model(
            input_ids=padded_ids[:, :split],
            attention_mask=mask[:, :split],
            use_cache=True,
            **keywords.to_forward(model_cache(model)),
            **({"position_ids": numbered[:, :split]} if takes_ids else {}),
        )
        cache = returned_cache(first)
        parts = layers.parts(cache)
        for keys, values in parts.full:
            keys[:, :, :_PAD] = 0  # the cache hands zeros where a row has padding
            values[:, :, :_PAD] = 0
        for keys, values in parts.window:  # the last positions of the first ``split``
            padding = _PAD - (split - keys.shape[2])
            if padding > 0:
                keys[:, :, :padding] = 0
                values[:, :, :padding] = 0
        rest = model(
            input_ids=padded_ids[:, split:],
            attention_mask=mask,
            use_cache=True,
            **keywords.to_forward(cache),
            **({"position_ids": numbered[:, split:]} if takes_ids else {}),
        ).logits
    # Rotations by position are relative: shifted KV may still give the same logits, so the
    # KV of the real tokens is compared too (what a reused row carries into a batch).
    shifted = max(
        _difference(padded.logits[:, _PAD:], alone.logits) / _scale(alone.logits),
        _parts_difference(layers.parts(returned_cache(padded)), layers.parts(returned_cache(alone))),
    )
    masked = _difference(rest, padded.logits[:, split:]) / _scale(padded.logits)
    limit = max(allowed, NOISE_CEILING)
    zeros = masked <= limit
    safe = zeros and shifted <= limit
    return Positions(takes_ids, own, safe, zeros, max(shifted, masked) if safe else 0.0)


def _scale(t: torch.Tensor) -> float:
    return 1.0 + float(t.double().abs().max())


def _parts_difference(padded: Parts, alone: Parts) -> float:
    """The largest difference between what the real tokens left in the caches of a padded run and
    of the prompt alone, relative to 1 + the largest value: KV, and recurrent state."""
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    for pp, aa in zip(padded.full, alone.full, strict=True):
        pairs.extend((p[:, :, _PAD:], a) for p, a in zip(pp, aa, strict=True))
    for pp, aa in zip(padded.window, alone.window, strict=True):
        for p, a in zip(pp, aa, strict=True):
            kept = min(p.shape[2], a.shape[2])
            pairs.append((p[:, :, p.shape[2] - kept :], a[:, :, a.shape[2] - kept :]))
    pairs.extend(zip(padded.states, alone.states, strict=True))
    return max((_difference(p, a) / _scale(a) for p, a in pairs), default=0.0)


def _difference(a: torch.Tensor, b: torch.Tensor) -> float:
    diff = float((a.double() - b.double()).abs().max())
    return diff if diff == diff else float("inf")  # NaN: not the same
