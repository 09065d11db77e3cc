"""What storing a prompt inside generate, after its first step, costs a request.

A request that holds a claim (it computes a prefix others may be waiting for) stores its
prompt from a stopping criterion that runs after generate's first step, so that waiters
need not sit through the reply. A request without a claim stores the prompt with the
reply instead. This script times both on requests that hold no claim (every prompt of a
few-shot stream cached but for its last token), alternating the two per request in one
process so that a drift in the machine's speed falls on both alike: ``early`` makes
every request take the first-step path, ``with reply`` is what the cache does.

Workload (seeded): prefixcache/benchmark/workloads.py's fewshot (4 subjects x a
600-token header, questions of 50-70 tokens, one token generated) on the built-in tiny
model, float32, CPU.

    python bench/early_store.py [--requests 300] [--passes 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prefixcache import hf
from prefixcache.benchmark.report import machine
from prefixcache.benchmark.workloads import make_workload
from prefixcache.hit import Hit


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device("cpu")
    torch.manual_seed(args.seed)
    model = hf.load_model(preset="tiny", device=device, seed=args.seed)
    cached = hf.wrap(model, "4GiB")
    workload = make_workload("fewshot", args.requests, seed=args.seed, vocab=hf.vocab_size(model))
    prompts = [torch.tensor([r.tokens]) for r in workload.requests]
    print(f"bench/early_store.py: seed {args.seed}, model built-in tiny, float32")
    print(f"workload: {workload.description}")
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine(device).items()))

    def run(ids: torch.Tensor) -> torch.Tensor:
        return cached.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False)

    for ids in prompts:  # every prompt cached; no request below holds a claim
        run(ids)
    claimed = Hit.claimed
    as_if_claimed = property(lambda self: True)
    times: dict[str, list[float]] = {"early": [], "with reply": []}
    order = list(range(len(prompts)))
    random.Random(args.seed).shuffle(order)
    try:
        for p in range(args.passes):
            for i in order:
                first = ("early", "with reply") if (i + p) % 2 else ("with reply", "early")
                for name in first:
                    Hit.claimed = as_if_claimed if name == "early" else claimed  # type: ignore[method-assign]
                    start = time.perf_counter()
                    run(prompts[i])
                    times[name].append(1e6 * (time.perf_counter() - start))
    finally:
        Hit.claimed = claimed  # type: ignore[method-assign]
    paired = [a - b for a, b in zip(times["early"], times["with reply"], strict=True)]
    n = len(paired)
    print(f"\n{n} requests each way, one token generated, medians:")
    for name, values in times.items():
        print(f"  {name:<12}{statistics.median(values):>9.0f} us")
    print(f"  early - with reply, paired per request: {statistics.median(paired):.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
