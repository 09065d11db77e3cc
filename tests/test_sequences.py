"""Several sequences per prompt (num_return_sequences, beam search, best-of-n): each prompt's
prefix is reused once for all its rows, outputs are the uncached model's under the same seed
(float64), and each returned sample is stored as its own branch below the prompt."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import torch

import prefixcache

from . import layer_kinds
from .tiny_models import tiny_model

MODES: dict[str, dict[str, Any]] = {
    "sampled": dict(do_sample=True, num_return_sequences=4),
    "sampled, top-k": dict(do_sample=True, num_return_sequences=3, top_k=5, temperature=0.7),
    "beams": dict(num_beams=3),
    "beams, two returned": dict(num_beams=3, num_return_sequences=2),
    "beams, all returned": dict(num_beams=3, num_return_sequences=3),
    "beam sampling": dict(num_beams=3, do_sample=True, num_return_sequences=2),
}


def seeded(call: Any, seed: int, *args: Any, **kwargs: Any) -> Any:
    torch.manual_seed(seed)
    return call(*args, **kwargs)


@pytest.fixture
def cached() -> prefixcache.CachedModel:
    return prefixcache.wrap(tiny_model("llama", torch.float64), "1MiB")


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_gives_the_uncached_outputs_and_reuses_the_prefix(cached: prefixcache.CachedModel, mode: str) -> None:
    ids = torch.arange(3, 43).unsqueeze(0)
    cached.prefill(ids[:, :30])
    hits = cached.cache.stats.hit_tokens
    options = dict(max_new_tokens=6, **MODES[mode])
    got = seeded(cached.generate, 7, ids, **options)
    want = seeded(cached.model.generate, 7, ids, **options)
    assert torch.equal(got, want)
    stats = cached.cache.stats
    assert stats.hit_tokens - hits == 30 and stats.passed_through == 0
    cached.cache._check()


def test_a_left_padded_batch_of_prompts_each_with_several_samples(cached: prefixcache.CachedModel) -> None:
    ids = torch.tensor([[0, 0, 0, *range(5, 30)], list(range(3, 31))])
    mask = (torch.arange(ids.shape[1]) >= torch.tensor([[3], [0]])).long()
    cached.prefill(ids[1:, :20])
    cached.prefill(torch.arange(5, 20).unsqueeze(0))
    options = dict(attention_mask=mask, max_new_tokens=5, do_sample=True, num_return_sequences=3)
    assert torch.equal(seeded(cached.generate, 3, ids, **options), seeded(cached.model.generate, 3, ids, **options))
    assert cached.cache.stats.hit_tokens > 0
    cached.cache._check()


def test_the_prompt_is_stored_once_and_every_sample_as_its_own_branch(cached: prefixcache.CachedModel) -> None:
    ids = torch.arange(3, 23).unsqueeze(0)
    out = seeded(cached.generate, 5, ids, max_new_tokens=6, do_sample=True, num_return_sequences=4)
    distinct = {tuple(row.tolist()) for row in out}
    assert len(distinct) > 1, "the samples should differ for this check to mean anything"
    # The prompt once, then each sample's tokens but its last (never fed back: it has no KV),
    # samples that begin alike sharing their common start.
    branches = {row[20 : 20 + i] for row in distinct for i in range(1, len(row) - 20)}
    assert cached.cache.stats.cached_tokens == 20 + len(branches)
    for row in out:
        assert cached.cache.cached_length(row[:-1]) == len(row) - 1
        res = cached.prefill(torch.cat([row, torch.tensor([7])]).unsqueeze(0))  # a chat continuing from it
        assert res.cached_length == len(row) - 1


def test_beams_store_the_prompt_only(cached: prefixcache.CachedModel) -> None:
    """Beams are reordered as they move: the cache's rows at the end are not the returned
    sequences, so of a beam search only the prompt is stored."""
    ids = torch.arange(3, 23).unsqueeze(0)
    out = cached.generate(ids, max_new_tokens=6, num_beams=3, num_return_sequences=2)
    assert cached.cache.stats.cached_tokens == 20
    assert all(cached.cache.cached_length(row) == 20 for row in out)


def test_a_beam_search_on_a_prompt_cached_but_its_last_token_stores_that_token(
    cached: prefixcache.CachedModel,
) -> None:
    """Such a request holds no claim (nothing before its last token is left to compute), and
    its beams are not stored: the prompt is stored all the same."""
    ids = torch.arange(3, 23).unsqueeze(0)
    cached.prefill(ids[:, :19])
    cached.generate(ids, max_new_tokens=4, num_beams=3)
    assert cached.cache.cached_length(ids[0]) == 20


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (dict(num_beams=4, num_beam_groups=2, diversity_penalty=0.5), "group beam search"),
        (dict(penalty_alpha=0.6, top_k=4), "contrastive search"),
        (dict(dola_layers="low"), "DoLa"),
        (dict(custom_generate=lambda *a, **k: None), "custom_generate"),
    ],
)
def test_decoding_loops_from_the_hub_run_without_reuse_and_say_so(
    cached: prefixcache.CachedModel, options: dict[str, Any], named: str, caplog: pytest.LogCaptureFixture
) -> None:
    """transformers 5.25 moved these to the Hub (they need a download and trust_remote_code);
    whatever they do, the cache steps aside, counts it and says why."""
    ids = torch.arange(3, 23).unsqueeze(0)
    # The Hub's loops need a download and raise here; a caller's own loop runs.
    with caplog.at_level("WARNING", logger="prefixcache"), contextlib.suppress(ValueError):
        cached.generate(ids, max_new_tokens=2, **options)
    assert cached.cache.stats.passed_through == 1
    assert named in caplog.text


@pytest.mark.parametrize("shape", ["gemma3", "qwen3_5"])
def test_sliding_window_and_recurrent_models_sample_several_sequences_exactly(shape: str) -> None:
    model = layer_kinds.build(shape)
    cached = prefixcache.wrap(model, "2MiB", snapshot_interval=8)
    ids = layer_kinds.tokens(model, 1, 26).unsqueeze(0)
    cached.prefill(ids[:, :17])
    options = dict(max_new_tokens=4, do_sample=True, num_return_sequences=3)
    assert torch.equal(seeded(cached.generate, 2, ids, **options), seeded(model.generate, 2, ids, **options))
    assert cached.cache.stats.hit_tokens > 0
    out = seeded(cached.generate, 4, ids, max_new_tokens=4, num_beams=2)
    assert torch.equal(out, seeded(model.generate, 4, ids, max_new_tokens=4, num_beams=2))
    cached.cache._check()
