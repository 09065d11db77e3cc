"""Exact outputs when a token's KV depends on the sequence's length, and runtime verification.

Every test runs in float64 and compares the cached model with a twin built from
the same seed: dynamic NTK keeps state in its rotary module between calls, so past
``max_position_embeddings`` an uncached model's outputs depend on what it ran
before; the twin gets the same calls, uncached.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

import prefixcache
from prefixcache import UnsupportedModelError, VerificationError
from prefixcache.hf.kvcache import GENERATE_KEYWORD

from .tiny_models import VOCAB, config_for

# "type", and no other key: the form Phi-3's config accepted before transformers 5.
LONGROPE = {"type": "longrope", "short_factor": [1.0, 1.1, 1.3, 1.6], "long_factor": [1.0, 2.0, 4.0, 8.0]}
LOGIT_TOLERANCE = 1e-10


@dataclass(frozen=True)
class Case:
    """A tiny configuration and where its regimes of forward lengths end."""

    model_type: str
    config: dict[str, Any]
    bounds: tuple[int, ...] = ()
    """Regimes: lengths [1, b0], [b0 + 1, b1], ..., [b_last + 1, ...)."""
    reuse_below: float = math.inf
    """Requests this long or longer are never served from the cache."""

    def regime(self, length: int) -> int:
        return sum(b < length for b in self.bounds)


CASES = {
    "default": Case("llama", dict(max_position_embeddings=64)),
    "linear": Case("llama", dict(max_position_embeddings=64, rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "llama3": Case(
        "llama",
        dict(
            max_position_embeddings=64,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 4.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        ),
    ),
    "yarn": Case(
        "llama",
        dict(
            max_position_embeddings=64,
            rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "mscale": 0.7},
        ),
    ),
    "proportional": Case(
        "llama",
        dict(max_position_embeddings=64, rope_scaling={"rope_type": "proportional", "partial_rotary_factor": 0.5}),
    ),
    "dynamic": Case(
        "llama",
        dict(max_position_embeddings=32, rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
        bounds=(31,),
        reuse_below=32,
    ),
    "longrope-phi3": Case(
        "phi3",
        dict(max_position_embeddings=128, original_max_position_embeddings=32, rope_scaling=dict(LONGROPE)),
        bounds=(32,),
    ),
    # No top-level original_max_position_embeddings: releases before 5 switched at max_position_embeddings.
    "longrope-llama": Case(
        "llama",
        dict(max_position_embeddings=64, rope_scaling=dict(LONGROPE, factor=2.0, original_max_position_embeddings=24)),
        bounds=(24, 64),
    ),
}
if "proportional" not in ROPE_INIT_FUNCTIONS:  # new in transformers 5
    del CASES["proportional"]


def build(model_type: str, seed: int = 0, **config: Any) -> Any:
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config_for(model_type, **config), dtype=torch.float64).eval()


def _hunyuan_case() -> Case:
    """HunYuan's "dynamic" config with an alpha: fixed NTK scaling where its rotary module
    renames it (transformers 5), dynamic NTK past max_position_embeddings before."""
    config = dict(max_position_embeddings=32, rope_scaling={"rope_type": "dynamic", "factor": 2.0, "alpha": 1000.0})
    if build("hunyuan_v1_dense", **config).model.rotary_emb.rope_type == "ntk_alpha":
        return Case("hunyuan_v1_dense", config)
    return Case("hunyuan_v1_dense", config, bounds=(31,), reuse_below=32)


CASES["hunyuan-alpha"] = _hunyuan_case()


def twins(case: Case) -> tuple[Any, Any]:
    """Two models with the same weights: one to wrap, one to run uncached."""
    return build(case.model_type, **case.config), build(case.model_type, **case.config)


def tokens(generator: torch.Generator, n: int) -> torch.Tensor:
    return torch.randint(3, VOCAB, (n,), generator=generator)


def full_logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids.unsqueeze(0)).logits[0]


def greedy(model: Any, ids: torch.Tensor, new_tokens: int, **kwargs: Any) -> Any:
    """Greedy decoding of exactly ``new_tokens``; the mask is given because replies may hold the pad id."""
    batch = ids.unsqueeze(0)
    return model.generate(
        batch,
        attention_mask=torch.ones_like(batch),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        **kwargs,
    )


@pytest.mark.parametrize("name", list(CASES))
def test_a_conversation_growing_across_the_thresholds_matches_the_uncached_model(name: str) -> None:
    """Each turn generates (the replies cross the thresholds), then prefills the whole
    conversation plus a token; verify=1.0 also runs every reusing request uncached."""
    case = CASES[name]
    model, reference = twins(case)
    cached = prefixcache.wrap(model, "1MiB", verify=1.0, on_mismatch="raise")
    g = torch.Generator().manual_seed(3)
    prompt = tokens(g, 12)
    previous: tuple[int, int] | None = None  # (length stored whole by the last prefill, its regime)
    for turn in range(7):
        stats = cached.cache.stats
        got = greedy(cached, prompt, 8)
        assert torch.equal(got, greedy(reference, prompt, 8)), f"{name}: turn {turn}, {len(prompt)} prompt tokens"
        hit = cached.cache.stats.hit_tokens - stats.hit_tokens
        if len(prompt) >= case.reuse_below:
            assert hit == 0 and cached.cache.stats.passed_through == stats.passed_through + 1
        elif previous is not None and previous[1] == case.regime(len(prompt)):
            assert hit >= previous[0], f"{name}: turn {turn} reused {hit} tokens"
        extended = torch.cat([got[0], tokens(g, 1)])
        res = cached.prefill(extended.unsqueeze(0))
        diff = float((res.logits[0] - full_logits(reference, extended)[res.cached_length :]).abs().max())
        assert diff <= LOGIT_TOLERANCE, f"{name}: turn {turn}, {len(extended)} tokens: logits differ by {diff:.3g}"
        if len(extended) < case.reuse_below:
            previous = (len(got[0]), case.regime(len(extended)))
        prompt = torch.cat([got[0], tokens(g, 6)])
    stats = cached.cache.stats
    assert stats.hit_tokens > 0 and stats.verified > 0 and stats.mismatches == 0
    assert len(prompt) > 64 + 8  # the conversation went past every threshold above


@settings(max_examples=15, deadline=None)
@given(
    name=st.sampled_from(["dynamic", "longrope-phi3", "longrope-llama"]),
    requests=st.lists(
        st.tuples(st.integers(1, 75), st.integers(0, 9), st.booleans()),
        min_size=1,
        max_size=5,
    ),
    seed=st.integers(0, 3),
)
def test_prefixes_of_one_sequence_at_any_lengths_match_the_uncached_model(
    name: str, requests: list[tuple[int, int, bool]], seed: int
) -> None:
    """Prompts are prefixes of one sequence (so they share everything they can), of lengths
    around the thresholds; ``new_tokens == 0`` means a prefill."""
    case = CASES[name]
    cached, reference = _wrapped_twins(name)
    sequence = tokens(torch.Generator().manual_seed(seed), 80)
    for length, new_tokens, batched in requests:
        prompt = sequence[:length]
        if new_tokens:
            if batched:  # a left-padded batch: its longest row sets the regime
                short = sequence[: max(1, length // 2)]
                ids = torch.zeros(2, length, dtype=torch.long)
                mask = torch.zeros_like(ids)
                ids[0], mask[0] = prompt, 1
                ids[1, length - len(short) :], mask[1, length - len(short) :] = short, 1
                kwargs: dict[str, Any] = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
                got = cached.generate(ids, attention_mask=mask, **kwargs)
                assert torch.equal(got, reference.generate(ids, attention_mask=mask, **kwargs))
            else:
                assert torch.equal(greedy(cached, prompt, new_tokens), greedy(reference, prompt, new_tokens))
        else:
            res = cached.prefill(prompt.unsqueeze(0))
            want = full_logits(reference, prompt)[res.cached_length :]
            assert float((res.logits[0] - want).abs().max()) <= LOGIT_TOLERANCE, (name, length)
            if length >= case.reuse_below:
                assert res.cached_length == 0


_TWINS: dict[str, tuple[prefixcache.CachedModel, Any]] = {}


def _wrapped_twins(name: str) -> tuple[prefixcache.CachedModel, Any]:
    """One wrapped model and its twin per case, shared by the examples: they see the same
    calls from the start, so a dynamic rotary module's state stays the same in both."""
    if name not in _TWINS:
        model, reference = twins(CASES[name])
        _TWINS[name] = (prefixcache.wrap(model, "1MiB"), reference)
    return _TWINS[name]


