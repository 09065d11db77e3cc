"""The ``ideal`` system: what no prefix cache can beat, for the benchmark to measure against.

It calls ``generate`` with each row's reusable prefix already in a DynamicCache,
built before the clock starts: no lookup, no gather, no insert. A row's prefix
is the longest one any earlier batch's tokens (prompt and reply) share with its
prompt, as an unbounded cache would hold. In a left-padded batch the rows share
the cached length ``C = min(pad + prefix)``, as prefixcache's do. For a model
whose cache is more than per-token KV (sliding-window, chunked or recurrent
layers) the prefix is the model's own cache after a forward pass over the
batch's first ``C`` positions, copied.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import torch

from .. import hf
from ..hf.kvcache import CacheBuilder, cache_layers
from .systems import PaddedRequests, Served, System

__all__ = ["Ideal"]


class Ideal(System):
    name = "ideal"

    def __init__(self, model: Any, memo: int = 8) -> None:
        super().__init__(model)
        # Prefix KV computed before, by prefix tokens: a few-shot header is computed once.
        self._memo: OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self._memo_size = memo
        # Whether the model's cache is per-token KV alone, which can be cut at any length.
        device = next(model.parameters()).device
        probe = hf.prompt_cache(model, torch.tensor([[3, 4]], device=device))
        self.plain = cache_layers(probe, strict=True) is not None
        self._caches: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        """For a model that is not plain: the model's own caches after a prefix, by its tokens."""

    @torch.no_grad()
    def prepare(self, batch: PaddedRequests, reusable: list[int]) -> Any:
        cache = self._prepare(batch, reusable)
        if cache is not None and batch.samples > 1:
            cache.batch_repeat_interleave(batch.samples)
        return cache

    def _prepare(self, batch: PaddedRequests, reusable: list[int]) -> Any:
        # [0, pad[r])      padding: zeros, masked out
        # [pad[r], C)      row r's prefix KV, its first C - pad[r] tokens
        # C = min over rows of (pad[r] + reusable[r])
        length = min(pad + n for pad, n in zip(batch.pads, reusable, strict=True))
        if length == 0:
            return None
        if not self.plain:
            return self._model_cache(batch, length)
        rows = [
            self._prefix(prompt, length - pad) if length > pad else None
            for prompt, pad in zip(batch.prompts, batch.pads, strict=True)
        ]
        if len(rows) == 1 and rows[0] is not None:
            return hf.cache_from_kv(self.model, [(k.clone(), v.clone()) for k, v in rows[0]])
        template = next(row for row in rows if row is not None)
        layers = []
        for i, (k0, v0) in enumerate(template):
            keys = k0.new_zeros(len(rows), k0.shape[1], length, k0.shape[3])
            values = v0.new_zeros(len(rows), v0.shape[1], length, v0.shape[3])
            for r, row in enumerate(rows):
                if row is not None:
                    keys[r, :, batch.pads[r] :] = row[i][0][0]
                    values[r, :, batch.pads[r] :] = row[i][1][0]
            layers.append((keys, values))
        return hf.cache_from_kv(self.model, layers)

    def _model_cache(self, batch: PaddedRequests, length: int) -> Any:
        """The model's own cache after the batch's first ``length`` positions (one forward
        pass, as ``generate`` would make it; memoized for a batch of one), copied."""
        key = tuple(batch.input_ids[0, :length].tolist()) if len(batch.prompts) == 1 else None
        found = self._caches.get(key) if key is not None else None
        if found is None:
            ids, mask = batch.input_ids[:, :length], batch.attention_mask[:, :length]
            position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
            keywords = hf.CacheKeywords.of(self.model)
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=position_ids,
                use_cache=True,
                **keywords.to_forward(CacheBuilder(self.model.config).empty()),
            )
            found = hf.returned_cache(out)
            if key is not None:
                self._caches[key] = found
                if len(self._caches) > self._memo_size:
                    self._caches.popitem(last=False)
        elif key is not None:
            self._caches.move_to_end(key)
        return copy.deepcopy(found)

    def _prefix(self, prompt: torch.Tensor, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The KV of the first ``n`` tokens of ``prompt`` (views of a memoized prefix when one covers them)."""
        key = tuple(prompt[0, :n].tolist())
        found = self._memo.get(key)
        if found is not None:
            self._memo.move_to_end(key)
        else:  # a longer memoized prefix (a row of a padded batch uses fewer tokens of its own)
            found = next((v for k, v in reversed(self._memo.items()) if len(k) > n and k[:n] == key), None)
        if found is not None:
            return [(k[:, :, :n], v[:, :, :n]) for k, v in found]
        layers = [(k.clone(), v.clone()) for k, v in hf.kv_of(hf.prompt_cache(self.model, prompt[:, :n]))]
        self._memo[key] = layers
        if len(self._memo) > self._memo_size:
            self._memo.popitem(last=False)
        return layers

    @torch.no_grad()
    def run(self, batch: PaddedRequests, prepared: Any, streamer: Any) -> Served:
        if prepared is None:
            return self.generate(batch, streamer)
        return self.generate(batch, streamer, **hf.CacheKeywords.of(self.model).to_generate(prepared))
