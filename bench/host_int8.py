"""What an int8 host tier does to outputs: last-position logits against the uncached model.

The few-shot workload (seeded; see prefixcache/benchmark/workloads.py) goes through
``wrap(model, --budget, host_budget="1GiB", host_dtype=...)`` with a device budget
that holds one header, so most hits come back from the host tier. For each
request, ``prefill(..., logits_to_keep=1)`` is compared with the model's own
last-position logits: the largest absolute difference, and whether the top token
agrees. Run once with the host tier in the model's dtype (exact) and once in int8.

    python bench/host_int8.py [--requests 60] [--budget 24MiB] [--seed 0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import prefixcache
from prefixcache.benchmark.report import machine
from prefixcache.benchmark.workloads import make_workload


@torch.no_grad()
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--budget", default="24MiB")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = prefixcache.load_model(seed=args.seed)
    workload = make_workload("fewshot", args.requests, seed=args.seed, vocab=prefixcache.hf.vocab_size(model))
    prompts = [torch.tensor([r.tokens]) for r in workload.requests]
    print(f"seed {args.seed}, built-in llama, float32 on cpu; device budget {args.budget}, host budget 1GiB")
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine(torch.device("cpu")).items()))
    print(f"workload: {workload.description}")
    want = [model(input_ids=ids, logits_to_keep=1).logits[0, -1] for ids in prompts]
    for name, dtype in (("float32", None), ("int8", torch.int8)):
        cached = prefixcache.wrap(model, args.budget, host_budget="1GiB", host_dtype=dtype)
        diffs, agree = [], 0
        for ids, ref in zip(prompts, want, strict=True):
            got = cached.prefill(ids, logits_to_keep=1).logits[0, -1]
            diffs.append(float((got - ref).abs().max()))
            agree += int(got.argmax() == ref.argmax())
        s = cached.cache.stats
        host = cached.cache.host_pool
        assert host is not None
        print(
            f"host tier {name:>7}: {host.bytes_per_token} bytes/token (device {cached.cache.pool.bytes_per_token}); "
            f"{s.host_hit_tokens} of {s.hit_tokens} hit tokens from the host; "
            f"max |logit diff| mean {statistics.fmean(diffs):.2e}, worst {max(diffs):.2e}; "
            f"top token equal on {agree}/{len(prompts)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
