"""RemoteTier against a real redis-server (tests/redis_server.py): what it serves is exactly what was stored,
and whatever Redis does (evict, lose, damage, stop, stall, refuse) no call raises or hangs."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import torch

from prefixcache.kv import LayerSpec
from prefixcache.remote import RemoteRows, RemoteTier
from prefixcache.remote.chunks import ChunkLayout
from prefixcache.remote.codec import HEADER_SIZE, encode
from prefixcache.remote.keys import KEY_PREFIX, chunk_digests, redis_key, root_digest
from tests.fake_kv import prefix_codes
from tests.redis_server import RedisServer

LAYERS = (LayerSpec(2, 4, 4), LayerSpec(1, 8, 4))  # width 28
WIDTH = 28
C = 8  # tokens per chunk
FP = "fingerprint-of-model-a"
TIMEOUT = 0.3


def kv_rows(tokens: array | list[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Fake KV rows whose row p depends on tokens[0..p] alone (so a shifted or foreign row shows)."""
    codes = torch.tensor(prefix_codes(tokens), dtype=torch.float64)
    rows = (codes % 9973)[:, None] + torch.arange(WIDTH, dtype=torch.float64)[None, :] / 64
    return rows.to(dtype)


def prompt(seed: int, n: int) -> array:
    g = torch.Generator().manual_seed(seed)
    return array("i", torch.randint(0, 50_000, (n,), generator=g).tolist())


def make_tier(server: RedisServer | str, **kw: object) -> RemoteTier:
    args: dict[str, object] = {
        "fingerprint": FP,
        "layers": LAYERS,
        "dtype": torch.float32,
        "chunk_tokens": C,
        "timeout": TIMEOUT,
        "backoff_initial": 0.2,
        "backoff_max": 0.4,
    }
    args.update(kw)
    return RemoteTier(server if isinstance(server, str) else server.url, **args)  # type: ignore[arg-type]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def store(tier: RemoteTier, tokens: array, namespace: object = None, dtype: torch.dtype = torch.float32) -> int:
    """Submit every complete chunk of ``tokens`` and wait until the writer is done with them."""
    before = tier.stats
    queued = tier.submit(namespace, tokens, kv_rows(tokens, dtype))
    wait_for(
        lambda: (
            (s := tier.stats).queued == 0
            and (s.chunks_written + s.chunks_present + s.write_drops)
            - (before.chunks_written + before.chunks_present + before.write_drops)
            >= queued
        )
    )
    return queued


def assert_rows(got: RemoteRows, tokens: array, dtype: torch.dtype = torch.float32) -> None:
    want = kv_rows(tokens, dtype)[got.start : got.stop]
    assert got.rows.dtype == dtype and got.rows.shape == (got.stop - got.start, WIDTH)
    assert torch.equal(got.rows.view(torch.uint8), want.view(torch.uint8)), "rows are not what was stored"


def keys_of(tokens: array, namespace: object = None, layout: ChunkLayout | None = None) -> list[bytes]:
    layout = layout or ChunkLayout(LAYERS, torch.float32, C)
    return [redis_key(d) for d in chunk_digests(root_digest(FP, namespace, layout), tokens, C)]


def calls(client: redis.Redis, command: str) -> int:
    stats = client.info("commandstats").get(f"cmdstat_{command}")
    return int(stats["calls"]) if stats else 0


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as s:
        yield s


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(server.url)
    yield c
    c.close()


@pytest.fixture
def tier(server: RedisServer) -> Iterator[RemoteTier]:
    t = make_tier(server)
    yield t
    t.close()


