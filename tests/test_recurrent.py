"""Linear-attention, state-space and convolution layers (Qwen3.5, Granite 4, Falcon-H1, LFM2,
Mamba2 shapes): the cache keeps a snapshot of their state where a hit may end, and hits are
exact against the uncached model in float64, wherever a request leaves a cached path."""

from __future__ import annotations

import pytest
import torch

import prefixcache
from prefixcache import UnsupportedModelError
from prefixcache.hf.batch import left_pad

from .architectures import build as build_architecture
from .layer_kinds import build, close, logits, same_generation, tokens, unheld

RECURRENT = ["qwen3_5", "granite4", "falcon_h1", "lfm2", "mamba2"]
INTERVAL = 8


def wrapped(shape: str, **options: object) -> prefixcache.CachedModel:
    options = {"snapshot_interval": INTERVAL, **options}
    return prefixcache.wrap(build(shape), "2MiB", **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", RECURRENT)
def test_generate_chat_turns_and_a_repeated_prompt(shape: str) -> None:
    cached = wrapped(shape)
    model = cached.model
    prompt = tokens(model, 1, 21)[None]
    assert same_generation(cached, prompt, 4)
    hits = cached.cache.stats.hit_tokens
    assert same_generation(cached, prompt, 4)  # a snapshot after all but its last token
    assert cached.cache.stats.hit_tokens - hits == prompt.shape[1] - 1
    turn = cached.generate(prompt, max_new_tokens=4, do_sample=False)
    follow = torch.cat([turn, tokens(model, 2, 6)[None]], dim=1)
    hits = cached.cache.stats.hit_tokens
    assert same_generation(cached, follow, 3)  # a snapshot at the end of the stored conversation
    assert cached.cache.stats.hit_tokens - hits == turn.shape[1] - 1
    cached.cache._check()


@pytest.mark.parametrize("shape", RECURRENT)
@pytest.mark.parametrize("where", [5, INTERVAL, 2 * INTERVAL + 3], ids=["before", "at", "after"])
def test_leaving_a_path_before_at_and_after_a_snapshot(shape: str, where: int) -> None:
    """The first prompt leaves snapshots every INTERVAL tokens and at its end; a second one
    that leaves the path at ``where`` hits the last snapshot before it and leaves one there,
    which a third one with the same start hits whole."""
    cached = wrapped(shape)
    model = cached.model
    shared = tokens(model, 3, where)
    first = torch.cat([shared, tokens(model, 4, 3 * INTERVAL)])[None]
    cached.prefill(first)
    second = torch.cat([shared, tokens(model, 5, 6)])[None]
    res = cached.prefill(second)
    assert res.cached_length == (where // INTERVAL) * INTERVAL
    assert close(res.logits, logits(model, second)[:, res.cached_length :])
    third = torch.cat([shared, tokens(model, 6, 6)])[None]
    res = cached.prefill(third)
    assert res.cached_length == where
    assert close(res.logits, logits(model, third)[:, where:])
    cached.cache._check()


@pytest.mark.parametrize("shape", RECURRENT)
def test_a_left_padded_batch_of_rows_with_cached_prefixes(shape: str) -> None:
    cached = wrapped(shape)
    model = cached.model
    long, short = tokens(model, 7, 26), tokens(model, 8, 13)
    cached.prefill(long[None, :-3])
    cached.prefill(short[None, :-4])
    ids, mask = left_pad([long, short])
    assert same_generation(cached, ids, 3, mask)
    res = cached.prefill(ids, mask)
    assert res.cached_length > 0
    want = logits(model, ids, mask)[:, res.cached_length :]
    start = max(0, ids.shape[1] - short.shape[0] - res.cached_length)  # row 1's logits from its first token
    assert close(res.logits[0], want[0]) and close(res.logits[1, start:], want[1, start:])
    cached.cache._check()


@pytest.mark.parametrize("shape", ["qwen3_5", "lfm2", "gemma3"])
def test_a_batch_of_questions_after_one_system_prompt_reuses_it(shape: str) -> None:
    """Rows of different lengths after one cached system prompt: each is cut where the rows'
    cached lengths meet, inside the prompt for the rows with more padding, where no state or
    window was kept. Those rows are computed alone up to there first; the batch reuses it."""
    cached = wrapped(shape, snapshot_interval=0) if shape != "gemma3" else prefixcache.wrap(build(shape), "1MiB")
    model = cached.model
    system = tokens(model, 30, 24)
    cached.generate(torch.cat([system, tokens(model, 31, 4)])[None], max_new_tokens=1, do_sample=False)
    cached.generate(torch.cat([system, tokens(model, 32, 4)])[None], max_new_tokens=1, do_sample=False)
    rows = [torch.cat([system, tokens(model, 40 + i, n)]) for i, n in enumerate((9, 3, 6))]
    ids, mask = left_pad(rows)
    before = cached.cache.stats.hit_tokens
    assert same_generation(cached, ids, 3, mask)
    assert cached.cache.stats.hit_tokens - before >= len(system)  # the longest row's whole prompt
    cached.cache._check()


def test_a_few_shot_header_is_computed_at_most_twice() -> None:
    """Many questions after one header: the first computes it whole, the second from its last
    snapshot and leaves one at the header's end, every later one hits the header."""
    cached = wrapped("qwen3_5", snapshot_interval=0)
    model = cached.model
    header = tokens(model, 9, 30)
    computed = []
    for q in range(5):
        ids = torch.cat([header, tokens(model, 20 + q, 5)])[None]
        res = cached.prefill(ids)
        assert close(res.logits, logits(model, ids)[:, res.cached_length :])
        computed.append(ids.shape[1] - res.cached_length)
    assert computed[2:] == [5, 5, 5]
    assert sum(n >= header.shape[0] for n in computed) <= 2


def test_snapshots_are_evicted_with_their_nodes_and_outputs_stay_exact() -> None:
    model = build("qwen3_5")
    cached = prefixcache.wrap(model, 2_000_000, snapshot_interval=INTERVAL, state_share=0.25)
    capacity = cached.cache.stats.snapshot_capacity
    assert 0 < capacity < 20
    for i in range(14):
        ids = torch.cat([tokens(model, 30 + i % 2, 12), tokens(model, 100 + i, 10)])[None]
        res = cached.prefill(ids)
        assert close(res.logits, logits(model, ids)[:, res.cached_length :])
        assert cached.cache.stats.snapshots <= capacity
        cached.cache._check()
    stats = cached.cache.stats
    assert stats.evicted_tokens > 0 and stats.hit_tokens > 0


@pytest.mark.parametrize("model_type", ["mamba", "falcon_mamba", "jamba"])
def test_a_model_whose_own_cache_does_not_continue_a_prompt_is_refused(model_type: str) -> None:
    """transformers' Mamba v1, FalconMamba and Jamba scan several tokens without their cached
    state (a release whose state layers prefixcache cannot hold refuses them before that)."""
    model, _ = build_architecture(model_type)
    why = "logits computed on a cached prefix differ" if unheld(model) is None else model_type
    with pytest.raises(UnsupportedModelError, match=why):
        prefixcache.wrap(model, "1MiB")


def test_snapshot_options_are_checked() -> None:
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="snapshot_interval"):
            prefixcache.CacheConfig(snapshot_interval=bad)  # type: ignore[arg-type]
    for bad in (0, 1.5, "a"):
        with pytest.raises(ValueError, match="state_share"):
            prefixcache.CacheConfig(state_share=bad)  # type: ignore[arg-type]
