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
- ``ideal`` (in :mod:`.ideal`): ``generate`` with each row's reusable prefix
  already in a cache, built before the clock starts. No prefix cache can beat it.
- ``hf-cb`` (in :mod:`.continuous`): transformers' continuous batching with block sharing.

A batch is the requests' prompts, left-padded (before the clock) into one tensor
with an attention mask, the way evaluation harnesses send them. ``prepare`` does
what must not be timed; ``run`` is timed; ``close`` releases what a system holds.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from .. import hf
from ..hf import CachedModel, left_pad
from ..stats import CacheStats
from .workloads import Request

__all__ = ["PaddedRequests", "HfManual", "NoCache", "PrefixCached", "Served", "System", "padded_requests"]

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

    def generate(self, batch: PaddedRequests, streamer: Any, *, via: Any = None, **kwargs: Any) -> Served:
        """The batch's generate (``via``: another object's generate than the model's, such as a
        CachedModel's), greedy or sampled as its requests ask, for their new tokens exactly."""
        out = (via or self.model).generate(
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
        served = self.generate(batch, streamer, via=self.cached)
        stats = self.cached.cache.stats
        if self.at_peak is None or stats.bytes_used > self.peak_bytes:
            self.peak_bytes, self.at_peak = stats.bytes_used, stats
        return served

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
