"""What a cached request adds over the model's own work, and where that time goes.

Workload (seeded): few-shot-shaped prompts (:mod:`.workloads`: 4 subjects x a
600-token header, questions of 50-70 tokens, one token generated). Every prompt is
cached before the clock starts, so each request reuses all but its last token: the
model's work is one token's forward pass and generate's own bookkeeping, and the
cache's is everything else.

For each request (in a shuffled order) :func:`measure` times ``cached.generate``
and, right after it, ``model.generate`` handed the same prefix KV ready-made in a
DynamicCache (built outside the clock). The added cost is the difference; the
median of the per-request differences is reported with its quartiles, beside the
model's own time. Then each step of a cached request is timed alone, over the same
prompts (median per step): checking the input, the match (and pin), gathering the
prefix KV, building the DynamicCache, and the insert (here: finding everything
already cached).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from .. import hf
from ..hf.batch import read_batch
from ..hf.kvcache import CacheBuilder
from .workloads import make_workload

__all__ = ["STEPS", "Overhead", "measure", "measure_preset"]

STEPS = ("input checks", "match", "gather", "DynamicCache", "insert")


@dataclass(frozen=True)
class Overhead:
    """What :func:`measure` found; times in microseconds."""

    workload: str
    requests: int
    parameters: int
    model_us: float
    """Median time of ``model.generate`` with the prefix KV ready-made."""
    added_us: float
    """Median over requests of (cached time - model's time)."""
    added_q1_us: float
    added_q3_us: float
    steps: dict[str, float]
    """Median time of each step alone, in :data:`STEPS` order."""
    step_prompts: int
    repeats: int
    differing: int
    """Requests whose output differed from ``model.generate``'s (should be 0)."""
    hit_tokens: int
    reusable_tokens: int
    """Hits expected: every token of every prompt but the last (should equal ``hit_tokens``)."""


def measure_preset(
    preset: str,
    *,
    device: torch.device,
    requests: int = 300,
    seed: int = 0,
    repeats: int = 3,
    step_prompts: int = 100,
) -> Overhead:
    """:func:`measure` on a built-in preset (float32) loaded on ``device``."""
    torch.manual_seed(seed)
    model = hf.load_model(preset=preset, device=device, seed=seed)
    return measure(model, requests=requests, seed=seed, repeats=repeats, step_prompts=step_prompts)


def measure(model: Any, *, requests: int = 300, seed: int = 0, repeats: int = 3, step_prompts: int = 100) -> Overhead:
    """Time cached requests against the model's own, and each step of a cached request alone.

    Raises ``ValueError`` if ``requests < 4`` (the quartiles need a few values).
    """
    if requests < 4:
        raise ValueError(f"requests: expected at least 4, got {requests}")
    cached = hf.wrap(model, "4GiB")
    device = cached.device
    keywords = hf.CacheKeywords.of(model)
    workload = make_workload("fewshot", requests, seed=seed, vocab=hf.vocab_size(model))
    prompts = [torch.tensor([r.tokens], device=device) for r in workload.requests]

    def run_cached(ids: torch.Tensor) -> torch.Tensor:
        return cached.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False)

    # Cache every prompt, and keep each prompt's prefix KV (all but the last token) for the model's run.
    ready: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
    for ids in prompts:
        run_cached(ids)
        ready.append([(k.clone(), v.clone()) for k, v in hf.kv_of(hf.prompt_cache(model, ids[:, :-1]))])
    for ids in prompts[:20]:  # warm-up of both paths
        run_cached(ids)
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False)

    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    added, own = [], []
    differing = 0
    hits_before = cached.cache.stats.hit_tokens
    for i in order:
        ids = prompts[i]
        t_cached, out_cached = _timed(partial(run_cached, ids), device)
        kv = hf.cache_from_kv(model, [(k.clone(), v.clone()) for k, v in ready[i]])
        t_model, out_model = _timed(
            partial(
                model.generate,
                ids,
                attention_mask=torch.ones_like(ids),
                **keywords.to_generate(kv),
                max_new_tokens=1,
                do_sample=False,
            ),
            device,
        )
        differing += not torch.equal(out_cached, out_model)
        added.append(t_cached - t_model)
        own.append(t_model)
    hit = cached.cache.stats.hit_tokens - hits_before
    expected = sum(prompts[i].shape[1] - 1 for i in order)
    chosen = [prompts[i] for i in order[:step_prompts]]
    steps = step_times(cached, chosen, device, repeats)
    q1, _, q3 = statistics.quantiles([1e6 * t for t in added], n=4)
    return Overhead(
        workload=workload.description,
        requests=len(order),
        parameters=sum(p.numel() for p in model.parameters()),
        model_us=1e6 * statistics.median(own),
        added_us=1e6 * statistics.median(added),
        added_q1_us=q1,
        added_q3_us=q3,
        steps=steps,
        step_prompts=len(chosen),
        repeats=repeats,
        differing=differing,
        hit_tokens=hit,
        reusable_tokens=expected,
    )


def step_times(cached: Any, prompts: list[torch.Tensor], device: torch.device, repeats: int) -> dict[str, float]:
    """Median time of each step of a cached request, each step timed alone (microseconds)."""
    cache, model = cached.cache, cached.model
    builder = CacheBuilder(model.config)
    vocab = hf.vocab_size(model)
    samples: dict[str, list[float]] = {name: [] for name in STEPS}

    def clock(name: str, fn: Callable[[], Any]) -> Any:
        elapsed, out = _timed(fn, device)
        samples[name].append(elapsed)
        return out

    # The KV the model leaves behind for the whole prompt, as the insert reads it.
    after = [hf.kv_of(hf.prompt_cache(model, ids)) for ids in prompts]
    for _ in range(repeats):
        for ids, full in zip(prompts, after, strict=True):
            mask = torch.ones_like(ids)
            batch = clock(
                "input checks",
                partial(
                    read_batch,
                    ids,
                    mask,
                    vocab=vocab,
                    device=device,
                    generation_config=model.generation_config,
                    generate_kwargs={},
                ),
            )
            row = batch.prompts[0]
            hit = clock("match", partial(cache.match, row, max_length=len(row) - 1))
            layers = clock("gather", partial(cache.gather, hit, copy=False))
            clock("DynamicCache", partial(builder.filled, layers))
            # Everything is cached: the insert below the hit finds the last token and stores nothing.
            clock("insert", partial(cache.insert, row, full, hit=hit))
            hit.release()
    return {name: 1e6 * statistics.median(values) for name, values in samples.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out
