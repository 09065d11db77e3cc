"""prefixcache.wrap gives the outputs of the model without the cache, on many architectures."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import DynamicCache

import prefixcache
from prefixcache.hf.batch import left_pad
from prefixcache.hf.kvcache import GENERATE_KEYWORD, CacheBuilder

from . import layer_kinds
from .tiny_models import CONFIGS, CORE, VOCAB, config_for, tiny_model

# float64 logits agree to rounding (about 1e-16 here); float32 to this.
FLOAT32_LOGIT_TOLERANCE = 1e-4


def float64_tolerance(model_type: str) -> float:
    # GPT-J's attention casts queries and keys to float32 before transformers 5, so its
    # float64 logits only agree to float32 rounding there.
    return 1e-8 if model_type == "gptj" else 1e-10


def tokens(generator: torch.Generator, n: int) -> torch.Tensor:
    return torch.randint(3, VOCAB, (n,), generator=generator)


def uncached_logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids.unsqueeze(0)).logits[0]


def request_stream(seed: int) -> list[tuple[str, torch.Tensor]]:
    """Prompts that share prefixes in the ways real traffic does; chat turns are built
    later from the previous turn's output."""
    g = torch.Generator().manual_seed(seed)
    system = tokens(g, 24)
    first = torch.cat([system, tokens(g, 6)])
    return [
        ("first", first),
        ("same system prompt", torch.cat([system, tokens(g, 5)])),
        ("chat turn 2", first),  # replaced by first + its output + a new user turn
        ("prefix of an earlier prompt", system[:11]),
        ("identical prompt again", first),
        ("longer than anything cached", torch.cat([first, tokens(g, 40)])),
        ("unrelated", tokens(g, 9)),
    ]


def run_stream(model_type: str, dtype: torch.dtype) -> list[tuple[str, int, float, bool]]:
    model = tiny_model(model_type, dtype)
    cached = prefixcache.wrap(model, "1MiB")
    g = torch.Generator().manual_seed(7)
    results = []
    previous_output: torch.Tensor | None = None
    for name, prompt in request_stream(seed=3):
        if name == "chat turn 2":
            assert previous_output is not None
            prompt = torch.cat([previous_output, tokens(g, 4)])
        ids = prompt.unsqueeze(0)
        before = cached.cache.stats.hit_tokens
        got = cached.generate(ids, max_new_tokens=5, do_sample=False)
        want = model.generate(ids, max_new_tokens=5, do_sample=False)
        hit = cached.cache.stats.hit_tokens - before
        same_tokens = torch.equal(got, want)
        previous_output = got[0]
        # prefill of the same prompt plus one token: everything but the last token cached
        extended = torch.cat([prompt, tokens(g, 1)])
        res = cached.prefill(extended)
        diff = float((res.logits[0] - uncached_logits(model, extended)[res.cached_length :]).abs().max())
        results.append((name, hit, diff, same_tokens))
        cached.cache._check()
    return results


def check_hits(results: list[tuple[str, int, float, bool]]) -> None:
    hits = {name: hit for name, hit, _, _ in results}
    assert hits["first"] == 0
    assert hits["same system prompt"] >= 24
    # The previous turn (29 prompt tokens, 5 generated) is cached whole but for the
    # last generated token, whose KV was never computed.
    assert hits["chat turn 2"] >= 29 + 4
    assert hits["prefix of an earlier prompt"] == 10  # all but the last token
    assert hits["identical prompt again"] == 29
    assert hits["longer than anything cached"] >= 30


@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_float64_stream_matches_the_uncached_model(model_type: str) -> None:
    results = run_stream(model_type, torch.float64)
    for name, _, diff, same in results:
        assert same, f"{model_type}: greedy tokens differ on '{name}'"
        tolerance = float64_tolerance(model_type)
        assert diff <= tolerance, f"{model_type}: prefill logits differ by {diff:.3g} on '{name}'"
    check_hits(results)


@pytest.mark.parametrize("model_type", CORE)
def test_float32_stream_matches_within_tolerance(model_type: str) -> None:
    results = run_stream(model_type, torch.float32)
    for name, _, diff, same in results:
        assert same, f"{model_type}: greedy tokens differ on '{name}'"
        assert diff <= FLOAT32_LOGIT_TOLERANCE, f"{model_type}: logits differ by {diff:.3g} on '{name}'"
    check_hits(results)