def test_dynamic_stores_nothing_from_max_position_embeddings_on() -> None:
    case = CASES["dynamic"]  # max_position_embeddings 32
    model, reference = twins(case)
    cached = prefixcache.wrap(model, "1MiB")
    sequence = tokens(torch.Generator().manual_seed(1), 60)
    # 20 prompt tokens and 20 generated: positions from 31 on were rotated for a longer sequence.
    assert torch.equal(greedy(cached, sequence[:20], 20), greedy(reference, sequence[:20], 20))
    assert cached.cache.stats.cached_tokens == 31
    # A longer request runs without reuse; then one of exactly 32 tokens, which the rotary
    # module's state (left at 50 by the request before) would rotate otherwise than a cached
    # prefix; then one of 31, which reuses the prompt generated from.
    for length, cached_length in [(50, 0), (32, 0), (31, 20)]:
        res = cached.prefill(sequence[:length].unsqueeze(0))
        want = full_logits(reference, sequence[:length])[res.cached_length :]
        assert float((res.logits[0] - want).abs().max()) <= LOGIT_TOLERANCE
        assert res.cached_length == cached_length
    assert cached.cache.stats.passed_through == 2


def test_longrope_serves_a_prefix_only_on_its_own_side_of_the_threshold() -> None:
    model, reference = twins(CASES["longrope-phi3"])  # original_max_position_embeddings 32
    cached = prefixcache.wrap(model, "1MiB")
    sequence = tokens(torch.Generator().manual_seed(2), 60)
    # 40 finds nothing computed past 32 tokens; 30 and 32 find the 20 and 30 cached before them.
    expected = [(20, 0), (40, 0), (45, 40), (30, 20), (32, 30), (33, 32), (60, 45)]
    for length, cached_length in expected:
        res = cached.prefill(sequence[:length].unsqueeze(0))
        assert res.cached_length == cached_length, length
        want = full_logits(reference, sequence[:length])[cached_length:]
        assert float((res.logits[0] - want).abs().max()) <= LOGIT_TOLERANCE


