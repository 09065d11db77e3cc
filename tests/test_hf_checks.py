"""wrap() refuses models it cannot serve exactly; requests refuse bad input and leave the cache alone."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoConfig, AutoModelForCausalLM

import prefixcache
from prefixcache import UnsupportedModelError

from . import layer_kinds
from .tiny_models import VOCAB, config_for, tiny_model


def build(config: Any) -> Any:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float64).eval()


@pytest.mark.parametrize(
    ("model_type", "options"),
    [
        ("gemma2", dict(sliding_window=8)),
        ("mistral", dict(sliding_window=6)),
        ("qwen2", dict(use_sliding_window=True, sliding_window=6, max_window_layers=1)),
    ],
)
def test_sliding_window_models_are_served_exactly(model_type: str, options: dict[str, Any]) -> None:
    """Once refused: each layer now gets what its own cache would hold (see tests/test_windows.py),
    where the installed transformers' window layers can be held; refused by name where not."""
    model = build(config_for(model_type, **options))
    if layer_kinds.unheld(model) is not None:
        with pytest.raises(UnsupportedModelError, match=r"DynamicSlidingWindowLayer .*as this transformers release"):
            prefixcache.wrap(model, "1MiB")
        return
    cached = prefixcache.wrap(model, "1MiB")
    ids = torch.arange(3, 40).unsqueeze(0)
    cached.prefill(ids[:, :20])
    res = cached.prefill(ids)
    assert res.cached_length == 20
    with torch.no_grad():
        want = model(ids).logits[:, 20:]
    assert float((res.logits - want).abs().max()) <= 1e-6 * (1 + float(want.abs().max()))


@pytest.mark.parametrize("shape", sorted(layer_kinds.SHAPES))
def test_a_release_that_cannot_hold_a_layer_refuses_it(shape: str) -> None:
    """Window and state layers are held as transformers 5.25 keeps them; an older release's
    (a window layer that drops what it computes, a state layer kept otherwise) is refused,
    never served: by the layer's name, or earlier, where the model returns no such cache."""
    model = layer_kinds.build(shape, held=False)
    if layer_kinds.unheld(model) is None:
        assert not prefixcache.wrap(model, "1MiB").cache.kinds.plain
    else:
        with pytest.raises(UnsupportedModelError, match=rf"model type '{model.config.model_type}'"):
            prefixcache.wrap(model, "1MiB")


def test_a_recurrent_model_whose_cache_does_not_continue_a_prompt_is_refused() -> None:
    config = AutoConfig.for_model(
        "mamba", vocab_size=VOCAB, hidden_size=16, state_size=4, num_hidden_layers=2, expand=2, conv_kernel=2
    )
    with pytest.raises(UnsupportedModelError, match="mamba"):
        prefixcache.wrap(build(config))


def test_encoder_decoder_model_is_refused() -> None:
    from transformers import AutoModelForSeq2SeqLM

    config = AutoConfig.for_model(
        "t5", vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0
    )
    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLM.from_config(config).eval()
    with pytest.raises(UnsupportedModelError, match="encoder-decoder"):
        prefixcache.wrap(model)


