"""The device, host and remote tiers together, against a real redis-server.

The KV is fake_kv's (each position's value a function of the tokens up to it), so a
gathered prefix that holds a wrong row, a row of another token or a stale slot shows
as a wrong value. The stress test runs threads of requests beside resizes, clears and
user pins, seeded, and checks every gathered prefix and the cache's own invariants.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import torch

import prefixcache
from prefixcache import PrefixCache
from prefixcache.tree import HOST

from .fake_kv import LAYERS, assert_kv_is, fake_kv
from .hooked_model import TOKEN_BYTES as MODEL_TOKEN_BYTES
from .hooked_model import greedy, own_llama
from .redis_server import RedisServer
from .tiny_models import VOCAB

TOKEN_BYTES = 72  # fake_kv's layers in float64
CHUNK = 8


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as s:
        yield s


def tiered(url: str, device_tokens: int, host_tokens: int, **options: Any) -> PrefixCache:
    return PrefixCache(
        LAYERS,
        TOKEN_BYTES * device_tokens,
        dtype=torch.float64,
        host_budget=TOKEN_BYTES * host_tokens,
        remote=url,
        remote_chunk_tokens=CHUNK,
        fingerprint="fake-model",
        **options,
    )


def test_a_remote_fetch_after_the_host_part_came_back_gathers_the_right_rows(server: RedisServer) -> None:
    """The remote fetch runs outside the lock; meanwhile the device got room, so storing the
    fetched rows first brings the host part of the path back to new device slots. The hit
    must then hold those new slots, not the host slots the path had before."""
    sequence = list(range(100, 164))
    # Another process put the whole sequence in Redis.
    publisher = tiered(server.url, 128, 128)
    publisher.insert(sequence, fake_kv(sequence))
    publisher.close()

    cache = tiered(server.url, 48, 128)
    cache.insert(sequence[:40], fake_kv(sequence[:40]))
    cache.match(sequence[:16]).release()  # split the path at 16
    cache.evict(1)  # the tail [16, 40) moves to the host tier
    other = list(range(300, 332))
    cache.insert(other, fake_kv(other))
    held = cache.match(other)  # the device is now full of pinned KV: the host part cannot come back
    assert cache.stats.cached_tokens == 48 and cache.stats.host_cached_tokens == 24

    remote = cache.remote
    assert remote is not None
    fetch = remote.fetch

    def fetch_then_free(*args: Any, **kwargs: Any) -> Any:
        held.release()  # another request ends while this one waits on Redis
        return fetch(*args, **kwargs)

    remote.fetch = fetch_then_free  # type: ignore[method-assign]
    with cache.match(sequence, max_length=63) as hit:
        assert hit.length > 40, "the remote tier did not extend the hit"
        assert_kv_is(cache.gather(hit), sequence[: hit.length])
    cache._check()
    cache.close()


def test_threads_resizes_and_clears_over_three_tiers_serve_only_exact_kv(server: RedisServer) -> None:
    rng = random.Random(7)
    headers = [[rng.randrange(1000) for _ in range(rng.randint(10, 40))] for _ in range(6)]
    cache = tiered(server.url, 96, 192)
    errors: list[BaseException] = []
    stop = threading.Event()

    def client(seed: int) -> None:
        r = random.Random(seed)
        try:
            for _ in range(150):
                header = r.choice(headers)
                tokens = header + [r.randrange(1000) for _ in range(r.randint(1, 30))]
                namespace = r.choice([None, "tenant"])
                with cache.match(tokens, namespace=namespace, max_length=len(tokens) - 1) as hit:
                    assert_kv_is(cache.gather(hit), tokens[: hit.length])
                    cache.insert(tokens, fake_kv(tokens), hit=hit)
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    def admin() -> None:
        r = random.Random(99)
        try:
            while not stop.is_set():
                action = r.random()
                if action < 0.4:
                    # Refused, unchanged, when requests in flight hold more than the new budget pinned.
                    with contextlib.suppress(ValueError):
                        cache.resize(TOKEN_BYTES * r.randint(64, 160), TOKEN_BYTES * r.randint(32, 256))
                elif action < 0.55:
                    cache.clear()
                elif action < 0.8:
                    cache.evict(r.randint(1, 40))
                else:
                    header = r.choice(headers)
                    if cache.cached_length(header) == len(header):
                        try:
                            cache.pin(header)
                        except ValueError:  # not cached any more, or no room beside the other pins
                            continue
                        cache.unpin(header)
                stop.wait(0.002)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(6)]
    keeper = threading.Thread(target=admin)
    for thread in [*threads, keeper]:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    keeper.join()
    assert not errors, errors[0]
    cache._check()
    stats = cache.stats
    assert stats.remote_hit_tokens > 0 and stats.host_hit_tokens > 0, "the run did not exercise every tier"
    assert any(node.tier == HOST for node in cache.tree.iter_nodes()) or stats.demoted_tokens > 0
    cache.close()


def test_a_model_served_through_three_tiers_by_threads_gives_its_own_outputs(server: RedisServer) -> None:
    model = own_llama(seed=3)
    rng = random.Random(11)
    headers = [[rng.randrange(3, VOCAB) for _ in range(rng.randint(20, 40))] for _ in range(4)]
    prompts = [torch.tensor([h + [rng.randrange(3, VOCAB) for _ in range(rng.randint(1, 8))]]) for h in headers * 5]
    want = [greedy(model, p, 3) for p in prompts]
    budget = MODEL_TOKEN_BYTES * 64
    cached = prefixcache.wrap(
        model, budget, host_budget=budget * 2, remote=server.url, remote_chunk_tokens=CHUNK, check=False
    )
    wrong: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def client(seed: int) -> None:
        r = random.Random(seed)
        try:
            for _ in range(12):
                i = r.randrange(len(prompts))
                if not torch.equal(cached.generate(prompts[i], max_new_tokens=3, do_sample=False), want[i]):
                    wrong.append(i)
        except BaseException as err:
            errors.append(err)

    def admin() -> None:
        r = random.Random(5)
        while not stop.is_set():
            with contextlib.suppress(ValueError):
                cached.cache.resize(MODEL_TOKEN_BYTES * r.randint(48, 96), MODEL_TOKEN_BYTES * r.randint(32, 160))
            if r.random() < 0.3:
                cached.cache.clear()
            stop.wait(0.01)

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(3)]
    keeper = threading.Thread(target=admin)
    for thread in [*threads, keeper]:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    keeper.join()
    assert not errors, errors[0]
    assert wrong == []
    cached.cache._check()
    assert cached.cache.stats.hit_tokens > 0
    cached.close()