def test_phi3_generate_across_original_max_position_embeddings() -> None:
    """Phi-3's generate drops a cache of at most 32 tokens once the sequence is longer and
    recomputes it with the long factors: the output is the model's and what is stored is exact."""
    model, reference = twins(CASES["longrope-phi3"])
    cached = prefixcache.wrap(model, "1MiB")
    sequence = tokens(torch.Generator().manual_seed(4), 80)
    cached.generate(sequence[:20].unsqueeze(0), max_new_tokens=2, min_new_tokens=2, do_sample=False)
    # 25 tokens crossing 32 while decoding; then 40 tokens, with 25 of them cached under 32 (not
    # served), then again (served: generate kept a cache already past 32), then 50.
    hits = []
    for length, new_tokens in [(25, 12), (40, 4), (40, 6), (50, 3)]:
        before = cached.cache.stats.hit_tokens
        got = greedy(cached, sequence[:length], new_tokens)
        hits.append(cached.cache.stats.hit_tokens - before)
        assert torch.equal(got, greedy(reference, sequence[:length], new_tokens)), length
        res = cached.prefill(got)
        want = full_logits(reference, got[0])[res.cached_length :]
        assert float((res.logits[0] - want).abs().max()) <= LOGIT_TOLERANCE
    assert hits == [20, 25, 39, 40]


