"""What a cached request adds over the model's own work, and where that time goes.

The measurement is prefixcache/benchmark/per_request.py, whose description of the
workload, the method and the steps timed ``--help`` prints below this one
(``python -m prefixcache bench --overhead`` prints the same rows for the tiny and the
default model).

    python bench/overhead.py [--model tiny|default] [--requests 300] [--seed 0] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prefixcache.benchmark import per_request
from prefixcache.benchmark.per_request import measure_preset
from prefixcache.benchmark.report import machine


def main() -> int:
    parser = argparse.ArgumentParser(
        description=f"{__doc__}\n{per_request.__doc__}", formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny", choices=["tiny", "default"], help="built-in preset")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the prompts for the step breakdown")
    args = parser.parse_args()
    device = torch.device(args.device)
    r = measure_preset(args.model, device=device, requests=args.requests, seed=args.seed, repeats=args.repeats)
    params = f"{r.parameters / 1e6:.2f}M parameters"
    print(f"bench/overhead.py: seed {args.seed}, model built-in {args.model} ({params}), float32")
    print(f"workload: {r.workload}")
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine(device).items()))
    print(f"\n{r.requests} requests, every prompt cached: {r.hit_tokens} of {r.reusable_tokens} reusable tokens hit")
    print(f"outputs differing from model.generate's: {r.differing}")
    print(f"model.generate with the prefix KV ready-made: median {r.model_us:.0f} us")
    quartiles = f"quartiles {r.added_q1_us:.0f} .. {r.added_q3_us:.0f}"
    print(f"added by the cache per request: median {r.added_us:.0f} us ({quartiles})")
    print(f"\neach step alone, median over the first {r.step_prompts} prompts x {r.repeats} passes:")
    for name, us in r.steps.items():
        print(f"  {name:<14}{us:>8.1f} us")
    print(f"  {'sum':<14}{sum(r.steps.values()):>8.1f} us")
    return 0 if r.differing == 0 and r.hit_tokens == r.reusable_tokens else 1


if __name__ == "__main__":
    sys.exit(main())
