"""Models whose positions, masks, attention or own cache differ from Llama's: the cache gives
their own outputs or refuses them, for the reason it names (tests/test_architectures.py
checks every architecture; these are the cases that once went wrong, one by one)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

import prefixcache
from prefixcache import UnsupportedModelError
from prefixcache.hf.batch import left_pad

from .architectures import build, ordinary_ids, tiny_config

TOLERANCE = 1e-9


def ids_of(model: Any, seed: int, n: int) -> torch.Tensor:
    ordinary = torch.tensor(ordinary_ids(model.config))
    return ordinary[torch.randint(len(ordinary), (n,), generator=torch.Generator().manual_seed(seed))]


def close(got: torch.Tensor, want: torch.Tensor) -> bool:
    return float((got.double() - want.double()).abs().max()) <= TOLERANCE * (1 + float(want.abs().max()))


@pytest.mark.parametrize("model_type", ["bart", "whisper", "pegasus"])
def test_a_padded_row_of_a_model_whose_positions_count_the_padding_reuses_and_stores_nothing(
    model_type: str,
) -> None:
    """Learned absolute positions that take no position ids: a row's tokens sit further on in
    a padded batch, so KV cached from the row alone would be at the wrong positions."""
    model, _ = build(model_type)
    cached = prefixcache.wrap(model, "4MiB")
    long, short = ids_of(model, 1, 30), ids_of(model, 2, 14)
    cached.prefill(short[None])  # the short row alone, at positions 0..13
    ids, mask = left_pad([long, short], 0)
    res = cached.prefill(ids, mask)
    with torch.no_grad():
        want = model(ids, attention_mask=mask).logits[:, res.cached_length :]
    assert close(res.logits[1, 16 - res.cached_length :], want[1, 16 - res.cached_length :])
    assert close(res.logits, want)
    # and the padded row's KV, computed at positions 16.., was not stored as the row's own
    alone = cached.prefill(short[None])
    with torch.no_grad():
        assert close(alone.logits, model(short[None]).logits[:, alone.cached_length :])


@pytest.mark.parametrize("model_type", ["roberta", "xlm-roberta", "camembert"])
def test_prefill_of_a_model_that_numbers_positions_its_own_way_is_its_forward(model_type: str) -> None:
    """RoBERTa's family numbers a forward's positions from padding_idx + 1, generate from 0."""
    model, _ = build(model_type)
    cached = prefixcache.wrap(model, "4MiB")
    ids = ids_of(model, 3, 20)[None]
    with torch.no_grad():
        want = model(ids).logits
    res = cached.prefill(ids)  # nothing cached yet
    assert res.cached_length == 0 and close(res.logits, want)
    res = cached.prefill(ids)
    assert res.cached_length == 19 and close(res.logits, want[:, 19:])
    got = cached.generate(ids, max_new_tokens=3, do_sample=False)
    assert torch.equal(got, model.generate(ids, max_new_tokens=3, do_sample=False))


def test_doges_dynamic_mask_attention_is_refused() -> None:
    """It keeps the top keep_window_size keys among all of a sequence's, later ones included."""
    model, _ = build("doge")
    with pytest.raises(UnsupportedModelError, match="keep_window_size"):
        prefixcache.wrap(model, "4MiB")


def test_a_model_whose_generate_differs_when_handed_a_cache_is_refused() -> None:
    """MPT with its default use_cache=False, in float32: generate handed an empty DynamicCache
    grows it wrongly; the split check of forward passes alone does not see it."""
    config = tiny_config("mpt")
    config.use_cache = False
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with pytest.raises(UnsupportedModelError, match="generate handed an empty DynamicCache"):
        prefixcache.wrap(model, "4MiB")


@pytest.mark.parametrize("model_type", ["solar_open", "dots1", "glm4_moe"])
def test_a_float64_model_with_float32_parts_is_held_to_its_own_rounding(model_type: str) -> None:
    """MoE routing in float32 inside a float64 model: the split check allows the model's own
    noise (a padded run of the prompt against the prompt alone), not a fixed 1e-9."""
    model, dtype = build(model_type)
    assert dtype == torch.float64
    cached = prefixcache.wrap(model, "4MiB")
    ids = ids_of(model, 4, 24)[None]
    cached.prefill(ids[:, :16])
    got = cached.generate(ids, max_new_tokens=3, do_sample=False)
    assert torch.equal(got, model.generate(ids, max_new_tokens=3, do_sample=False))
