"""The systems the benchmark compares. Each serves one batch of requests at a time.

- ``no-cache``: plain ``model.generate``.
- ``hf-manual``: the reuse the transformers documentation describes: prefill a
  known shared prefix once, then ``generate(..., cache=copy.deepcopy(it))``.
  It is told where each request's shared prefix ends, which real callers often
  cannot know. It takes one request at a time: the recipe's cache holds one
  prompt's prefix, while in a left-padded batch each row's prefix starts at another
  offset and rows may have different prefixes.
- ``prefixcache``: ``prefixcache.wrap(model, budget)``, told nothing. Its hit rate
  counts the prompt tokens not computed: in a left-padded batch, what each row
  matched less what the batch's shared cached length leaves unused.
- ``ideal``: ``generate`` with each row's reusable prefix already in a
  DynamicCache, built before the clock starts: no lookup, no gather, no insert.
  A row's prefix is the longest one any earlier batch's tokens (prompt and reply)
  share with its prompt, as an unbounded cache would hold. In a left-padded batch
  the rows share the cached length ``C = min(pad + prefix)``, as prefixcache's do.
  No prefix cache can beat it. For a model whose cache is more than per-token KV
  (sliding-window, chunked or recurrent layers) the prefix is the model's own
  cache after a forward pass over the batch's first ``C`` positions, copied.
- ``hf-cb`` (in :mod:`.continuous`): transformers' continuous batching with block sharing.

A batch is the requests' prompts, left-padded (before the clock) into one tensor
with an attention mask, the way evaluation harnesses send them. ``prepare`` does
what must not be timed; ``run`` is timed; ``close`` releases what a system holds.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from .. import hf
from ..hf import CachedModel, left_pad
from ..hf.kvcache import CacheBuilder, cache_layers
from ..stats import CacheStats
from .workloads import Request

__all__ = ["PaddedRequests", "HfManual", "Ideal", "NoCache", "PrefixCached", "Served", "System", "padded_requests"]

PAD_ID = 0
"""The id put in padding positions; masked out, so any id would do."""


@dataclass(frozen=True)
class PaddedRequests:
    """What a system is handed: a batch of requests, each prompt alone and all left-padded."""

    requests: list[Request]
    prompts: list[torch.Tensor]
    """Each ``[1, n_i]`` on the model's device."""
    input_ids: torch.Tensor
    """``[B, P]``: the prompts left-padded with ``PAD_ID``."""
    attention_mask: torch.Tensor
    """``[B, P]``: 0 on padding, 1 on the prompt."""
    pads: tuple[int, ...]
    """Padding positions at the start of each row."""

    @property
    def new_tokens(self) -> int:
        """Tokens to generate for every request of the batch (batches never mix two values)."""
        return self.requests[0].new_tokens

    @property
    def samples(self) -> int:
        """Sequences sampled per request (batches never mix two values); 1: greedy."""
        return self.requests[0].samples

    def options(self) -> dict[str, Any]:
        """``generate``'s options for these requests: greedy, or ``samples`` sequences sampled
        from the model's whole distribution (the caller seeds torch's generator first)."""
        n = self.samples
        if n == 1:
            return {"do_sample": False}
        return {"do_sample": True, "num_return_sequences": n, "top_k": 0, "top_p": 1.0, "temperature": 1.0}

    def rows(self, sequences: torch.Tensor) -> list[torch.Tensor]:
        """``generate``'s ``[B * samples, P + new]`` output as each request's ``[samples, n_i + new]``,
        padding removed."""
        n = self.samples
        return [sequences[r * n : (r + 1) * n, pad:] for r, pad in enumerate(self.pads)]


def padded_requests(requests: list[Request], prompts: list[torch.Tensor]) -> PaddedRequests:
    """The prompts as one left-padded batch with its mask."""
    input_ids, mask = left_pad([p[0] for p in prompts], PAD_ID, device=prompts[0].device)
    pads = tuple(input_ids.shape[1] - p.shape[1] for p in prompts)
    return PaddedRequests(list(requests), list(prompts), input_ids, mask, pads)


@dataclass
class Served:
    """What ``run`` returns: each request's prompt and reply, in the batch's order."""

    sequences: list[Any]
    """Each a ``[1, n_i + new]`` tensor, or a list of token ids (turned into a tensor
    after the clock stops)."""
    first_token_at: list[float] | None = None
    """``time.perf_counter()`` at each request's first generated token, when the system
    reports it per request; otherwise the runner's streamer gives the batch's."""


