"""Restart run: time to first token after a restart, cold versus loaded from a saved cache.

A server answers the few-shot workload (seeded: 4 subjects x 600-token header,
60-token questions, 1 token generated; see prefixcache/benchmark/workloads.py), saves
its cache with ``cache.save(path)`` and restarts. Then the next ``--requests``
questions go to a new CachedModel twice: once cold (an empty cache) and once after
``cache.load(path)`` (what ``wrap(model, load=path)`` does). Printed: save and load times, file size, and for
both runs time to first token (mean, p50, p99) and hit rate.

    python bench/restart.py [--requests 100] [--before 40] [--seed 0] [--device cpu] [--dtype float32]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import prefixcache
from prefixcache.benchmark.cli import DTYPES
from prefixcache.benchmark.report import machine
from prefixcache.benchmark.workloads import make_workload


def serve(cached: prefixcache.CachedModel, prompts: list[torch.Tensor]) -> list[float]:
    """Generate one token for each prompt (its time is the time to first token)."""
    times = []
    for ids in prompts:
        if ids.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        cached.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False)
        if ids.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def describe(name: str, times: list[float], cached: prefixcache.CachedModel) -> str:
    ms = sorted(1e3 * t for t in times)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return (
        f"{name:<8} TTFT mean {statistics.fmean(ms):7.1f} ms  p50 {statistics.median(ms):7.1f} ms  "
        f"p99 {p99:7.1f} ms  hit rate {cached.cache.stats.hit_rate:6.1%}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100, help="requests timed after the restart")
    parser.add_argument("--before", type=int, default=40, help="requests served before the save")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", default="1GiB")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    args = parser.parse_args()
    if args.requests < 1 or args.before < 1:
        parser.error("--requests and --before must be at least 1")
    device = torch.device(args.device)
    model = prefixcache.load_model(dtype=DTYPES[args.dtype], device=device, seed=args.seed)
    vocab = prefixcache.hf.vocab_size(model)
    workload = make_workload("fewshot", args.before + args.requests, seed=args.seed, vocab=vocab)
    prompts = [torch.tensor([r.tokens], device=device) for r in workload.requests]
    before, after = prompts[: args.before], prompts[args.before :]
    params = sum(p.numel() for p in model.parameters())
    print(f"restart run: seed {args.seed}, built-in llama ({params / 1e6:.0f}M parameters), {args.dtype} on {device}")
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine(device).items()))
    print(f"workload: {workload.description}; {args.before} served before the save, {args.requests} timed after")

    serve(prefixcache.wrap(model, args.budget), prompts[:2])  # untimed warm-up of the model
    first = prefixcache.wrap(model, args.budget)
    serve(first, before)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cache.safetensors")
        start = time.perf_counter()
        first.cache.save(path)
        saved_s = time.perf_counter() - start
        size = os.path.getsize(path)
        cached_tokens = first.cache.stats.cached_tokens
        del first

        cold = prefixcache.wrap(model, args.budget)
        cold_times = serve(cold, after)
        loaded = prefixcache.wrap(model, args.budget)
        start = time.perf_counter()
        loaded.cache.load(path)  # what wrap(model, budget, load=path) does after wrapping
        load_s = time.perf_counter() - start
        loaded_times = serve(loaded, after)
    print(
        f"saved {cached_tokens} tokens ({size / 2**20:.1f} MiB) in {saved_s:.2f} s; "
        f"cache.load(path) took {load_s:.2f} s"
    )
    print(describe("cold", cold_times, cold))
    print(describe("loaded", loaded_times, loaded))
    print(f"speedup of the loaded cache over cold: {sum(cold_times) / sum(loaded_times):.2f}x in total time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
