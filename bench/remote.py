"""Two processes sharing KV through Redis: what the second gains from the first's chunks.

Workload (seeded, prefixcache/benchmark/workloads.py): fewshot, 4 subjects x a
600-token header, questions of 50-70 tokens, one token generated, on the built-in
default model (float32 unless --dtype says otherwise). The first process serves
the first ``--before`` requests with ``remote=`` a Redis server and flushes its
chunks. A second process then times the next ``--requests`` requests three ways,
each on a new CachedModel:

    cold     no remote tier, an empty cache: every subject's header is computed again
    remote   remote= the same server: each header's complete 256-token chunks come from Redis
    warm     no remote tier, but the first process's requests served first (untimed):
             what the first process itself would see

Printed: time to first token (mean, p50, p99), total time, speedup over cold and
hit rates; then the fetch rate on loopback in GB/s and the model's own prefill
time per token, measured in the same process. With no ``--url`` a redis-server
from PATH is started on a free loopback port and stopped at the end.

    python bench/remote.py [--url redis://...] [--before 20] [--requests 40] [--seed 0] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import prefixcache
from prefixcache import hf
from prefixcache.benchmark.report import machine
from prefixcache.benchmark.workloads import make_workload
from tests.redis_server import server_url


def prompts(args: argparse.Namespace, vocab: int) -> list[torch.Tensor]:
    workload = make_workload("fewshot", args.before + args.requests, seed=args.seed, vocab=vocab)
    return [torch.tensor([r.tokens], device=args.device) for r in workload.requests]


def serve(cached: prefixcache.CachedModel, ids: list[torch.Tensor], device: str) -> list[float]:
    times = []
    for prompt in ids:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        cached.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=1, do_sample=False)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def timed_run(cached: prefixcache.CachedModel, ids: list[torch.Tensor], device: str) -> dict[str, Any]:
    """Serve ``ids`` and summarise them alone (the cache's counters before them are subtracted)."""
    before = cached.cache.stats
    times = serve(cached, ids, device)
    after = cached.cache.stats
    ordered = sorted(times)
    prompt = after.prompt_tokens - before.prompt_tokens
    return {
        "ttft_mean_ms": 1e3 * statistics.fmean(times),
        "ttft_p50_ms": 1e3 * statistics.median(times),
        "ttft_p99_ms": 1e3 * ordered[max(0, -(-99 * len(ordered) // 100) - 1)],
        "total_s": sum(times),
        "hit_rate": (after.hit_tokens - before.hit_tokens) / prompt,
        "remote_hit_tokens": after.remote_hit_tokens - before.remote_hit_tokens,
        "remote_bytes_fetched": after.remote_bytes_fetched - before.remote_bytes_fetched,
    }


def first_process(args: argparse.Namespace) -> None:
    model = prefixcache.load_model(device=args.device, dtype=getattr(torch, args.dtype), seed=args.seed)
    cached = prefixcache.wrap(model, "4GiB", remote=args.url)
    serve(cached, prompts(args, hf.vocab_size(model))[: args.before], args.device)
    cached.close(timeout=60)
    print(json.dumps(cached.cache.stats.as_dict()))


def second_process(args: argparse.Namespace) -> None:
    model = prefixcache.load_model(device=args.device, dtype=getattr(torch, args.dtype), seed=args.seed)
    ids = prompts(args, hf.vocab_size(model))
    before, timed = ids[: args.before], ids[args.before :]
    serve(prefixcache.wrap(model, "64MiB"), before[:2], args.device)  # warm-up, untimed
    out: dict[str, Any] = {}
    cold = prefixcache.wrap(model, "4GiB")
    out["cold"] = timed_run(cold, timed, args.device)
    remote = prefixcache.wrap(model, "4GiB", remote=args.url)
    out["remote"] = timed_run(remote, timed, args.device)
    remote.close()
    warm = prefixcache.wrap(model, "4GiB")
    serve(warm, before, args.device)
    out["warm"] = timed_run(warm, timed, args.device)
    # The model's own prefill time per token, and the fetch rate from Redis, in this process.
    header = timed[0][:, :600]
    prefill = []
    for _ in range(5):
        start = time.perf_counter()
        with torch.no_grad():
            model(header)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        prefill.append(time.perf_counter() - start)
    out["prefill_ms_per_token"] = 1e3 * statistics.median(prefill) / header.shape[1]
    probe = prefixcache.wrap(model, "4GiB", remote=args.url)
    tier = probe.cache.remote
    assert tier is not None
    layout = probe.cache.layout  # for the bytes of one token
    fetch = []
    for prompt in timed[:8]:
        row = prompt[0].tolist()
        start = time.perf_counter()
        got = tier.fetch(None, row, 0)
        fetch.append((time.perf_counter() - start, got.rows.numel() * got.rows.element_size()))
    moved = [(t, b) for t, b in fetch if b]
    out["fetch_gb_per_s"] = statistics.median(b / t / 1e9 for t, b in moved) if moved else 0.0
    out["fetch_ms_per_token"] = (
        statistics.median(1e3 * t / (b / (layout.width * model.dtype.itemsize)) for t, b in moved) if moved else 0.0
    )
    probe.close()
    print(json.dumps(out))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url")
    parser.add_argument("--before", type=int, default=20, help="requests the first process serves")
    parser.add_argument("--requests", type=int, default=40, help="requests the second process times")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--role", choices=["first", "second"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "first":
        first_process(args)
        return 0
    if args.role == "second":
        second_process(args)
        return 0
    print(
        f"bench/remote.py: seed {args.seed}, fewshot, built-in default model, {args.dtype} on {args.device}; "
        f"first process {args.before} requests, second process {args.requests} timed"
    )
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine(torch.device(args.device)).items()))
    with server_url(args.url) as url:
        common = [
            "--url", url, "--before", str(args.before), "--requests", str(args.requests),
            "--seed", str(args.seed), "--device", args.device, "--dtype", args.dtype,
        ]  # fmt: skip
        script = str(Path(__file__).resolve())
        first = subprocess.run([sys.executable, script, "--role", "first", *common], capture_output=True, text=True)
        if first.returncode:
            print(first.stderr)
            return 1
        written = json.loads(first.stdout.strip().splitlines()[-1])
        print(f"first process: {written['remote_bytes_written'] / 2**20:.0f} MiB written to Redis")
        second = subprocess.run([sys.executable, script, "--role", "second", *common], capture_output=True, text=True)
        if second.returncode:
            print(second.stderr)
            return 1
        out = json.loads(second.stdout.strip().splitlines()[-1])
    cold_total = out["cold"]["total_s"]
    print(f"\n{'second process':<16}{'TTFT mean':>11}{'p50':>9}{'p99':>9}{'total s':>9}{'speedup':>9}{'hit rate':>10}")
    for name in ("cold", "remote", "warm"):
        r = out[name]
        print(
            f"{name:<16}{r['ttft_mean_ms']:>9.1f}ms{r['ttft_p50_ms']:>7.1f}ms{r['ttft_p99_ms']:>7.1f}ms"
            f"{r['total_s']:>9.2f}{cold_total / r['total_s']:>8.2f}x{r['hit_rate']:>10.1%}"
        )
    r = out["remote"]
    print(
        f"\nremote: {r['remote_hit_tokens']} hit tokens from Redis, {r['remote_bytes_fetched'] / 2**20:.0f} MiB fetched"
    )
    print(
        f"fetch rate on loopback: {out['fetch_gb_per_s']:.2f} GB/s = {out['fetch_ms_per_token']:.3f} ms per token; "
        f"the model's prefill: {out['prefill_ms_per_token']:.3f} ms per token"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