class System:
    name = "system"
    takes_batches = True
    """False for a system that can only serve one request at a time."""
    exact = True
    """Whether its greedy outputs must equal no-cache's."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def prepare(self, batch: PaddedRequests, reusable: list[int]) -> Any:
        """Untimed work before ``run``; ``reusable[r]`` is the best possible cached length of row r."""
        return None

    @torch.no_grad()
    def run(self, batch: PaddedRequests, prepared: Any, streamer: Any) -> Served:
        raise NotImplementedError

    def hits(self) -> tuple[int, int] | None:
        """(prompt tokens reused, prompt tokens sent) so far, for a system that reuses KV."""
        return None

    def notes(self) -> list[str]:
        """Lines the report prints under the table: how the system was set up."""
        return []

    def close(self) -> None:
        """Release what the system holds (threads, memory); called once, at the end of a workload."""

    def generate(self, batch: PaddedRequests, streamer: Any, **kwargs: Any) -> Served:
        out = self.model.generate(
            batch.input_ids,
            attention_mask=batch.attention_mask,
            max_new_tokens=batch.new_tokens,
            min_new_tokens=batch.new_tokens,
            pad_token_id=PAD_ID,
            streamer=streamer,
            **batch.options(),
            **kwargs,
        )
        return Served(batch.rows(out))


class NoCache(System):
    name = "no-cache"

    @torch.no_grad()
    def run(self, batch: PaddedRequests, prepared: Any, streamer: Any) -> Served:
        return self.generate(batch, streamer)


class HfManual(System):
    name = "hf-manual"
    takes_batches = False

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self._prefixes: dict[int, tuple[tuple[int, ...], Any]] = {}

    @torch.no_grad()
    def run(self, batch: PaddedRequests, prepared: Any, streamer: Any) -> Served:
        assert len(batch.requests) == 1, "hf-manual serves one request at a time"
        request, prompt = batch.requests[0], batch.prompts[0]
        n = request.shared_prefix
        if n == 0 or n >= prompt.shape[1]:
            return self.generate(batch, streamer)
        key = tuple(prompt[0, :n].tolist())
        known = self._prefixes.get(request.group)
        if known is None or known[0] != key:
            known = (key, hf.prompt_cache(self.model, prompt[:, :n]))  # the first request of a group pays
            self._prefixes[request.group] = known
        prefix = copy.deepcopy(known[1])
        if batch.samples > 1:  # generate expands the prompt to one row per sample, not a cache it is handed
            prefix.batch_repeat_interleave(batch.samples)
        return self.generate(batch, streamer, **hf.CacheKeywords.of(self.model).to_generate(prefix))


class PrefixCached(System):
    def __init__(
        self,
        model: Any,
        budget: int | str,
        name: str = "prefixcache",
        *,
        host_budget: int | str | None = None,
        host_dtype: torch.dtype | None = None,
        **options: Any,
    ) -> None:
        """``options``: more of ``wrap``'s (``window_ratio``, ``state_share``, ``snapshot_interval``)."""
        super().__init__(model)
        self.name = name
        self.cached: CachedModel = hf.wrap(model, budget, host_budget=host_budget, host_dtype=host_dtype, **options)
        self.exact = host_dtype is None  # an int8 host tier may change outputs slightly
        self.peak_bytes = 0
        self.at_peak: CacheStats | None = None
        """The cache's stats after the request that left it holding the most bytes."""

    @torch.no_grad()
    def run(self, batch: PaddedRequests, prepared: Any, streamer: Any) -> Served:
        out = self.cached.generate(
            batch.input_ids,
            attention_mask=batch.attention_mask,
            max_new_tokens=batch.new_tokens,
            min_new_tokens=batch.new_tokens,
            pad_token_id=PAD_ID,
            streamer=streamer,
            **batch.options(),
        )
        stats = self.cached.cache.stats
        if self.at_peak is None or stats.bytes_used > self.peak_bytes:
            self.peak_bytes, self.at_peak = stats.bytes_used, stats
        return Served(batch.rows(out))

    def memory(self) -> dict[str, Any]:
        """The sizes of the cache's pools and what they held at the peak (see :mod:`.runner`)."""
        cache = self.cached.cache
        pool, window, snapshots = cache.pool, cache.window_pool, cache.snapshot_pool
        peak = self.at_peak or cache.stats
        out: dict[str, Any] = {
            "bytes_per_token": pool.bytes_per_token,
            "capacity_tokens": pool.capacity,
            "window_bytes_per_token": window.bytes_per_token if window is not None else None,
            "window_capacity": window.capacity if window is not None else None,
            "bytes_per_snapshot": snapshots.bytes_per_snapshot if snapshots is not None else None,
            "snapshot_capacity": snapshots.capacity if snapshots is not None else None,
            "cached_tokens_at_peak": peak.cached_tokens,
            "window_tokens_at_peak": peak.window_tokens,
            "snapshots_at_peak": peak.snapshots,
        }
        # Bytes per token of the pool and the window pool: as reserved (the budget's split,
        # per token the pool can hold) and as used at the peak (per token cached then).
        reserved = pool.reserved_bytes + (window.reserved_bytes if window is not None else 0)
        out["reserved_bytes_per_token"] = reserved / pool.capacity if pool.capacity else None
        used = peak.cached_tokens * pool.bytes_per_token
        if window is not None:
            used += peak.window_tokens * window.bytes_per_token
        out["bytes_per_cached_token"] = used / peak.cached_tokens if peak.cached_tokens else None
        return out

    def hits(self) -> tuple[int, int] | None:
        # A row of a padded batch counts what the batch reused (see PrefixCache.reused).
        stats = self.cached.cache.stats
        return stats.hit_tokens, stats.prompt_tokens

    def notes(self) -> list[str]:
        cache = self.cached.cache
        config, shown = cache.config, []
        if cache.window_pool is not None:
            shown.append(f"window_ratio {config.window_ratio}")
        if cache.snapshot_pool is not None:
            shown += [f"state_share {config.state_share}", f"snapshot_interval {config.snapshot_interval}"]
        return [f"{self.name}: budget {config.budget}, " + ", ".join(shown)] if shown else []


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
