"""Micro-benchmark of the radix tree alone: insert, match, match+pin+unpin, evict.

Workload (seeded): 5 preambles of 100 tokens; 50 shared prefixes of 200-600 tokens,
each one preamble plus its own tokens; 2,000 sequences of 900-1,100 tokens, each a
shared prefix plus its own tokens; 2,000 queries, 80% an inserted sequence cut at a
random point plus 50-300 fresh tokens, 20% fresh random tokens. Vocabulary 32,000.

Each run starts from an empty tree and times, in order: inserting all sequences,
matching all queries, matching + pinning + unpinning all queries, and evicting half
of the cached tokens. One warm-up run, then the median (and min-max) over --runs.

    python bench/tree_ops.py [--runs 5] [--seed 0] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from array import array
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prefixcache.tree import RadixTree

VOCAB = 32_000


def make_workload(seed: int) -> tuple[list[array], list[array]]:
    rng = random.Random(seed)

    def fresh(n: int) -> list[int]:
        return [rng.randrange(VOCAB) for _ in range(n)]

    preambles = [fresh(100) for _ in range(5)]
    prefixes = []
    for _ in range(50):
        total = rng.randint(200, 600)
        prefixes.append(rng.choice(preambles) + fresh(total - 100))
    sequences = []
    for _ in range(2000):
        prefix = rng.choice(prefixes)
        total = rng.randint(900, 1100)
        sequences.append(array("i", prefix + fresh(total - len(prefix))))
    queries = []
    for _ in range(2000):
        if rng.random() < 0.8:
            seq = rng.choice(sequences)
            cut = rng.randint(1, len(seq))
            queries.append(seq[:cut] + array("i", fresh(rng.randint(50, 300))))
        else:
            queries.append(array("i", fresh(rng.randint(900, 1100))))
    return sequences, queries


def one_run(sequences: list[array], queries: list[array]) -> dict[str, float]:
    slot_lists = []
    next_slot = 0
    for seq in sequences:
        slot_lists.append(array("q", range(next_slot, next_slot + len(seq))))
        next_slot += len(seq)
    tree = RadixTree()
    clock = time.perf_counter

    t0 = clock()
    for seq, slots in zip(sequences, slot_lists, strict=False):
        tree.insert(seq, slots)
    t_insert = clock() - t0

    t0 = clock()
    for q in queries:
        tree.match(q)
    t_match = clock() - t0

    t0 = clock()
    for q in queries:
        node = tree.match(q).node
        tree.pin(node)
        tree.unpin(node)
    t_pin = clock() - t0

    half = tree.size // 2
    leaves_before = tree.n_nodes
    t0 = clock()
    freed = tree.evict(half).n_tokens
    t_evict = clock() - t0
    assert freed >= half
    return {
        "insert_us_per_seq": t_insert / len(sequences) * 1e6,
        "match_us_per_query": t_match / len(queries) * 1e6,
        "match_pin_unpin_us_per_query": t_pin / len(queries) * 1e6,
        "evict_half_ms": t_evict * 1e3,
        "evicted_nodes": leaves_before - tree.n_nodes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()

    sequences, queries = make_workload(args.seed)
    print(f"seed {args.seed}; {len(sequences)} sequences, {len(queries)} queries, vocabulary {VOCAB}")
    print(
        f"python {platform.python_version()}, {platform.machine()}, {platform.processor() or 'cpu'}, {_cores()} cores"
    )
    one_run(sequences, queries)  # warm-up
    runs = [one_run(sequences, queries) for _ in range(args.runs)]
    summary = {}
    print(f"{'operation':<32}{'median':>10}{'min':>10}{'max':>10}")
    for key in runs[0]:
        values = [run[key] for run in runs]
        summary[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        print(f"{key:<32}{summary[key]['median']:>10.2f}{min(values):>10.2f}{max(values):>10.2f}")
    if args.json:
        args.json.write_text(json.dumps({"seed": args.seed, "runs": args.runs, "results": summary}, indent=2))


def _cores() -> int:
    import os

    return os.cpu_count() or 1


if __name__ == "__main__":
    main()
