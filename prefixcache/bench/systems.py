"""The systems the benchmark compares, each serving one request at a time.

- ``no-cache``: plain ``model.generate``.
- ``hf-manual``: the reuse the transformers documentation describes: prefill a
  known shared prefix once, then ``generate(..., past_key_values=copy.deepcopy(it))``.
  It is told where each request's shared prefix ends, which real callers often
  cannot know.
- ``prefixcache``: ``prefixcache.wrap(model, budget)``, told nothing.
- ``ideal``: ``generate`` with the request's reusable prefix already in a
  DynamicCache, built before the clock starts: no lookup, no gather, no insert.
  Its prefix is the longest one any earlier request's tokens (prompt and
  reply) share with this prompt, as an unbounded cache would hold. No prefix
  cache can beat it.

``prepare`` does what must not be timed; ``run`` is timed.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import torch

from .. import hf
from ..hf import CachedModel
from .workloads import Request

__all__ = ["HfManual", "Ideal", "NoCache", "PrefixCached", "System"]


class System:
    name = "system"

    def __init__(self, model: Any) -> None:
        self.model = model

    def prepare(self, request: Request, prompt: torch.Tensor, reusable: int) -> Any:
        """Untimed work before ``run``; ``reusable`` is the best possible cached length."""
        return None

    @torch.no_grad()
    def run(self, prompt: torch.Tensor, request: Request, prepared: Any, streamer: Any) -> torch.Tensor:
        raise NotImplementedError

    def generate(self, prompt: torch.Tensor, request: Request, streamer: Any, **kwargs: Any) -> torch.Tensor:
        return self.model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=request.new_tokens,
            min_new_tokens=request.new_tokens,
            do_sample=False,
            streamer=streamer,
            **kwargs,
        )


class NoCache(System):
    name = "no-cache"

    @torch.no_grad()
    def run(self, prompt: torch.Tensor, request: Request, prepared: Any, streamer: Any) -> torch.Tensor:
        return self.generate(prompt, request, streamer)


class HfManual(System):
    name = "hf-manual"

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self._prefixes: dict[int, tuple[tuple[int, ...], Any]] = {}

    @torch.no_grad()
    def run(self, prompt: torch.Tensor, request: Request, prepared: Any, streamer: Any) -> torch.Tensor:
        n = request.shared_prefix
        if n == 0 or n >= prompt.shape[1]:
            return self.generate(prompt, request, streamer)
        key = tuple(prompt[0, :n].tolist())
        known = self._prefixes.get(request.group)
        if known is None or known[0] != key:
            known = (key, hf.prompt_cache(self.model, prompt[:, :n]))  # the first request of a group pays
            self._prefixes[request.group] = known
        return self.generate(prompt, request, streamer, past_key_values=copy.deepcopy(known[1]))


class PrefixCached(System):
    def __init__(
        self,
        model: Any,
        budget: int | str,
        name: str = "prefixcache",
        *,
        host_budget: int | str | None = None,
        host_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(model)
        self.name = name
        self.cached: CachedModel = hf.wrap(model, budget, host_budget=host_budget, host_dtype=host_dtype)
        self.exact = host_dtype is None  # an int8 host tier may change outputs slightly
        self.peak_bytes = 0

    @torch.no_grad()
    def run(self, prompt: torch.Tensor, request: Request, prepared: Any, streamer: Any) -> torch.Tensor:
        out = self.cached.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=request.new_tokens,
            min_new_tokens=request.new_tokens,
            do_sample=False,
            streamer=streamer,
        )
        self.peak_bytes = max(self.peak_bytes, self.cached.cache.stats.bytes_used)
        return out


class Ideal(System):
    name = "ideal"

    def __init__(self, model: Any, memo: int = 8) -> None:
        super().__init__(model)
        # Prefix KV computed before, by prefix tokens: a few-shot header is computed once.
        self._memo: OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self._memo_size = memo

    @torch.no_grad()
    def prepare(self, request: Request, prompt: torch.Tensor, reusable: int) -> Any:
        if reusable == 0:
            return None
        key = tuple(prompt[0, :reusable].tolist())
        layers = self._memo.get(key)
        if layers is None:
            layers = [(k.clone(), v.clone()) for k, v in hf.kv_of(hf.prompt_cache(self.model, prompt[:, :reusable]))]
            self._memo[key] = layers
            if len(self._memo) > self._memo_size:
                self._memo.popitem(last=False)
        self._memo.move_to_end(key)
        return hf.cache_from_kv(self.model, [(k.clone(), v.clone()) for k, v in layers])

    @torch.no_grad()
    def run(self, prompt: torch.Tensor, request: Request, prepared: Any, streamer: Any) -> torch.Tensor:
        if prepared is None:
            return self.generate(prompt, request, streamer)
        return self.generate(prompt, request, streamer, past_key_values=prepared)