# Bloom's eager attention turns the uncached padded batch into NaN (pad queries attend
# to nothing), so there is no uncached result to match; its single rows are tested above.
@pytest.mark.parametrize("model_type", [m for m in CONFIGS if m != "bloom"])
def test_left_padded_batch_with_different_hit_lengths(model_type: str) -> None:
    model = tiny_model(model_type, torch.float64)
    cached = prefixcache.wrap(model, "1MiB")
    g = torch.Generator().manual_seed(11)
    system = tokens(g, 14)
    cached.generate(torch.cat([system, tokens(g, 5)]).unsqueeze(0), max_new_tokens=2, do_sample=False)
    cached.generate(system[:6].unsqueeze(0), max_new_tokens=2, do_sample=False)
    rows = [
        torch.cat([system, tokens(g, 4)]),  # hits 14, no padding
        torch.cat([system[:7], tokens(g, 2)]),  # hits 7, padding 9
        tokens(g, 3),  # hits nothing, padding 15
        torch.cat([system, tokens(g, 1)]),  # hits 14, padding 3
    ]
    ids, mask = left_pad(rows)
    before = cached.cache.stats.hit_tokens
    got = cached.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    want = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    assert torch.equal(got, want)
    # Every row reuses the padded positions [pad, 14) that all rows have cached (the first
    # row's hit ends at 14): 14, 5, 0 and 11 tokens.
    assert cached.cache.stats.hit_tokens - before == 14 + 5 + 0 + 11
    # Every row's prompt and output is cached now: prefill the batch again and compare each
    # row's last logits with the row run alone, unpadded.
    res = cached.prefill(ids, mask)
    assert res.cached_length == ids.shape[1] - 1
    for r, row in enumerate(rows):
        diff = (res.logits[r, -1] - uncached_logits(model, row)[-1]).abs().max()
        assert float(diff) <= float64_tolerance(model_type)
    cached.cache._check()


def test_prefill_in_training_mode_runs_uncached_with_generates_positions() -> None:
    model = tiny_model("gpt2", torch.float64)  # absolute positions: a padded row's must start at 0
    cached = prefixcache.wrap(model, "1MiB")
    g = torch.Generator().manual_seed(12)
    rows = [tokens(g, 9), tokens(g, 4)]
    cached.generate(rows[0].unsqueeze(0), max_new_tokens=1, do_sample=False)
    ids, mask = left_pad(rows)
    passed = cached.cache.stats.passed_through
    model.training = True  # what the cache reads; its modules stay in eval mode, without dropout
    try:
        res = cached.prefill(ids, mask)
    finally:
        model.eval()
    assert res.cached_length == 0
    assert cached.cache.stats.passed_through == passed + 2  # both rows, counted as requests
    for r, row in enumerate(rows):
        diff = (res.logits[r, -1] - uncached_logits(model, row)[-1]).abs().max()
        assert float(diff) <= float64_tolerance("gpt2")


def test_generated_tokens_are_cached_up_to_the_first_eos() -> None:
    model = tiny_model("llama", torch.float64)
    cached = prefixcache.wrap(model, "1MiB")
    g = torch.Generator().manual_seed(5)
    rows = [tokens(g, 10), tokens(g, 7)]
    ids, mask = left_pad(rows)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    # Make row 0's second generated token the end of sequence: row 0 stops there and is
    # fed padding afterwards, while row 1 runs on.
    eos = int(out[0, 11])
    assert eos not in out[1, 10:].tolist()
    got = cached.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, eos_token_id=eos, pad_token_id=0)
    want = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(got, want) and got.shape[1] == 16
    # Row 0: its prompt and two generated tokens (the second is the end); row 1: its
    # prompt and the five generated tokens that were fed back.
    assert cached.cache.stats.cached_tokens == (10 + 2) + (7 + 5)


def test_sampling_with_a_seed_matches() -> None:
    model = tiny_model("qwen2", torch.float64)
    cached = prefixcache.wrap(model, "1MiB")
    prompt = tokens(torch.Generator().manual_seed(9), 12).unsqueeze(0)
    cached.generate(prompt, max_new_tokens=2, do_sample=False)
    for seed in range(3):
        torch.manual_seed(seed)
        got = cached.generate(prompt, max_new_tokens=8, do_sample=True, top_k=20)
        torch.manual_seed(seed)
        want = model.generate(prompt, max_new_tokens=8, do_sample=True, top_k=20)
        assert torch.equal(got, want)
    assert cached.cache.stats.hit_tokens > 0