def _attention_without_mask(
    module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any, **kwargs: Any
) -> tuple[torch.Tensor, None]:
    """Attention over every key, earlier or later: registered through transformers' public
    attention interface, so each token's output depends on the tokens after it."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
    weights = torch.softmax((query @ key.transpose(2, 3)) * scaling, dim=-1)
    return (weights @ value).transpose(1, 2).contiguous(), None


def test_a_model_whose_kv_sees_later_tokens_fails_the_split_check() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register("prefixcache_test_bidirectional", _attention_without_mask)
    ALL_MASK_ATTENTION_FUNCTIONS.register("prefixcache_test_bidirectional", ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    model = build(config_for("llama"))
    model.set_attn_implementation("prefixcache_test_bidirectional")
    # The patch must have taken: position 0's logits move when only the last token changes.
    ids = torch.arange(3, 15).unsqueeze(0)
    changed = ids.clone()
    changed[0, -1] = 40
    with torch.no_grad():
        first, second = model(ids).logits[0, 0], model(changed).logits[0, 0]
    assert not torch.allclose(first, second), "the attention function did not make the model bidirectional"
    with pytest.raises(UnsupportedModelError, match="differ from those of the whole prompt"):
        prefixcache.wrap(model)


def test_something_that_is_not_a_model_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="model"):
        prefixcache.wrap(torch.nn.Linear(2, 2))


@pytest.fixture(scope="module")
def cached() -> prefixcache.CachedModel:
    model = tiny_model("llama", torch.float64)
    wrapped = prefixcache.wrap(model, "256KiB")
    wrapped.prefill(torch.arange(3, 23).unsqueeze(0))
    return wrapped


BAD_INPUTS: list[tuple[str, Any, Any, type[Exception], str]] = [
    ("empty", torch.zeros(1, 0, dtype=torch.long), None, ValueError, "empty"),
    ("empty batch", torch.zeros(0, 4, dtype=torch.long), None, ValueError, "empty"),
    ("floats", torch.rand(1, 4), None, TypeError, "int64 or int32"),
    ("3-D", torch.zeros(1, 2, 3, dtype=torch.long), None, ValueError, r"\[batch, seq\]"),
    ("a list", [[1, 2, 3]], None, TypeError, "torch.Tensor"),
    ("negative id", torch.tensor([[3, -1, 4]]), None, ValueError, "vocabulary"),
    ("id = vocab", torch.tensor([[3, VOCAB, 4]]), None, ValueError, "vocabulary"),
    ("mask shape", torch.tensor([[3, 4, 5]]), torch.ones(1, 2, dtype=torch.long), ValueError, "shape"),
    ("mask values", torch.tensor([[3, 4, 5]]), torch.tensor([[0, 2, 1]]), ValueError, "0 or 1"),
    ("float mask", torch.tensor([[3, 4, 5]]), torch.ones(1, 3), TypeError, "attention_mask"),
    ("right padding", torch.tensor([[3, 4, 5]]), torch.tensor([[1, 1, 0]]), ValueError, "right padding"),
    ("hole", torch.tensor([[3, 4, 5, 6]]), torch.tensor([[1, 0, 1, 1]]), ValueError, "hole"),
    ("all padding", torch.tensor([[3, 4], [5, 6]]), torch.tensor([[0, 0], [1, 1]]), ValueError, "all padding"),
    ("other device", torch.tensor([[3, 4, 5]], device="meta"), None, ValueError, "device|on meta"),
]


@pytest.mark.parametrize(("name", "ids", "mask", "exc", "message"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
@pytest.mark.parametrize("entry", ["prefill", "generate"])
def test_bad_input_is_refused_and_the_cache_is_unchanged(
    cached: prefixcache.CachedModel, entry: str, name: str, ids: Any, mask: Any, exc: type[Exception], message: str
) -> None:
    before = cached.cache.stats
    call = getattr(cached, entry)
    kwargs = {"max_new_tokens": 2} if entry == "generate" else {}
    with pytest.raises(exc, match=message):
        call(ids, mask, **kwargs)
    assert cached.cache.stats == before
    cached.cache._check()


@pytest.mark.parametrize("entry", ["prefill", "generate"])
def test_unhashable_namespace_is_refused(cached: prefixcache.CachedModel, entry: str) -> None:
    before = cached.cache.stats
    with pytest.raises(TypeError, match="namespace"):
        getattr(cached, entry)(torch.tensor([[3, 4, 5]]), namespace={"tenant": 1})
    assert cached.cache.stats == before


@settings(max_examples=25, deadline=None)
@given(
    prompts=st.lists(st.lists(st.integers(3, 6), min_size=1, max_size=14), min_size=1, max_size=8),
    budget_tokens=st.integers(4, 40),
    new_tokens=st.integers(1, 3),
)
def test_random_streams_under_eviction_match_the_uncached_model(
    prompts: list[list[int]], budget_tokens: int, new_tokens: int
) -> None:
    """A small vocabulary makes prompts collide; a small budget forces eviction."""
    model = tiny_model("llama", torch.float64)
    token_bytes = 2 * 2 * 2 * 8 * 8  # K and V, 2 layers, 2 kv heads, head_dim 8, float64
    cached = prefixcache.wrap(model, token_bytes * budget_tokens, check=False)
    previous: list[int] | None = None
    for prompt in prompts:
        ids = torch.tensor([prompt])
        hits_before = cached.cache.stats.hit_tokens
        got = cached.generate(ids, max_new_tokens=new_tokens, do_sample=False)
        want = model.generate(ids, max_new_tokens=new_tokens, do_sample=False)
        assert torch.equal(got, want)
        cached.cache._check()
        stats = cached.cache.stats
        assert stats.bytes_used <= stats.bytes_reserved <= token_bytes * budget_tokens
        if prompt == previous and len(prompt) <= budget_tokens:
            # The same prompt just went through and fits: all but its last token hit.
            assert stats.hit_tokens - hits_before == len(prompt) - 1
        previous = prompt
