"""PrefixCache: hits, inserts under a budget, pins, stats, resize, bad input."""

from __future__ import annotations

import pytest
import torch

from prefixcache import PrefixCache
from prefixcache.arguments import as_tokens

from .fake_kv import LAYERS, assert_kv_is, fake_kv

TOKEN_BYTES = 72  # fake_kv's layers in float64


def make_cache(tokens: int) -> PrefixCache:
    return PrefixCache(LAYERS, TOKEN_BYTES * tokens, dtype=torch.float64)


def test_a_request_round_trip() -> None:
    cache = make_cache(64)
    prompt = [1, 2, 3, 4, 5]
    with cache.match(prompt, max_length=len(prompt) - 1) as hit:
        assert hit.length == 0
    assert cache.insert(prompt, fake_kv(prompt)) == 5
    longer = [*prompt, 6, 7]
    with cache.match(longer, max_length=len(longer) - 1) as hit:
        assert hit.length == 5
        assert_kv_is(cache.gather(hit), prompt)
        assert cache.insert(longer, fake_kv(longer)) == 2
    s = cache.stats
    assert (s.requests, s.prompt_tokens, s.hit_tokens, s.inserted_tokens) == (2, 12, 5, 7)
    assert s.hit_rate == pytest.approx(5 / 12)
    assert s.cached_tokens == 7 and s.bytes_used == 7 * TOKEN_BYTES and s.pinned_tokens == 0
    assert s.as_dict()["hit_rate"] == s.hit_rate
    cache._check()


def test_max_length_leaves_tokens_uncached() -> None:
    cache = make_cache(16)
    cache.insert([1, 2, 3], fake_kv([1, 2, 3]))
    with cache.match([1, 2, 3], max_length=2) as hit:
        assert hit.length == 2
    with cache.match([1, 2, 3], max_length=0) as hit:
        assert hit.length == 0
    with pytest.raises(ValueError, match="max_length"):
        cache.match([1, 2, 3], max_length=-1)


def test_insert_evicts_lru_and_stores_the_longest_prefix_that_fits() -> None:
    cache = make_cache(6)
    cache.insert([1, 1, 1], fake_kv([1, 1, 1]))
    cache.insert([2, 2, 2], fake_kv([2, 2, 2]))
    with cache.match([1, 1, 1]):
        pass  # [2, 2, 2] is now least recently used
    assert cache.insert([3, 3, 3], fake_kv([3, 3, 3])) == 3
    assert cache.match([2, 2, 2]).length == 0
    hit = cache.match([1, 1, 1])  # keep [1, 1, 1] pinned
    seq = [4, 4, 4, 4, 4]
    assert cache.insert(seq, fake_kv(seq)) == 3  # only 3 slots can be freed
    with cache.match(seq) as h:
        assert h.length == 3
        assert_kv_is(cache.gather(h), seq[:3])
    hit.release()
    assert cache.stats.evicted_tokens == 6
    cache._check()


def test_insert_reads_a_row_and_offset_of_a_batch() -> None:
    cache = make_cache(16)
    tokens = [9, 8, 7]
    assert cache.insert(tokens, fake_kv(tokens, batch=2, row=1, offset=3), offset=3, row=1) == 3
    with cache.match(tokens) as hit:
        assert_kv_is(cache.gather(hit), tokens)


def test_a_hit_pins_until_released_and_release_is_idempotent() -> None:
    cache = make_cache(4)
    cache.insert([1, 2, 3, 4], fake_kv([1, 2, 3, 4]))
    hit = cache.match([1, 2, 3, 4])
    assert cache.stats.pinned_tokens == 4 and not hit.released
    assert cache.clear() == 0 and cache.evict(4) == 0
    hit.release()
    hit.release()
    assert hit.released and cache.stats.pinned_tokens == 0
    with pytest.raises(ValueError, match="released"):
        cache.gather(hit)
    assert cache.clear() == 4
    cache._check()


def test_gather_refuses_a_hit_of_another_cache() -> None:
    a, b = make_cache(4), make_cache(4)
    with a.match([1]) as hit, pytest.raises(ValueError, match="another"):
        b.gather(hit)


def test_namespaces_are_separate() -> None:
    cache = make_cache(16)
    cache.insert([1, 2, 3], fake_kv([1, 2, 3]), namespace="tenant-a")
    with cache.match([1, 2, 3], namespace="tenant-b") as hit:
        assert hit.length == 0
    with cache.match([1, 2, 3], namespace="tenant-a") as hit:
        assert hit.length == 3 and hit.namespace == "tenant-a"
    with pytest.raises(TypeError, match="namespace"):
        cache.match([1], namespace=["not", "hashable"])


def test_budget_of_exactly_one_token() -> None:
    cache = make_cache(1)
    assert cache.stats.capacity_tokens == 1
    assert cache.insert([5, 6], fake_kv([5, 6])) == 1
    assert cache.insert([7], fake_kv([7])) == 1  # [5] is evicted for it
    with cache.match([7]) as hit:
        assert hit.length == 1
        assert_kv_is(cache.gather(hit), [7])
    cache._check()