def test_return_dict_scores_and_streamer_match() -> None:
    from transformers.generation.streamers import BaseStreamer

    class Collect(BaseStreamer):
        def __init__(self) -> None:
            self.chunks: list[list[int]] = []

        def put(self, value: torch.Tensor) -> None:
            self.chunks.append(value.reshape(-1).tolist())

        def end(self) -> None:
            self.chunks.append([])

    model = tiny_model("llama", torch.float64)
    cached = prefixcache.wrap(model, "1MiB")
    prompt = tokens(torch.Generator().manual_seed(2), 15).unsqueeze(0)
    cached.generate(prompt, max_new_tokens=1, do_sample=False)
    s1, s2 = Collect(), Collect()
    kwargs: dict[str, Any] = dict(max_new_tokens=4, do_sample=False, return_dict_in_generate=True, output_scores=True)
    got = cached.generate(prompt, streamer=s1, **kwargs)
    want = model.generate(prompt, streamer=s2, **kwargs)
    assert torch.equal(got.sequences, want.sequences)
    for a, b in zip(got.scores, want.scores, strict=True):
        assert float((a - b).abs().max()) <= 1e-10
    assert s1.chunks == s2.chunks


def test_beam_search_reuses_the_prompt(caplog: pytest.LogCaptureFixture) -> None:
    model = tiny_model("llama", torch.float64)
    cached = prefixcache.wrap(model, "1MiB")
    prompt = tokens(torch.Generator().manual_seed(4), 12).unsqueeze(0)
    cached.generate(prompt, max_new_tokens=2, do_sample=False)
    with caplog.at_level("WARNING", logger="prefixcache"):
        got = cached.generate(prompt, max_new_tokens=4, num_beams=3, do_sample=False)
    want = model.generate(prompt, max_new_tokens=4, num_beams=3, do_sample=False)
    assert torch.equal(got, want)
    assert cached.cache.stats.passed_through == 0 and cached.cache.stats.hit_tokens == 11
    assert caplog.text == ""  # see tests/test_sequences.py for every mode


def test_a_callers_own_cache_is_left_alone() -> None:
    from transformers import DynamicCache

    model = tiny_model("llama", torch.float64)
    cached = prefixcache.wrap(model, "1MiB")
    prompt = tokens(torch.Generator().manual_seed(4), 12).unsqueeze(0)
    mine = DynamicCache(config=model.config)
    got = cached.generate(prompt, max_new_tokens=3, do_sample=False, **{GENERATE_KEYWORD: mine})
    want = model.generate(prompt, max_new_tokens=3, do_sample=False)
    assert torch.equal(got, want)
    assert mine.get_seq_length() == 14  # the caller's cache was used
    assert cached.cache.stats.cached_tokens == 0


def test_namespaces_do_not_share_kv() -> None:
    model = tiny_model("llama", torch.float64)
    cached = prefixcache.wrap(model, "1MiB")
    prompt = tokens(torch.Generator().manual_seed(4), 12).unsqueeze(0)
    cached.prefill(prompt, namespace="adapter-a")
    assert cached.prefill(prompt, namespace="adapter-b").cached_length == 0
    assert cached.prefill(prompt, namespace="adapter-a").cached_length == 11
    assert cached.prefill(prompt).cached_length == 0


def test_logits_to_keep_returns_the_last_positions() -> None:
    model = tiny_model("llama", torch.float64)
    cached = prefixcache.wrap(model, "1MiB")
    prompt = tokens(torch.Generator().manual_seed(4), 12)
    res = cached.prefill(prompt.unsqueeze(0), logits_to_keep=1)
    assert res.logits.shape == (1, 1, VOCAB)
    assert float((res.logits[0, -1] - uncached_logits(model, prompt)[-1]).abs().max()) <= 1e-10


def test_without_a_mask_padding_is_inferred_as_generate_does() -> None:
    model = tiny_model("llama", torch.float64)  # pad_token_id 0, eos 2
    cached = prefixcache.wrap(model, "1MiB")
    g = torch.Generator().manual_seed(6)
    shared = tokens(g, 10)
    cached.generate(shared.unsqueeze(0), max_new_tokens=1, do_sample=False)
    ids, _ = left_pad([torch.cat([shared, tokens(g, 3)]), tokens(g, 6)])
    assert (ids == 0).any()
    got = cached.generate(inputs=ids, max_new_tokens=4, do_sample=False)
    want = model.generate(inputs=ids, max_new_tokens=4, do_sample=False)
    assert torch.equal(got, want)
    # The batch reuses the length both rows share: at least the 7 positions of the second
    # row's padding, which only an inferred mask lets the first row take from the cache.
    assert cached.cache.stats.hit_tokens >= 7