# -- serving exactly what was stored --------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_trip_is_bit_exact_from_any_local_length(server: RedisServer, dtype: torch.dtype) -> None:
    tokens = prompt(1, 5 * C + 3)
    with make_tier(server, dtype=dtype) as tier:
        assert store(tier, tokens, dtype=dtype) == 5
        assert tier.stats.chunks_written == 5 and tier.stats.errors == 0
        for have in (0, 1, C - 1, C, C + 1, 3 * C + 5, 5 * C - 1):
            got = tier.fetch(None, tokens, have)
            assert got.start == (have // C) * C and got.stop == 5 * C
            assert_rows(got, tokens, dtype)
        # Nothing past the last complete chunk: the local hit is already as long.
        for have in (5 * C, 5 * C + 3):
            assert tier.fetch(None, tokens, have).rows.shape == (0, WIDTH)
        assert tier.stats.hit_tokens == sum(5 * C - h for h in (0, 1, C - 1, C, C + 1, 3 * C + 5, 5 * C - 1))


def test_a_prompt_sharing_a_prefix_gets_the_shared_chunks_only(tier: RemoteTier) -> None:
    a = prompt(2, 4 * C)
    b = array("i", a[: 2 * C + 3]) + prompt(3, 2 * C)  # shares chunks 0 and 1, then differs inside chunk 2
    store(tier, a)
    got = tier.fetch(None, b, 0)
    assert (got.start, got.stop) == (0, 2 * C)
    assert_rows(got, b)
    assert tier.stats.missing_chunks == 1


def test_fetch_stops_at_the_first_missing_chunk(tier: RemoteTier, client: redis.Redis) -> None:
    tokens = prompt(4, 6 * C)
    store(tier, tokens)
    client.delete(keys_of(tokens)[3])
    got = tier.fetch(None, tokens, C)
    assert (got.start, got.stop) == (C, 3 * C)  # chunks 4 and 5 are there but unreachable
    assert_rows(got, tokens)
    assert tier.fetch(None, tokens, 3 * C).rows.shape[0] == 0
    assert tier.fetch(None, tokens, 4 * C).stop == 6 * C  # past the gap, the rest is fine
    assert tier.stats.missing_chunks == 2


def test_one_round_trip_per_batch(server: RedisServer, client: redis.Redis) -> None:
    tokens = prompt(5, 7 * C)
    with make_tier(server, batch_chunks=3) as tier:
        store(tier, tokens)
        before = calls(client, "mget")
        assert tier.fetch(None, tokens, 0).stop == 7 * C
        assert calls(client, "mget") - before == 3  # chunks 0-2, 3-5, 6
        before = calls(client, "mget")
        assert tier.fetch(None, prompt(6, 7 * C), 0).rows.shape[0] == 0
        assert calls(client, "mget") - before == 1  # a miss costs one round trip


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "other_dtype", "other_layout", "other_key", "list"])
def test_a_bad_value_ends_the_run_is_counted_and_is_replaced(
    tier: RemoteTier, client: redis.Redis, damage: str
) -> None:
    tokens = prompt(7, 4 * C)
    store(tier, tokens)
    key = keys_of(tokens)[2]
    value = client.get(key)
    assert isinstance(value, bytes)
    if damage == "flip":
        bad = bytearray(value)
        bad[HEADER_SIZE + 100] ^= 0x04
        client.set(key, bytes(bad))
    elif damage == "truncate":
        client.set(key, value[: len(value) // 2])
    elif damage == "empty":
        client.set(key, b"")
    elif damage == "list":  # a key of another type: MGET answers nil for it
        client.delete(key)
        client.rpush(key, b"x")
    else:
        # A well-formed value, but of another dtype or layout, or of another chunk.
        dtype = torch.float16 if damage == "other_dtype" else torch.float32
        layers = LAYERS[::-1] if damage == "other_layout" else LAYERS
        layout = ChunkLayout(layers, dtype, C)
        digest = chunk_digests(root_digest(FP, None, layout), tokens, C)[2]
        if damage == "other_key":
            digest = chunk_digests(root_digest(FP, None, layout), tokens, C)[1]
        client.set(key, encode(kv_rows(tokens, dtype)[2 * C : 3 * C], digest=digest, layout=layout))
    got = tier.fetch(None, tokens, 0)
    assert (got.start, got.stop) == (0, 2 * C)
    assert_rows(got, tokens)
    stats = tier.stats
    assert stats.errors == 0
    assert (stats.invalid_chunks, stats.missing_chunks) == ((0, 1) if damage == "list" else (1, 0))
    if damage == "list":
        client.delete(key)
    # The next write of the prompt replaces the bad value; then the whole prompt is served.
    assert tier.submit(None, tokens, kv_rows(tokens)) >= 1
    wait_for(lambda: tier.fetch(None, tokens, 0).stop == 4 * C)
    assert_rows(tier.fetch(None, tokens, 0), tokens)


def test_namespaces_models_and_dtypes_never_read_each_other(server: RedisServer, client: redis.Redis) -> None:
    tokens = prompt(8, 3 * C)
    with make_tier(server) as a:
        store(a, tokens, namespace="tenant-a")
        store(a, tokens, namespace=("tenant", 1))
        assert a.fetch("tenant-a", tokens, 0).stop == 3 * C
        assert a.fetch(("tenant", 1), tokens, 0).stop == 3 * C
        for namespace in (None, "tenant-b", ("tenant", 2), ("tenant", True), "('tenant', 1)"):
            assert a.fetch(namespace, tokens, 0).rows.shape[0] == 0, namespace
    with make_tier(server, fingerprint="fingerprint-of-model-b") as b:
        assert b.fetch("tenant-a", tokens, 0).rows.shape[0] == 0
    with make_tier(server, dtype=torch.float16) as half:
        assert half.fetch("tenant-a", tokens, 0).rows.shape[0] == 0
        store(half, tokens, namespace="tenant-a", dtype=torch.float16)
        assert_rows(half.fetch("tenant-a", tokens, 0), tokens, torch.float16)
    with make_tier(server, chunk_tokens=2 * C) as wide:
        assert wide.fetch("tenant-a", tokens, 0).rows.shape[0] == 0
    assert client.dbsize() == 3 + 3 + 3  # two namespaces and a dtype: three chains of three chunks
    assert all(k.startswith(KEY_PREFIX) for k in client.scan_iter())


def test_each_chunk_is_written_once(server: RedisServer, client: redis.Redis) -> None:
    tokens = prompt(9, 4 * C)
    with make_tier(server) as first:
        assert store(first, tokens) == 4
        assert first.submit(None, tokens, kv_rows(tokens)) == 0  # known stored: not even queued
        longer = tokens + prompt(10, 2 * C)
        assert store(first, longer) == 2  # only the new chunks
        assert first.stats.chunks_written == 6
    sets = calls(client, "set")
    with make_tier(server) as second:  # another process: it does not know, and asks first
        assert store(second, tokens) == 4
        assert second.stats.chunks_present == 4 and second.stats.chunks_written == 0
        assert second.stats.bytes_written == 0
    assert calls(client, "set") == sets


def test_rows_from_a_provider_on_the_writer_thread(tier: RemoteTier) -> None:
    tokens = prompt(11, 4 * C)
    asked: list[tuple[int, int, str]] = []

    def provider(begin: int, end: int) -> torch.Tensor | None:
        asked.append((begin, end, threading.current_thread().name))
        if begin == 3 * C:
            return None  # no longer held: dropped
        return kv_rows(tokens)[begin:end]

    assert tier.submit(None, tokens, provider, start=C) == 3
    wait_for(lambda: tier.stats.chunks_written + tier.stats.write_drops == 3)
    assert sorted(a[:2] for a in asked) == [(C, 2 * C), (2 * C, 3 * C), (3 * C, 4 * C)]
    assert all(name != threading.current_thread().name for _, _, name in asked)
    assert tier.stats.write_drops == 1
    assert tier.fetch(None, tokens, 0).rows.shape[0] == 0  # chunk 0 was never stored
    got = tier.fetch(None, tokens, C)  # but a cache that holds it locally can go on from there
    assert (got.start, got.stop) == (C, 3 * C)
    assert_rows(got, tokens)
    store(tier, array("i", tokens[:C]))
    got = tier.fetch(None, tokens, 0)
    assert got.stop == 3 * C
    assert_rows(got, tokens)


def test_a_provider_that_fails_or_lies_drops_the_chunk(tier: RemoteTier, caplog: pytest.LogCaptureFixture) -> None:
    tokens = prompt(12, 2 * C)

    def broken(begin: int, end: int) -> torch.Tensor:
        raise RuntimeError("gone")

    tier.submit(None, tokens, broken)
    wait_for(lambda: tier.stats.write_drops == 2)
    tier.submit("x", tokens, lambda b, e: torch.zeros(e - b, WIDTH, dtype=torch.float64))
    wait_for(lambda: tier.stats.write_drops == 4)
    assert tier.stats.chunks_written == 0
    assert "rows provider failed" in caplog.text and "expected a tensor [8, 28] of torch.float32" in caplog.text


# -- Redis as a cache: eviction ---------------------------------------------------------------------


def test_an_lru_server_too_small_serves_valid_prefixes_only() -> None:
    prompts = [prompt(100 + i, 30 * C) for i in range(40)]  # 1,200 chunks of 1,152 bytes
    with RedisServer(maxmemory="64mb") as server, make_tier(server) as tier:
        client = redis.Redis.from_url(server.url)
        # Room for a few hundred chunks beside what the server and its clients use.
        client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + 512 * 1024)
        for tokens in prompts:
            store(tier, tokens)
        assert int(client.info("stats")["evicted_keys"]) > 0
        served = 0
        for tokens in prompts:
            got = tier.fetch(None, tokens, 0)
            assert_rows(got, tokens)
            served += got.stop
        stats = tier.stats
        assert stats.errors == 0 and stats.invalid_chunks == 0
        assert 0 < served < 1200 * C
        assert stats.missing_chunks > 0
        client.close()


# -- Redis down, slow, refusing ----------------------------------------------------------------------


def test_server_killed_mid_run_then_back_on_the_same_port(server: RedisServer) -> None:
    tokens = prompt(13, 4 * C)
    with make_tier(server, backoff_initial=0.5, backoff_max=1.0) as tier:
        store(tier, tokens)
        assert tier.fetch(None, tokens, 0).stop == 4 * C
        server.kill()
        started = time.monotonic()
        assert tier.fetch(None, tokens, 0).rows.shape[0] == 0
        assert tier.submit(None, prompt(14, 2 * C), kv_rows(prompt(14, 2 * C))) == 2
        for _ in range(20):  # backing off: no call at all
            assert tier.fetch(None, tokens, 0).rows.shape[0] == 0
        assert time.monotonic() - started < 5 * TIMEOUT
        wait_for(lambda: tier.stats.queued == 0)
        stats = tier.stats
        assert stats.errors >= 1 and stats.skipped >= 20 and stats.write_drops == 2
        server.start()  # empty: nothing was saved
        time.sleep(1.2)  # past the longest backoff
        assert tier.fetch(None, tokens, 0).rows.shape[0] == 0  # reconnected, and the chunks are gone
        assert tier.stats.missing_chunks == 1
        assert store(tier, tokens) == 4  # written again, though this tier had stored them once
        assert_rows(tier.fetch(None, tokens, 0), tokens)


def test_a_stalled_server_costs_a_request_one_timeout(server: RedisServer) -> None:
    tokens = prompt(15, 4 * C)
    with make_tier(server, backoff_initial=2.0, backoff_max=2.0) as tier:
        store(tier, tokens)
        server.pause()
        try:
            started = time.monotonic()
            assert tier.fetch(None, tokens, 0).rows.shape[0] == 0
            assert time.monotonic() - started < 5 * TIMEOUT
            assert tier.stats.timeouts == 1
            started = time.monotonic()
            for _ in range(10):
                tier.fetch(None, tokens, 0)
            assert time.monotonic() - started < TIMEOUT  # backing off: no more waits
        finally:
            server.resume()
        wait_for(lambda: tier.fetch(None, tokens, 0).stop == 4 * C)


def test_a_refusing_server_is_counted_not_raised() -> None:
    with RedisServer(password="right") as server:
        wrong = server.url.replace(":right@", ":wrong@")
        with RemoteTier(wrong, fingerprint=FP, layers=LAYERS, dtype=torch.float32, chunk_tokens=C) as tier:
            tokens = prompt(16, 2 * C)
            assert tier.fetch(None, tokens, 0).rows.shape[0] == 0
            tier.submit(None, tokens, kv_rows(tokens))
            assert tier.stats.errors == 1
        with make_tier(server) as tier:  # the right password
            store(tier, tokens)
            assert_rows(tier.fetch(None, tokens, 0), tokens)
            assert tier.stats.errors == 0


def test_nothing_listening_is_counted_not_raised() -> None:
    with RedisServer() as server:
        url = server.url
    with RemoteTier(url, fingerprint=FP, layers=LAYERS, dtype=torch.float32, chunk_tokens=C, timeout=TIMEOUT) as t:
        started = time.monotonic()
        assert t.fetch(None, prompt(17, 3 * C), 0).rows.shape[0] == 0
        assert time.monotonic() - started < 5 * TIMEOUT
        assert t.stats.errors == 1


def test_a_full_queue_drops_and_counts(server: RedisServer) -> None:
    with make_tier(server, queue_chunks=3, batch_chunks=1) as tier:
        server.pause()  # the writer blocks on its first chunk
        try:
            tokens = prompt(18, 10 * C)
            started = time.monotonic()
            queued = tier.submit(None, tokens, kv_rows(tokens))
            assert time.monotonic() - started < TIMEOUT
            assert queued == 3
            assert tier.stats.queue_drops == 7
        finally:
            server.resume()


def test_close_with_a_full_queue_and_a_dead_server_returns_in_time(server: RedisServer) -> None:
    tier = make_tier(server, queue_chunks=50, batch_chunks=2, backoff_initial=30.0, backoff_max=30.0)
    server.pause()
    tokens = prompt(19, 50 * C)
    assert tier.submit(None, tokens, kv_rows(tokens)) == 50
    started = time.monotonic()
    tier.close(timeout=0.5)
    assert time.monotonic() - started < 0.5 + 2 * TIMEOUT
    server.kill()
    assert tier.stats.write_drops >= 48 and tier.stats.queued == 0
    assert tier.fetch(None, tokens, 0).rows.shape[0] == 0
    assert tier.submit(None, tokens, kv_rows(tokens)) == 0
    assert tier.stats.queue_drops == 50
    tier.close()  # again: nothing to do


def test_close_flushes_the_queue(server: RedisServer, client: redis.Redis) -> None:
    tier = make_tier(server, queue_chunks=64, batch_chunks=4)
    tokens = prompt(20, 60 * C)
    assert tier.submit(None, tokens, kv_rows(tokens)) == 60
    tier.close(timeout=10)
    assert tier.stats.chunks_written == 60 and tier.stats.write_drops == 0
    assert client.dbsize() == 60


def test_a_dropped_tier_stops_its_writer(server: RedisServer) -> None:
    tier = make_tier(server)
    writer = tier._writer._thread
    assert tier.submit(None, prompt(21, C), kv_rows(prompt(21, C))) == 1
    del tier
    gc.collect()
    wait_for(lambda: not writer.is_alive())


# -- many threads, two processes ------------------------------------------------------------------


def test_threads_share_a_tier(tier: RemoteTier) -> None:
    shared = prompt(22, 4 * C)
    prompts = [shared + prompt(200 + i, 2 * C + i) for i in range(8)]
    failures: list[BaseException] = []

    def work(tokens: array) -> None:
        try:
            for _ in range(5):
                got = tier.fetch(None, tokens, 0)
                assert_rows(got, tokens)
                tier.submit(None, tokens, kv_rows(tokens))
        except BaseException as err:
            failures.append(err)

    threads = [threading.Thread(target=work, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    wait_for(lambda: tier.stats.queued == 0)
    for tokens in prompts:
        assert tier.fetch(None, tokens, 0).stop == len(tokens) // C * C
    assert tier.stats.chunks_written == 4 + 8 * 2 and tier.stats.errors == 0


_WRITER_PROCESS = """
import sys, torch
from array import array
sys.path.insert(0, {root!r})
from tests.test_remote_tier import kv_rows, make_tier, prompt
tier = make_tier({url!r})
tokens = prompt(23, 5 * {C} + 1)
print(tier.submit("shared", tokens, kv_rows(tokens)))
# No close(): interpreter exit flushes the queue.
"""


def test_a_second_process_reads_what_the_first_wrote(server: RedisServer) -> None:
    root = str(Path(__file__).resolve().parents[1])
    code = _WRITER_PROCESS.format(root=root, url=server.url, C=C)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "5"
    tokens = prompt(23, 5 * C + 1)
    with make_tier(server) as tier:
        got = tier.fetch("shared", tokens, 2)
        assert (got.start, got.stop) == (0, 5 * C)
        assert_rows(got, tokens)
        assert tier.stats.hit_tokens == 5 * C - 2


# -- arguments ---------------------------------------------------------------------------------------


def test_bad_arguments_name_themselves(tier: RemoteTier, server: RedisServer) -> None:
    tokens = prompt(24, 2 * C)
    with pytest.raises(ValueError, match=r"have: expected an int in \[0, 16\], got 17"):
        tier.fetch(None, tokens, 17)
    with pytest.raises(ValueError, match="namespace"):
        tier.fetch(1.5, tokens, 0)
    with pytest.raises(ValueError, match=r"rows: expected \[n, 28\]"):
        tier.submit(None, tokens, torch.zeros(2 * C + 1, WIDTH))
    with pytest.raises(TypeError, match=r"rows: expected torch\.float32"):
        tier.submit(None, tokens, torch.zeros(2 * C, WIDTH, dtype=torch.float64))
    with pytest.raises(TypeError, match="rows: expected a tensor"):
        tier.submit(None, tokens, [[0.0] * WIDTH])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="start: expected"):
        tier.submit(None, tokens, torch.zeros(1, WIDTH), start=-1)
    with pytest.raises(ValueError, match="url: 'http://x' is not a Redis URL"):
        RemoteTier("http://x", fingerprint=FP, layers=LAYERS, dtype=torch.float32)
    for name in ("timeout", "queue_chunks", "batch_chunks", "known_chunks", "backoff_initial", "backoff_max"):
        with pytest.raises(ValueError, match=f"{name}: expected"):
            make_tier(server, **{name: 0})
    with pytest.raises(TypeError, match="fingerprint"):
        make_tier(server, fingerprint=None)


def test_without_redis_py_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ImportError, match=r"pip install 'prefixcache\[remote\]'"):
        RemoteTier("redis://localhost", fingerprint=FP, layers=LAYERS, dtype=torch.float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the rows of a CUDA pool need a CUDA device")
def test_cuda_rows_are_copied_on_a_side_stream_and_stored_exactly(tier: RemoteTier) -> None:
    tokens = prompt(25, 6 * C)
    want = kv_rows(tokens)
    on_gpu = want.cuda()
    # Queue slow work on the current stream first: the copy must wait for it, not read stale rows.
    scratch = torch.randn(4096, 4096, device="cuda")
    for _ in range(20):
        scratch = scratch @ scratch / 4096
    on_gpu.add_(1).sub_(1)
    assert tier.submit(None, tokens, on_gpu, start=0) == 6
    # Free the rows and fill new memory of their size with NaN on the current stream: without
    # record_stream the allocator could hand their block out before the copy read it.
    del on_gpu
    overwrite = torch.full((6 * C, WIDTH), float("nan"), device="cuda")
    wait_for(lambda: tier.stats.chunks_written == 6)
    del overwrite
    got = tier.fetch(None, tokens, 0)
    assert got.stop == 6 * C
    assert_rows(got, tokens)
    with make_tier(tier.url.masked(), pin_memory=True) as pinned:
        fetched = pinned.fetch(None, tokens, 0)
        assert fetched.rows.is_pinned()
        assert torch.equal(fetched.rows.cuda(non_blocking=True).cpu(), want)
