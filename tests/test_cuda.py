"""The paths only a GPU takes: pools on CUDA, page-locked host tiers, copies both ways.

These run where CUDA is available (they are skipped elsewhere: the CPU suite covers
the same logic with the pools in host memory). Every output is checked against the
uncached model and every gathered KV against the fake KV of its tokens, after
demotions and promotions through page-locked memory, int8 packing, a resize, a
save and load, and threads sharing one cache.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import pytest
import torch

import prefixcache
from prefixcache import PrefixCache

from .fake_kv import LAYERS, fake_kv
from .hooked_model import TOKEN_BYTES as MODEL_TOKEN_BYTES
from .hooked_model import own_llama
from .tiny_models import VOCAB

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA paths need a CUDA device")

CUDA = torch.device("cuda")
TOKEN_BYTES = 72  # fake_kv's layers in float64


def kv_on_cuda(tokens: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(k.to(CUDA), v.to(CUDA)) for k, v in fake_kv(tokens)]


def same_kv(got: list[tuple[torch.Tensor, torch.Tensor]], tokens: list[int]) -> bool:
    want = fake_kv(tokens)
    return all(
        torch.equal(gk.cpu(), wk) and torch.equal(gv.cpu(), wv) for (gk, gv), (wk, wv) in zip(got, want, strict=True)
    )


def test_a_cuda_pool_round_trips_kv_through_a_page_locked_host_tier() -> None:
    c = PrefixCache(LAYERS, TOKEN_BYTES * 8, device=CUDA, dtype=torch.float64, host_budget=TOKEN_BYTES * 40)
    assert c.host_pool is not None and c.host_pool.pin_memory
    rng = random.Random(0)
    seqs = [[rng.randrange(0, 50) for _ in range(rng.randint(2, 8))] for _ in range(40)]
    for i, seq in enumerate(seqs):
        c.insert(seq, kv_on_cuda(seq))
        for back in seqs[max(0, i - 3) : i + 1]:  # recent ones come back from the host
            with c.match(back) as hit:
                assert same_kv(c.gather(hit), back[: hit.length])
        c._check()
    s = c.stats
    assert s.demoted_tokens > 0 and s.promoted_tokens > 0


def test_an_int8_host_tier_from_a_cuda_pool_stays_close() -> None:
    c = PrefixCache(
        LAYERS, TOKEN_BYTES * 6, device=CUDA, dtype=torch.float64, host_budget=96 * 20, host_dtype=torch.int8
    )
    a, b = [1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]
    c.insert(a, kv_on_cuda(a))
    c.insert(b, kv_on_cuda(b))  # a goes to the int8 host tier
    with c.match(a) as hit:
        got = c.gather(hit)
    for (gk, gv), (wk, wv) in zip(got, fake_kv(a), strict=True):
        for g, w in ((gk.cpu(), wk), (gv.cpu(), wv)):
            scale = w.abs().amax(dim=-1, keepdim=True)
            assert float(((g - w).abs() / scale).max()) <= 0.5 / 127 + 1e-12
    c._check()


def test_resize_and_a_save_round_trip_keep_cuda_kv(tmp_path: Path) -> None:
    c = PrefixCache(LAYERS, TOKEN_BYTES * 32, device=CUDA, dtype=torch.float64, fingerprint="f" * 64)
    seqs: list[tuple[Hashable, list[int]]] = [(None, [1, 2, 3, 4]), (None, [1, 2, 9]), ("t", [5, 6, 7])]
    for ns, seq in seqs:
        c.insert(seq, kv_on_cuda(seq), namespace=ns)
    held = c.match([1, 2, 3, 4])  # a hit's slots are renumbered by the resize under it
    c.resize(TOKEN_BYTES * 16)
    assert same_kv(c.gather(held), [1, 2, 3, 4])
    held.release()
    c.save(tmp_path / "cache.safetensors")
    other = PrefixCache(LAYERS, TOKEN_BYTES * 32, device=CUDA, dtype=torch.float64, fingerprint="f" * 64)
    assert other.load(tmp_path / "cache.safetensors") == c.tree.size
    for ns, seq in seqs:
        with other.match(seq, namespace=ns) as hit:
            assert hit.length == len(seq) and same_kv(other.gather(hit), seq)
    other._check()


def cuda_llama() -> Any:
    return own_llama(seed=4).to(CUDA)


def stream(seed: int) -> list[torch.Tensor]:
    rng = random.Random(seed)
    system = [rng.randrange(3, VOCAB) for _ in range(24)]
    return [
        torch.tensor([system + [rng.randrange(3, VOCAB) for _ in range(rng.randint(2, 9))]], device=CUDA)
        for _ in range(8)
    ]


def test_generate_prefill_and_batches_on_cuda_match_the_uncached_model() -> None:
    model = cuda_llama()
    cached = prefixcache.wrap(model, MODEL_TOKEN_BYTES * 60, host_budget=MODEL_TOKEN_BYTES * 400)
    for prompt in stream(0) * 2:
        got = cached.generate(prompt, max_new_tokens=4, do_sample=False)
        assert torch.equal(got, model.generate(prompt, max_new_tokens=4, do_sample=False))
        res = cached.prefill(prompt)
        with torch.no_grad():
            want = model(prompt).logits[:, res.cached_length :]
        assert float((res.logits - want).abs().max()) <= 1e-10
    rows = stream(1)[:3]
    width = max(r.shape[1] for r in rows)
    ids = torch.zeros(3, width, dtype=torch.long, device=CUDA)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - r.shape[1] :] = r[0]
        mask[i, width - r.shape[1] :] = 1
    got = cached.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    assert torch.equal(got, model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False))
    s = cached.cache.stats
    assert s.hit_tokens > 0 and s.demoted_tokens > 0 and s.promoted_tokens > 0
    cached.cache._check()


def test_threads_share_a_cuda_cache() -> None:
    model = cuda_llama()
    cached = prefixcache.wrap(model, MODEL_TOKEN_BYTES * 200, check=False)
    prompts = stream(2)
    want = [model.generate(p, max_new_tokens=2, do_sample=False) for p in prompts]
    got: list[Any] = [None] * len(prompts)

    def worker(i: int) -> None:
        for _ in range(3):
            got[i] = cached.generate(prompts[i], max_new_tokens=2, do_sample=False)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    assert cached.cache.stats.pinned_tokens == 0
    cached.cache._check()
