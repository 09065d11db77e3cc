"""Sliding-window and chunked attention (Gemma 3, Mistral, gpt-oss, Llama 4 shapes): hits are
exact against the uncached model, in float64, wherever they end relative to the window, and a
node keeps window rows for its last ``window`` tokens only."""

from __future__ import annotations

import pytest
import torch

import prefixcache
from prefixcache.hf.batch import left_pad

from .layer_kinds import WINDOW, build, close, logits, same_generation, tokens

SLIDING = ["gemma3", "mistral", "gpt_oss", "llama4"]


@pytest.mark.parametrize("shape", SLIDING)
@pytest.mark.parametrize("first", [3, WINDOW - 1, WINDOW, WINDOW + 1, 3 * WINDOW + 2])
def test_prefill_on_a_prefix_shorter_than_at_and_past_the_window(shape: str, first: int) -> None:
    model = build(shape)
    cached = prefixcache.wrap(model, "1MiB")
    ids = tokens(model, 1, 4 * WINDOW + 5)[None]
    cached.prefill(ids[:, :first])
    res = cached.prefill(ids)
    assert res.cached_length == first
    assert close(res.logits, logits(model, ids)[:, first:])
    cached.cache._check()


@pytest.mark.parametrize("shape", SLIDING)
def test_generate_chat_turns_and_a_repeated_prompt(shape: str) -> None:
    model = build(shape)
    cached = prefixcache.wrap(model, "1MiB")
    prompt = tokens(model, 2, 3 * WINDOW)[None]
    assert same_generation(cached, prompt, 5)
    hits = cached.cache.stats.hit_tokens
    assert same_generation(cached, prompt, 5)  # the repeated prompt hits all but its last token
    assert cached.cache.stats.hit_tokens - hits == prompt.shape[1] - 1
    turn = cached.generate(prompt, max_new_tokens=5, do_sample=False)
    follow = torch.cat([turn, tokens(model, 3, WINDOW + 3)[None]], dim=1)
    hits = cached.cache.stats.hit_tokens
    assert same_generation(cached, follow, 4)  # the next turn reuses the conversation
    assert cached.cache.stats.hit_tokens - hits == turn.shape[1] - 1
    cached.cache._check()


@pytest.mark.parametrize("shape", ["gemma3", "mistral"])
def test_a_prompt_leaving_a_cached_path_where_its_window_is_gone_computes_it_at_most_twice(shape: str) -> None:
    """A node keeps the window rows of its last ``window`` tokens: a request that leaves the
    path further back has no window there, computes from an earlier end, and leaves the rows
    that the next request with that start needs."""
    model = build(shape)
    cached = prefixcache.wrap(model, "1MiB")
    shared = tokens(model, 4, 3 * WINDOW)
    first = torch.cat([shared, tokens(model, 5, 2 * WINDOW)])[None]
    cached.prefill(first)
    assert cached.cache.stats.window_tokens == WINDOW  # a hit at the end, or a token before it
    second = torch.cat([shared, tokens(model, 6, 5)])[None]
    res = cached.prefill(second)
    assert res.cached_length == 0  # the shared part's end has no window rows yet
    assert close(res.logits, logits(model, second))
    third = torch.cat([shared, tokens(model, 7, 5)])[None]
    res = cached.prefill(third)
    assert res.cached_length == shared.shape[0]
    assert close(res.logits, logits(model, third)[:, shared.shape[0] :])
    cached.cache._check()


@pytest.mark.parametrize("shape", SLIDING)
def test_a_left_padded_batch_of_rows_with_cached_prefixes(shape: str) -> None:
    model = build(shape)
    cached = prefixcache.wrap(model, "1MiB")
    long, short = tokens(model, 8, 3 * WINDOW + 1), tokens(model, 9, WINDOW + 2)
    cached.prefill(long[None, :-3])
    cached.prefill(short[None, :-2])
    ids, mask = left_pad([long, short])
    res = cached.prefill(ids, mask)
    assert res.cached_length > 0
    want = logits(model, ids, mask)[:, res.cached_length :]
    pad = ids.shape[1] - short.shape[0]
    assert close(res.logits[0], want[0]) and close(
        res.logits[1, max(0, pad - res.cached_length) :], want[1, max(0, pad - res.cached_length) :]
    )
    assert same_generation(cached, ids, 4, mask)
    cached.cache._check()


@pytest.mark.parametrize("ratio", [1.0, 0.25])
def test_under_pressure_outputs_stay_exact_and_the_pools_within_budget(ratio: float) -> None:
    model = build("gemma3")
    cached = prefixcache.wrap(model, 40_000, window_ratio=ratio)
    stats = cached.cache.stats
    rng = torch.Generator().manual_seed(3)
    heads = [tokens(model, 20 + i, 2 * WINDOW + 3) for i in range(4)]
    for i in range(24):
        head = heads[int(torch.randint(4, (1,), generator=rng))]
        ids = torch.cat([head, tokens(model, 100 + i, 5)])[None]
        res = cached.prefill(ids)
        assert close(res.logits, logits(model, ids)[:, res.cached_length :])
        cached.cache._check()
    stats = cached.cache.stats
    assert stats.evicted_tokens > 0 and stats.hit_tokens > 0
    assert stats.bytes_used <= stats.bytes_reserved <= 40_000


def test_the_window_pool_holds_fewer_tokens_than_the_pool_by_the_ratio() -> None:
    model = build("gemma3")
    full = prefixcache.wrap(model, "1MiB", window_ratio=1.0).cache
    half = prefixcache.wrap(model, "1MiB", window_ratio=0.25).cache
    assert full.window_pool is not None and half.window_pool is not None
    assert full.window_pool.capacity == full.pool.capacity
    assert half.pool.capacity > full.pool.capacity  # more tokens in the same budget
    assert half.window_pool.capacity == pytest.approx(0.25 * half.pool.capacity, abs=2)


@pytest.mark.parametrize("option", [{"host_budget": "1MiB"}, {"remote": "redis://127.0.0.1:1/0"}])
def test_tiers_a_sliding_model_cannot_have_are_refused_by_name(option: dict[str, str]) -> None:
    model = build("gemma3")
    name = next(iter(option))
    with pytest.raises(ValueError, match=rf"^{name}: not available for a model with sliding-window"):
        prefixcache.wrap(model, "1MiB", **option)


def test_saving_a_sliding_models_cache_is_refused(tmp_path: object) -> None:
    model = build("gemma3")
    cached = prefixcache.wrap(model, "1MiB")
    cached.prefill(tokens(model, 1, 20)[None])
    with pytest.raises(ValueError, match="saving is not available"):
        cached.cache.save(f"{tmp_path}/c.safetensors")