def test_threads_mixing_both_sides_of_the_threshold_get_exact_outputs() -> None:
    """Transformers' LongRoPE writes the frequencies of each forward into a buffer the rotary
    module shares, then reads it: two overlapping forwards can rotate with each other's
    (and the KV stored from them would be wrong), so the wrapper runs them one at a time."""
    model, reference = twins(CASES["longrope-phi3"])
    cached = prefixcache.wrap(model, "1MiB")
    sequence = tokens(torch.Generator().manual_seed(12), 100)
    lengths = [10, 20, 30, 31, 32, 33, 40, 60, 90]
    expected = {n: full_logits(reference, sequence[:n]) for n in lengths}
    wrong: list[tuple[int, int, float]] = []

    def client(offset: int) -> None:
        for i in range(40):
            n = lengths[(7 * i + offset) % len(lengths)]
            res = cached.prefill(sequence[:n].unsqueeze(0))
            diff = float((res.logits[0] - expected[n][res.cached_length :]).abs().max())
            if not diff <= LOGIT_TOLERANCE:
                wrong.append((n, res.cached_length, diff))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
    assert cached.cache.stats.hit_tokens > 0


def test_a_generate_that_drops_the_cache_it_was_given(caplog: pytest.LogCaptureFixture) -> None:
    model, reference = twins(CASES["default"])

    class Dropping(type(model)):  # type: ignore[misc]
        """Like Phi-3's: for every prompt with a partial cache, drop it and recompute it all."""

        dropped = 0

        def prepare_inputs_for_generation(self, input_ids: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            name = GENERATE_KEYWORD
            cache = kwargs.get(name)
            if cache is not None and cache.get_seq_length() + 1 < input_ids.shape[1]:
                kwargs[name] = None
                if "next_sequence_length" in kwargs:
                    kwargs["next_sequence_length"] = None
                type(self).dropped += 1
            return super().prepare_inputs_for_generation(input_ids, *args, **kwargs)

    model.__class__ = Dropping
    # The patch must have taken: a generate handed a partial cache drops it.
    probe = tokens(torch.Generator().manual_seed(6), 12).unsqueeze(0)
    partial = prefixcache.hf.prompt_cache(model, probe[:, :6])
    model.generate(probe, max_new_tokens=1, do_sample=False, **{GENERATE_KEYWORD: partial})
    assert Dropping.dropped == 1, "the subclass's prepare_inputs_for_generation did not drop the cache"
    cached = prefixcache.wrap(model, "1MiB")
    sequence = tokens(torch.Generator().manual_seed(5), 40)
    cached.prefill(sequence[:20].unsqueeze(0))
    stored = cached.cache.stats.inserted_tokens
    with caplog.at_level("WARNING", logger="prefixcache"):
        got = greedy(cached, sequence[:30], 6)
    assert torch.equal(got, greedy(reference, sequence[:30], 6))
    assert cached.cache.stats.hit_tokens == 20
    assert cached.cache.stats.inserted_tokens == stored  # nothing of what generate computed
    assert "did not keep the cache" in caplog.text
    res = cached.prefill(got)
    assert res.cached_length == 20
    assert float((res.logits[0] - full_logits(reference, got[0])[20:]).abs().max()) <= LOGIT_TOLERANCE


@pytest.mark.parametrize(
    ("model_type", "said", "hidden", "threshold"),
    [
        # The config says linear scaling; the rotary module is dynamic NTK.
        (
            "llama",
            dict(max_position_embeddings=32, rope_scaling={"rope_type": "linear", "factor": 1.0}),
            dict(max_position_embeddings=32, rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
            32,
        ),
        # The config says the default rotation; the rotary module is LongRoPE.
        (
            "phi3",
            dict(max_position_embeddings=64, original_max_position_embeddings=24),
            dict(max_position_embeddings=64, original_max_position_embeddings=24, rope_scaling=dict(LONGROPE)),
            24,
        ),
    ],
)
def test_kv_that_depends_on_the_length_unannounced_is_refused_by_the_probe(
    model_type: str, said: dict[str, Any], hidden: dict[str, Any], threshold: int
) -> None:
    honest = build(model_type, **said)
    assert prefixcache.wrap(honest, "1MiB").cache.stats.capacity_tokens > 0
    model = build(model_type, **said)
    rotary = LlamaRotaryEmbedding if model_type == "llama" else Phi3RotaryEmbedding
    model.model.rotary_emb = rotary(config_for(model_type, **hidden))
    with pytest.raises(UnsupportedModelError, match=f"length around {threshold} tokens"):
        prefixcache.wrap(model, "1MiB")
    prefixcache.wrap(model, "1MiB", check=False)  # the numerical check is what refused it


def test_an_unknown_rotary_type_is_refused() -> None:
    model = build("llama", max_position_embeddings=32)
    model.config.rope_parameters = {"rope_type": "spiral", "rope_theta": 10000.0}
    with pytest.raises(UnsupportedModelError, match=r"llama.*'spiral'"):
        prefixcache.wrap(model, "1MiB")


def test_warm_pins_only_what_can_be_cached() -> None:
    model, _ = twins(CASES["dynamic"])
    cached = prefixcache.wrap(model, "1MiB")
    g = torch.Generator().manual_seed(6)
    short, long = tokens(g, 20), tokens(g, 40)
    with pytest.raises(ValueError, match=r"prompts\[1\]: 40 tokens"):
        cached.warm([short, long], pin=True)
    assert cached.cache.stats.cached_tokens == 0  # refused before anything was computed
    assert cached.warm([short, long]) == 20
    assert cached.warm([short], pin=True) == 0
    assert cached.cache.stats.user_pinned_tokens == 20
    assert cached.prefill(torch.cat([short, long[:3]]).unsqueeze(0)).cached_length == 20


# -- verify= -----------------------------------------------------------------------------


def perturb(model: Any) -> None:
    """A change of layer 0's keys that requests cannot see: a write through ``param.data``
    moves no version counter (an optimizer step or an in-place write to the parameter
    itself would make the next request drop the cache; tests/test_weights_change.py)."""
    weight = model.model.layers[0].self_attn.k_proj.weight
    version = weight._version
    weight.data.add_(0.5 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(9), dtype=weight.dtype))
    assert weight._version == version, "the write was seen: verify= would have nothing to catch"


@pytest.mark.parametrize("entry", ["prefill", "generate"])
@pytest.mark.parametrize("action", ["warn", "raise", "clear"])
def test_verify_catches_a_weight_change_after_prefixes_were_cached(
    entry: str, action: str, caplog: pytest.LogCaptureFixture
) -> None:
    model = build("llama")
    cached = prefixcache.wrap(model, "1MiB", verify=1.0, on_mismatch=action)
    g = torch.Generator().manual_seed(7)
    system, question = tokens(g, 20), tokens(g, 6)
    cached.prefill(torch.cat([system, tokens(g, 4)]).unsqueeze(0), namespace="tenant")
    cached.prefill(torch.cat([system, tokens(g, 4)]).unsqueeze(0), namespace="other")
    assert cached.cache.stats.verified == 0  # nothing was reused yet
    prompt = torch.cat([system, question])
    assert torch.equal(greedy(cached, prompt, 3, namespace="tenant"), greedy(model, prompt, 3))
    assert cached.cache.stats.verified == 1 and cached.cache.stats.mismatches == 0
    other_tokens = 24
    perturb(model)

    def request() -> Any:
        if entry == "prefill":
            return cached.prefill(prompt.unsqueeze(0), namespace="tenant")
        return greedy(cached, prompt, 3, namespace="tenant")

    with caplog.at_level("WARNING", logger="prefixcache"):
        if action == "raise":
            with pytest.raises(VerificationError, match=r"namespace 'tenant', prompt lengths \[26\]"):
                request()
        else:
            out = request()
            if entry == "prefill":
                assert out.cached_length == 25
                assert float((out.logits[0] - full_logits(model, prompt)[25:]).abs().max()) <= LOGIT_TOLERANCE
            else:
                assert torch.equal(out, greedy(model, prompt, 3))  # the uncached output
            assert "namespace 'tenant', prompt lengths [26]" in caplog.text
    stats = cached.cache.stats
    assert stats.verified == 2 and stats.mismatches == 1
    if action == "clear":
        assert stats.cached_tokens == other_tokens  # the other namespace is untouched
        res = cached.prefill(prompt.unsqueeze(0), namespace="tenant")
        assert res.cached_length == 0  # recomputed with the new weights, then cached again
        assert cached.prefill(prompt.unsqueeze(0), namespace="tenant").cached_length == 25
        assert cached.cache.stats.mismatches == 1


def test_verify_returns_what_the_caller_asked_for_and_replays_sampling() -> None:
    model = build("llama")
    cached = prefixcache.wrap(model, "1MiB", verify=1.0)
    prompt = tokens(torch.Generator().manual_seed(8), 15).unsqueeze(0)
    cached.generate(prompt, max_new_tokens=1, do_sample=False)
    kwargs: dict[str, Any] = dict(max_new_tokens=4, do_sample=False, return_dict_in_generate=True, output_scores=True)
    got, want = cached.generate(prompt, **kwargs), model.generate(prompt, **kwargs)
    assert type(got) is type(want) and got.logits is None and want.logits is None
    assert torch.equal(got.sequences, want.sequences) and len(got.scores) == len(want.scores) == 4
    logits = cached.generate(prompt, max_new_tokens=2, return_dict_in_generate=True, output_logits=True)
    assert logits.logits is not None and len(logits.logits) == 2
    for seed in range(3):
        torch.manual_seed(seed)
        sampled = cached.generate(prompt, max_new_tokens=8, do_sample=True, top_k=20)
        after = torch.rand(1)
        torch.manual_seed(seed)
        assert torch.equal(sampled, model.generate(prompt, max_new_tokens=8, do_sample=True, top_k=20))
        assert torch.equal(after, torch.rand(1))  # the verification left the random state as the request did
    stats = cached.cache.stats
    assert stats.verified == 5 and stats.mismatches == 0


def test_a_verified_fraction_is_drawn_from_the_seed() -> None:
    model = build("llama")
    prompt = tokens(torch.Generator().manual_seed(10), 12).unsqueeze(0)

    def verified(fraction: float, seed: int) -> int:
        cached = prefixcache.wrap(model, "1MiB", verify=fraction, verify_seed=seed, check=False)
        for _ in range(21):
            cached.prefill(prompt, logits_to_keep=1)
        assert cached.cache.stats.mismatches == 0
        return cached.cache.stats.verified

    assert verified(1.0, 0) == 20  # the first request reuses nothing, so has nothing to verify
    counts = [verified(0.5, 0), verified(0.5, 0)]
    assert counts[0] == counts[1] and 0 < counts[0] < 20


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (dict(verify=-0.1), ValueError, r"verify: expected a fraction of requests from 0 to 1.*-0\.1"),
        (dict(verify=1.5), ValueError, "verify: .*1.5"),
        (dict(verify=math.nan), ValueError, "verify: .*nan"),
        (dict(verify="0.5"), TypeError, "verify: .*'0.5'"),
        (dict(verify=True), TypeError, "verify: .*True"),
        (
            dict(on_mismatch="ignore"),
            ValueError,
            r"on_mismatch: expected one of 'warn', 'raise', 'clear', got 'ignore'",
        ),
        (dict(on_mismatch=None), ValueError, "on_mismatch: .*None"),
        (dict(verify=0.5, verify_seed="x"), TypeError, "verify_seed: expected an int, got 'x'"),
        (dict(verfy=0.5), TypeError, "verfy: no such option; the options are budget, .*verify, on_mismatch"),
    ],
)
def test_bad_verify_options_are_refused(options: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        prefixcache.wrap(build("llama"), "1MiB", **options)
