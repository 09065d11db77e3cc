"""Weights that change after ``wrap`` (a fine-tuning step): nothing computed before is served,
and what is computed after is saved and shared under the new weights' fingerprint only."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import prefixcache
from prefixcache.persist import model_fingerprint

from .hooked_model import greedy, logits, own_llama
from .redis_server import RedisServer
from .tiny_models import VOCAB

CHUNK = 8


def prompt(seed: int, n: int = 30) -> torch.Tensor:
    return torch.randint(3, VOCAB, (1, n), generator=torch.Generator().manual_seed(seed))


def train_step(model: torch.nn.Module) -> None:
    """One optimizer step, as a fine-tuning loop takes it."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    loss = model(prompt(99), labels=prompt(99)).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    model.eval()


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as s:
        yield s


@pytest.mark.parametrize(
    "change",
    ["optimizer step", "load_state_dict", "in-place add", "new parameter", "data write and weights_changed()"],
)
def test_after_a_change_of_weights_only_the_new_weights_kv_is_served(change: str) -> None:
    model = own_llama(seed=1)
    cached = prefixcache.wrap(model, "1MiB")
    ids = prompt(1)
    cached.generate(ids, max_new_tokens=2, do_sample=False)
    before = model_fingerprint(model)
    if change == "optimizer step":
        train_step(model)
    with torch.no_grad():
        if change == "load_state_dict":
            other = own_llama(seed=2)
            model.load_state_dict(other.state_dict())
        elif change == "in-place add":
            model.model.layers[0].self_attn.k_proj.weight.add_(0.5)
        elif change == "new parameter":
            proj = model.model.layers[0].self_attn.k_proj
            proj.weight = torch.nn.Parameter(proj.weight * 2)
        elif change != "optimizer step":
            model.model.layers[0].self_attn.k_proj.weight.data.mul_(2)
            assert cached.weights_changed() > 0
    assert model_fingerprint(model) != before, "the change did not change the weights"
    hits = cached.cache.stats.hit_tokens
    got = cached.generate(ids, max_new_tokens=4, do_sample=False)
    assert torch.equal(got, greedy(model, ids, 4))
    assert cached.cache.stats.hit_tokens == hits, "KV of the old weights was served"
    res = cached.prefill(ids)  # what the new weights computed is reused
    assert res.cached_length > 0
    assert float((res.logits - logits(model, ids)[:, res.cached_length :]).abs().max()) <= 1e-10
    assert cached.cache.fingerprint == model_fingerprint(model)
    cached.cache._check()


def test_a_saved_file_carries_the_fingerprint_of_the_weights_that_computed_it(tmp_path: Path) -> None:
    original = own_llama(seed=1)
    tuned = copy.deepcopy(original)
    cached = prefixcache.wrap(tuned, "1MiB")
    cached.generate(prompt(1), max_new_tokens=2, do_sample=False)
    train_step(tuned)
    cached.generate(prompt(2), max_new_tokens=2, do_sample=False)  # computed with the new weights
    path = tmp_path / "cache.safetensors"
    cached.cache.save(path)
    with pytest.raises(ValueError, match="another model"):
        prefixcache.wrap(original, "1MiB", load=path)
    again = prefixcache.wrap(copy.deepcopy(tuned), "1MiB", load=path)
    ids = prompt(2)
    res = again.prefill(ids)
    assert res.cached_length > 0
    assert float((res.logits - logits(tuned, ids)[:, res.cached_length :]).abs().max()) <= 1e-10


def test_kv_computed_after_a_change_is_not_shared_with_the_original_weights(server: RedisServer) -> None:
    original = own_llama(seed=1)
    tuned = copy.deepcopy(original)
    publisher = prefixcache.wrap(tuned, "1MiB", remote=server.url, remote_chunk_tokens=CHUNK)
    train_step(tuned)
    ids = prompt(3, 40)
    publisher.generate(ids, max_new_tokens=2, do_sample=False)
    publisher.close()
    assert publisher.cache.stats.remote_bytes_written > 0

    reader = prefixcache.wrap(original, "1MiB", remote=server.url, remote_chunk_tokens=CHUNK)
    got = reader.generate(ids, max_new_tokens=4, do_sample=False)
    assert torch.equal(got, greedy(original, ids, 4))
    assert reader.cache.stats.remote_hit_tokens == 0
    reader.close()

    same = prefixcache.wrap(copy.deepcopy(tuned), "1MiB", remote=server.url, remote_chunk_tokens=CHUNK)
    got = same.generate(ids, max_new_tokens=4, do_sample=False)
    assert torch.equal(got, greedy(tuned, ids, 4))
    assert same.cache.stats.remote_hit_tokens >= 4 * CHUNK
    same.close()