def test_max_cached_length_computes_the_logits_from_that_position_on() -> None:
    """A multiple-choice scorer needs the logits of the context's last position even when a
    longer prefix is cached: ``max_cached_length`` caps the reuse."""
    model = tiny_model("llama", torch.float64)
    cached = prefixcache.wrap(model, "1MiB")
    g = torch.Generator().manual_seed(8)
    context, choice = tokens(g, 14), tokens(g, 3)
    prompt = torch.cat([context, choice]).unsqueeze(0)
    cached.prefill(prompt)  # the whole prompt is cached now
    res = cached.prefill(prompt, max_cached_length=len(context) - 1)
    assert res.cached_length == len(context) - 1
    want = uncached_logits(model, prompt[0])[len(context) - 1 :]
    assert res.logits.shape[1] == want.shape[0]
    assert float((res.logits[0] - want).abs().max()) <= 1e-10
    assert cached.prefill(prompt, max_cached_length=0).cached_length == 0
    assert cached.prefill(prompt, max_cached_length=100).cached_length == prompt.shape[1] - 1
    with pytest.raises(ValueError, match="max_cached_length"):
        cached.prefill(prompt, max_cached_length=-1)


@pytest.mark.parametrize("model_type", CORE)
def test_a_cache_built_from_kv_is_the_one_its_updates_build(model_type: str) -> None:
    """CacheBuilder fills a DynamicCache's layers directly (a request must not pay for
    ``DynamicCache(config=...)`` each time): what it builds is what ``update`` builds,
    attribute for attribute, and for full-attention models the direct way is taken."""
    config = config_for(model_type)
    builder = CacheBuilder(config)
    reference = DynamicCache(config=config)
    g = torch.Generator().manual_seed(0)
    kv = [(torch.randn(1, 2, 5, 8, generator=g), torch.randn(1, 2, 5, 8, generator=g)) for _ in reference.layers]
    for i, (keys, values) in enumerate(kv):
        reference.update(keys, values, i)
    built = builder.filled(kv)
    assert builder._direct, f"{model_type}: the direct way was not taken; every request builds its cache the slow way"
    assert len(built.layers) == len(reference.layers)
    for ours, theirs in zip(built.layers, reference.layers, strict=True):
        assert type(ours) is type(theirs)
        assert set(vars(ours)) == set(vars(theirs)), "the layer differs from the one update() sets up"
        assert torch.equal(ours.keys, theirs.keys) and torch.equal(ours.values, theirs.values)
    assert built.get_seq_length() == reference.get_seq_length() == 5


@pytest.mark.parametrize("shape", ["llama", "qwen3_5", "gemma3"])
def test_a_padded_batch_counts_the_hits_it_reused(shape: str) -> None:
    """A row of a padded batch reuses only the cached length every row shares: stats.hit_tokens
    counts that, not each row's own match. A recurrent or window model's row that cannot be
    cut there is computed alone up to it first, and counts only what it took from the cache."""
    model = layer_kinds.build(shape) if shape != "llama" else tiny_model("llama")
    cached = prefixcache.wrap(model, "1MiB")
    a = layer_kinds.tokens(model, 1, 40) if shape != "llama" else torch.arange(3, 43)
    b = layer_kinds.tokens(model, 2, 28) if shape != "llama" else torch.arange(50, 78)
    cached.prefill(a[None, :33])
    cached.prefill(b[None, :23])
    ids, mask = left_pad([a, b])  # b has 12 padding tokens: the rows' cached lengths meet at 33
    before = cached.cache.stats.hit_tokens
    res = cached.prefill(ids, mask)
    assert res.cached_length == 33
    if shape == "llama":
        assert cached.cache.stats.hit_tokens - before == 33 + 21  # b's 23 cached, cut where the rows meet
    else:
        # b's state or window is kept at 23 (where its prefill ended) and 22, not at 21: it is
        # computed alone from its start up to 21, where the batch then reuses it.
        assert cached.cache.stats.hit_tokens - before == 33
        assert cached.prefill(b[None, :22]).cached_length == 21  # kept there now
    with torch.no_grad():
        want = model(ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0)).logits[:, 33:]
    assert layer_kinds.close(res.logits, want)
