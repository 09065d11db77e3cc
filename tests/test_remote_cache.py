"""The remote tier in a cached model's requests, against a real redis-server.

Every request's output is checked against the uncached model (float64 tiny Llama);
what is claimed of the remote tier (hits, refusals, errors) is read from the
cache's stats.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import torch

import prefixcache
from prefixcache import CachedModel

from .hooked_model import greedy, own_llama
from .redis_server import RedisServer
from .tiny_models import VOCAB

CHUNK = 16


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as s:
        yield s


def prompts(seed: int, n: int = 4, shared: int = 3 * CHUNK + 5) -> list[torch.Tensor]:
    rng = random.Random(seed)
    header = [rng.randrange(3, VOCAB) for _ in range(shared)]
    return [torch.tensor([header + [rng.randrange(3, VOCAB) for _ in range(rng.randint(4, 20))]]) for _ in range(n)]


def wrapped(url: str, **options: Any) -> CachedModel:
    options = {"remote_chunk_tokens": CHUNK, **options}
    return prefixcache.wrap(own_llama(seed=5), "1MiB", remote=url, check=False, **options)


def serve_and_check(cached: CachedModel, ids: list[torch.Tensor], namespace: Any = None) -> None:
    for prompt in ids:
        got = cached.generate(prompt, max_new_tokens=3, do_sample=False, namespace=namespace)
        assert torch.equal(got, greedy(cached.model, prompt, 3)), "a remote hit changed the output"
    cached.cache._check()


def test_a_second_cache_hits_what_the_first_stored(server: RedisServer) -> None:
    ids = prompts(0)
    first = wrapped(server.url)
    serve_and_check(first, ids)
    first.close()
    assert first.cache.stats.remote_bytes_written > 0
    second = wrapped(server.url)  # a cold cache, as after a restart or in a replica
    serve_and_check(second, ids)
    s = second.cache.stats
    # The first request finds the shared header's complete chunks; later ones hit locally.
    assert s.remote_hit_tokens >= 3 * CHUNK
    assert s.remote_errors == 0 and s.remote_invalid_chunks == 0


SECOND_PROCESS = """
import json, sys, random
import torch
import prefixcache
from tests.hooked_model import greedy, own_llama
from tests.test_remote_cache import prompts, wrapped
cached = wrapped(sys.argv[1])
same = True
for prompt in prompts(int(sys.argv[2])):
    got = cached.generate(prompt, max_new_tokens=3, do_sample=False)
    same &= torch.equal(got, greedy(cached.model, prompt, 3))
cached.close()
print(json.dumps({"same": bool(same), **cached.cache.stats.as_dict()}))
"""


def run_process(url: str, seed: int) -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", SECOND_PROCESS, url, str(seed)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_two_processes_share_through_one_server(server: RedisServer) -> None:
    first = run_process(server.url, seed=1)
    second = run_process(server.url, seed=1)
    assert first["same"] and second["same"], "outputs differ from the uncached model's"
    assert first["remote_hit_tokens"] == 0 and first["remote_bytes_written"] > 0
    assert second["remote_hit_tokens"] >= 3 * CHUNK
    assert second["remote_errors"] == 0


def test_a_flipped_byte_ends_the_hit_and_is_counted(server: RedisServer) -> None:
    ids = prompts(2)
    first = wrapped(server.url)
    serve_and_check(first, ids[:1])
    first.close()
    client = redis.Redis.from_url(server.url)
    keys = sorted(client.keys("prefixcache:kv:*"))
    assert keys
    for key in keys:  # damage every stored chunk: none may be served
        value = bytearray(client.get(key))
        value[len(value) // 2] ^= 0x01
        client.set(key, bytes(value))
    second = wrapped(server.url)
    serve_and_check(second, ids[:1])
    s = second.cache.stats
    assert s.remote_hit_tokens == 0 and s.remote_invalid_chunks >= 1


def test_the_server_killed_mid_run_costs_nothing_but_the_hits(server: RedisServer) -> None:
    ids = prompts(3, n=6)
    cached = wrapped(server.url)
    serve_and_check(cached, ids[:2])
    server.kill()
    other = wrapped(server.url)  # a cold cache whose every request asks the dead server
    serve_and_check(other, ids)
    assert other.cache.stats.remote_errors >= 1
    server.start()
    serve_and_check(cached, ids[2:])
    other.close(timeout=1.0)
    cached.close(timeout=1.0)


def test_a_server_too_small_for_the_working_set_serves_valid_prefixes_only() -> None:
    with RedisServer(maxmemory="1mb") as server:
        cached = wrapped(server.url)
        for seed in range(6):  # far more than 1 MB of chunks: Redis evicts its own keys
            serve_and_check(cached, prompts(10 + seed, n=3, shared=8 * CHUNK))
        cached.close()
        fresh = wrapped(server.url)
        serve_and_check(fresh, prompts(15, n=3, shared=8 * CHUNK))
        s = fresh.cache.stats
        assert s.remote_invalid_chunks == 0


def test_namespaces_never_read_each_other(server: RedisServer) -> None:
    ids = prompts(4)
    first = wrapped(server.url)
    serve_and_check(first, ids, namespace="tenant-a")
    first.close()
    second = wrapped(server.url)
    serve_and_check(second, ids, namespace="tenant-b")
    assert second.cache.stats.remote_hit_tokens == 0
    serve_and_check(second, ids, namespace="tenant-a")
    assert second.cache.stats.remote_hit_tokens >= 3 * CHUNK


def test_a_bad_remote_url_is_refused_before_any_work() -> None:
    with pytest.raises(ValueError, match="remote"):
        prefixcache.wrap(own_llama(), "1MiB", remote="http://localhost:6379")
    with pytest.raises(ValueError, match="remote_chunk_tokens"):
        prefixcache.wrap(own_llama(), "1MiB", remote="redis://127.0.0.1:1", remote_chunk_tokens=0)