def test_resize_shrinks_by_eviction_never_below_pinned_and_grows() -> None:
    cache = make_cache(10)
    cache.insert([1, 2, 3, 4], fake_kv([1, 2, 3, 4]))
    cache.insert([5, 6, 7], fake_kv([5, 6, 7]))
    hit = cache.match([5, 6, 7])
    with pytest.raises(ValueError, match="pinned"):
        cache.resize(TOKEN_BYTES * 2)
    assert cache.stats.capacity_tokens == 10 and cache.stats.cached_tokens == 7
    cache.resize(TOKEN_BYTES * 3)  # evicts [1, 2, 3, 4], keeps the pinned prefix
    s = cache.stats
    assert s.capacity_tokens == 3 and s.cached_tokens == 3 and s.bytes_reserved == 3 * TOKEN_BYTES
    assert_kv_is(cache.gather(hit), [5, 6, 7])  # moved to new slots, still right
    hit.release()
    cache.resize("1KiB")
    assert cache.stats.capacity_tokens == 1024 // TOKEN_BYTES
    with cache.match([5, 6, 7]) as h:
        assert_kv_is(cache.gather(h), [5, 6, 7])
    cache._check()


def test_bad_input_leaves_the_cache_as_it_was() -> None:
    cache = make_cache(8)
    cache.insert([1, 2, 3], fake_kv([1, 2, 3]))
    before = cache.stats
    for call, exc, name in [
        (lambda: cache.match([1.0, 2.0]), TypeError, "tokens"),
        (lambda: cache.match("abc"), TypeError, "tokens"),
        (lambda: cache.match([-1]), ValueError, "tokens"),
        (lambda: cache.match(torch.zeros(2, 2, dtype=torch.long)), TypeError, "tokens"),
        (lambda: cache.insert([4, 5], fake_kv([4]), namespace=None), ValueError, "kv"),
        (lambda: cache.insert([4, 5], fake_kv([4, 5]), row=1), ValueError, "batch"),
        (lambda: cache.insert([4, 5], fake_kv([4, 5]), offset=-1), ValueError, "offset"),
        (lambda: cache.insert([4, 5], fake_kv([4, 5]), namespace={}), TypeError, "namespace"),
        (lambda: cache.evict(-1), ValueError, "n_tokens"),
        (lambda: cache.resize("lots"), ValueError, "budget"),
        (lambda: cache.resize(0), ValueError, "budget"),
    ]:
        with pytest.raises(exc, match=name):
            call()
        assert cache.stats == before
    cache._check()


def test_as_tokens_accepts_tensors_arrays_and_int_sequences() -> None:
    assert list(as_tokens(torch.tensor([3, 4]))) == [3, 4]
    assert list(as_tokens((5, 6))) == [5, 6]
    with pytest.raises(TypeError, match="bool"):
        as_tokens([True])
    with pytest.raises(ValueError, match="2147483647"):
        as_tokens([2**31])


def test_drop_namespace_forgets_one_namespace_but_what_requests_hold() -> None:
    cache = make_cache(64)
    for namespace in ("a", "b"):
        cache.insert([1, 2, 3, 4], fake_kv([1, 2, 3, 4]), namespace=namespace)
        cache.insert([1, 2, 9, 9, 9], fake_kv([1, 2, 9, 9, 9]), namespace=namespace)
    cache.pin([1, 2, 3, 4], namespace="a")
    held = cache.match([1, 2, 9, 9, 9], namespace="a")  # a request in flight
    assert cache.drop_namespace("a") == 2  # [3, 4]: its user pin is released; [1, 2, 9, 9, 9] is held
    assert cache.stats.user_pinned_tokens == 0
    assert cache.cached_length([1, 2, 3, 4], namespace="a") == 2
    assert cache.cached_length([1, 2, 9, 9, 9], namespace="a") == 5
    held.release()
    assert cache.drop_namespace("a") == 5
    assert cache.cached_length([1, 2, 9, 9, 9], namespace="a") == 0
    assert cache.cached_length([1, 2, 9, 9, 9], namespace="b") == 5  # the other namespace is untouched
    assert cache.drop_namespace("nothing here") == 0
    with pytest.raises(TypeError, match="namespace"):
        cache.drop_namespace(["a"])
    cache._check()


def test_extend_carries_a_hit_on_below_what_its_request_inserted() -> None:
    cache = make_cache(64)
    prompt = list(range(1, 11))
    cache.insert(prompt[:4], fake_kv(prompt[:4]))
    hit = cache.match(prompt)
    assert hit.length == 4 and cache.stats.hit_tokens == 4
    cache.insert(prompt[:8], fake_kv(prompt[:8]), hit=hit)
    for bad in (-1, 2.5):
        with pytest.raises(ValueError, match="max_length"):
            cache.extend(hit, bad)  # type: ignore[arg-type]
    longer = cache.extend(hit, 6)
    assert longer.length == 6 and longer.tokens == hit.tokens
    assert cache.stats.hit_tokens == 4  # counts nothing
    assert cache.extend(longer).length == 8
    for got, want in zip(cache.gather(longer, 6), fake_kv(prompt[:6]), strict=True):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    hit.release()  # they share one pin
    with pytest.raises(ValueError, match="released"):
        cache.extend(longer)
    cache._check()


def test_reused_counts_only_what_the_request_used() -> None:
    cache = make_cache(64)
    prompt = list(range(1, 11))
    cache.insert(prompt, fake_kv(prompt))
    with cache.match(prompt, max_length=9) as hit:
        assert cache.stats.hit_tokens == 9
        for bad in (10, -1, 2.0):
            with pytest.raises(ValueError, match="length: expected an int in"):
                cache.reused(hit, bad)  # type: ignore[arg-type]
        assert cache.stats.hit_tokens == 9
        cache.reused(hit, 4)
        assert cache.stats.hit_tokens == 4
        cache.reused(hit, 6)  # the last word counts, not the sum
        assert cache.stats.hit_tokens == 6
