"""Eight threads, one new system prompt: computed once when requests wait for each other.

Workload (seeded): a new 600-token system prompt and, per thread, a question of
20-60 tokens; every thread sends its prompt at the same moment (a barrier) to one
CachedModel of the built-in model (one token generated). Run twice on fresh
caches: with the default ``shared_wait`` (a request whose prefix another thread is
computing waits for it) and with ``shared_wait=0`` (each computes it). Printed:
prompt tokens computed (not taken from the cache), requests that waited, wall
time of the whole burst, and each request's latency (median and max); outputs are
checked equal between the two runs.

    python bench/shared_prefix.py [--threads 8] [--system 600] [--model default|tiny] [--seed 0] [--repeats 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import prefixcache
from prefixcache import hf
from prefixcache.benchmark.report import machine


def burst(cached: prefixcache.CachedModel, prompts: list[torch.Tensor]) -> tuple[float, list[float], list[Any]]:
    barrier = threading.Barrier(len(prompts) + 1)
    latency = [0.0] * len(prompts)
    outputs: list[Any] = [None] * len(prompts)

    def worker(i: int) -> None:
        barrier.wait()
        start = time.perf_counter()
        outputs[i] = cached.generate(prompts[i], max_new_tokens=1, do_sample=False)
        latency[i] = time.perf_counter() - start

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - start, latency, outputs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--system", type=int, default=600)
    parser.add_argument("--model", default="default", choices=["default", "tiny"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="bursts per setting (each with a new system prompt)")
    args = parser.parse_args()
    model = prefixcache.load_model(preset=args.model, seed=args.seed)
    vocab = hf.vocab_size(model)
    print(
        f"bench/shared_prefix.py: seed {args.seed}, {args.threads} threads at once, a new {args.system}-token system "
        f"prompt + 20-60-token questions, built-in {args.model} model, float32, 1 token generated, "
        f"{args.repeats} bursts per setting"
    )
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine(torch.device("cpu")).items()))
    rng = random.Random(args.seed)
    warm = prefixcache.wrap(model, "64MiB")
    warm.generate(torch.randint(3, vocab, (1, 64)), max_new_tokens=1, do_sample=False)  # first-call costs
    bursts = []
    for _ in range(args.repeats):
        system = [rng.randrange(3, vocab) for _ in range(args.system)]
        bursts.append(
            [
                torch.tensor([system + [rng.randrange(3, vocab) for _ in range(rng.randint(20, 60))]])
                for _ in range(args.threads)
            ]
        )
    results: dict[str, dict[str, Any]] = {}
    outputs: dict[str, list[Any]] = {}
    for label, wait in (("wait (default)", None), ("shared_wait=0", 0.0)):
        walls, lat, computed, waited = [], [], 0, 0
        outputs[label] = []
        for prompts in bursts:
            cached = prefixcache.wrap(model, "1GiB") if wait is None else prefixcache.wrap(model, "1GiB", shared_wait=0)
            wall, latency, out = burst(cached, prompts)
            s = cached.cache.stats
            walls.append(wall)
            lat += latency
            computed += s.prompt_tokens - s.hit_tokens
            waited += s.shared_waits
            outputs[label] += out
        results[label] = {
            "computed": computed / len(bursts),
            "waited": waited / len(bursts),
            "wall": statistics.median(walls),
            "wall_spread": (min(walls), max(walls)),
            "latency_p50": statistics.median(lat),
            "latency_max": max(lat),
        }
    same = all(torch.equal(a, b) for a, b in zip(*outputs.values(), strict=True))
    head = f"{'setting':<18}{'computed/burst':>16}{'waited':>8}{'burst wall s (min-max)':>26}"
    print(f"\n{head}{'latency p50':>13}{'max':>8}")
    for label, r in results.items():
        lo, hi = r["wall_spread"]
        print(
            f"{label:<18}{r['computed']:>16.0f}{r['waited']:>8.1f}{r['wall']:>12.2f} ({lo:.2f}-{hi:.2f}){'':>3}"
            f"{r['latency_p50']:>12.2f}s{r['latency_max']:>7.2f}s"
        )
    print(f"outputs identical between the settings: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
