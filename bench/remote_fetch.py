"""Remote tier fetch rate: how fast RemoteTier.fetch brings KV back from a Redis server.

Rows of the default model's layout (8 layers x 8 KV heads x head_dim 64, K and
V, float32: 32,768 bytes per token; 8 MiB per 256-token chunk) are stored for
prompts of 1, 4 and 16 chunks (seeded random tokens and values); then each
prompt is fetched ``--runs`` times after a warm-up and the median and spread
are printed, as GB/s of rows returned (1 GB = 1e9 bytes). Three figures per size:

    mget     redis-py's MGET of the chunks' keys alone, in batches (the transfer)
    fetch    RemoteTier.fetch: MGET, check (sha256, header) and copy into one tensor
    write    submit and wait until the writer has stored them (EXISTS + SET)

With no ``--url``, a redis-server (from PATH) is started on a free loopback port
and stopped at the end.

    python bench/remote_fetch.py [--url redis://host:port/db] [--runs 10] [--chunks 1,4,16] [--batch 8] [--seed 0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from array import array
from collections.abc import Callable
from pathlib import Path

import redis
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prefixcache.benchmark.report import machine
from prefixcache.kv import LayerSpec
from prefixcache.remote import RemoteTier
from prefixcache.remote.keys import chunk_digests, redis_key, root_digest
from tests.redis_server import server_url

LAYERS = [LayerSpec(kv_heads=8, key_dim=64, value_dim=64)] * 8  # the default preset's KV layout
CHUNK = 256


def timed(runs: int, fn: Callable[[], object], setup: Callable[[], object] = lambda: None) -> list[float]:
    setup()
    fn()  # warm-up
    times = []
    for _ in range(runs):
        setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def rate(nbytes: int, times: list[float]) -> str:
    gbs = sorted(nbytes / t / 1e9 for t in times)
    return f"{statistics.median(gbs):6.2f} GB/s (min {gbs[0]:5.2f}, max {gbs[-1]:5.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an existing Redis server (default: start one on loopback)")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--chunks", default="1,4,16", help="prompt sizes in 256-token chunks")
    parser.add_argument("--batch", type=int, default=8, help="chunks per round trip")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = [int(s) for s in args.chunks.split(",")]
    if args.runs < 1 or args.batch < 1 or min(sizes) < 1:
        parser.error("--runs, --batch and every --chunks size must be at least 1")
    print("remote fetch rate: " + " ".join(["python", *sys.argv]))
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine(torch.device("cpu")).items()))
    width = sum(spec.width for spec in LAYERS)
    print(
        f"layout: 8 layers x 8 kv heads x 64 x K,V float32 = {width * 4:,} bytes per token, "
        f"{CHUNK}-token chunks of {CHUNK * width * 4 / 2**20:.0f} MiB; batch {args.batch}; seed {args.seed}; "
        f"median of {args.runs} runs after a warm-up"
    )
    g = torch.Generator().manual_seed(args.seed)
    with server_url(args.url) as url:
        print(f"server: {url.split('@')[-1]}")
        for n in sizes:
            tokens = array("i", torch.randint(0, 32000, (n * CHUNK,), generator=g).tolist())
            rows = torch.randn(n * CHUNK, width, generator=g)
            nbytes = rows.numel() * rows.element_size()

            def write(run: list[int], tokens: array = tokens, rows: torch.Tensor = rows) -> None:
                run[0] += 1  # a fresh namespace each run: every chunk is new to the tier
                before = tier.stats.chunks_written
                tier.submit(f"run-{run[0]}", tokens, rows)
                while tier.stats.chunks_written - before < len(tokens) // CHUNK:
                    time.sleep(0.0005)

            with RemoteTier(
                url,
                fingerprint=f"bench-remote-fetch-{args.seed}",
                layers=LAYERS,
                dtype=torch.float32,
                chunk_tokens=CHUNK,
                timeout=5.0,
                batch_chunks=args.batch,
                queue_chunks=max(32, n),
            ) as tier:
                client = redis.Redis.from_url(url)
                counter = [0]
                write_times = timed(args.runs, lambda counter=counter: write(counter), setup=client.flushdb)
                client.flushdb()
                write(counter)  # kept for the fetches
                namespace = f"run-{counter[0]}"
                got = tier.fetch(namespace, tokens, 0)
                assert torch.equal(got.rows, rows), "fetched rows differ from those stored"
                keys = [
                    redis_key(d)
                    for d in chunk_digests(root_digest(tier.fingerprint, namespace, tier.layout), tokens, CHUNK)
                ]

                def mget(keys: list[bytes] = keys, client: redis.Redis = client) -> None:
                    for at in range(0, len(keys), args.batch):
                        client.mget(keys[at : at + args.batch])

                mget_times = timed(args.runs, mget)
                fetch_times = timed(args.runs, lambda ns=namespace, tokens=tokens: tier.fetch(ns, tokens, 0))
                assert tier.stats.errors == 0 and tier.stats.invalid_chunks == 0
                client.flushdb()
                client.close()
            print(f"{n:3d} chunks ({n * CHUNK:5d} tokens, {nbytes / 2**20:4.0f} MiB):")
            print(f"    mget   {rate(nbytes, mget_times)}")
            print(f"    fetch  {rate(nbytes, fetch_times)}   {statistics.median(fetch_times) * 1e3:7.1f} ms median")
            print(f"    write  {rate(nbytes, write_times)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
