"""Micro-benchmark of the radix tree alone: insert, match, match+pin+unpin, evict.

Workload (seeded): 5 preambles of 100 tokens; 50 shared prefixes of 200-600 tokens,
each one preamble plus its own tokens; 2,000 sequences of 900-1,100 tokens, each a
shared prefix plus its own tokens; 2,000 queries, 80% an inserted sequence cut at a
random point plus 50-300 fresh tokens, 20% fresh random tokens. Vocabulary 32,000.

Each run starts from an empty tree and times, in order: inserting all sequences,
matching all queries, matching + pinning + unpinning all queries, and evicting half
of the cached tokens. One warm-up round, then the median (and min-max) over --runs.
``--clock cpu`` times with the CPU time of the process instead of the wall clock: on a
machine shared with other jobs it counts only what the tree itself spent.

Other trees run interleaved with this one, in the same process, so that a machine
shared with other jobs slows them alike: each round runs every tree once, the order
turning by one each round.

- ``--compare NAME=PATH``: the tree of another checkout of this project (a ``git
  worktree add /tmp/old <commit>``): ``PATH/prefixcache/tree/`` or, before the tree
  became a package, ``PATH/prefixcache/radix.py``. Loaded from its files alone, so
  the rest of that package (and torch) is not imported.
- ``--external NAME=CMD``: a program in another language timing its own tree on the
  same workload. It is run once per round as ``CMD WORKLOAD`` (shell words), where
  WORKLOAD is a file of int32s in native byte order: the number of sequences, then
  each as its length and its tokens, then the queries likewise, and the environment
  has TREE_OPS_CLOCK set to ``wall`` or ``cpu``. It prints one JSON object with any of
  the keys below (same units); those it lacks print as ``-``.

    python bench/tree_ops.py [--runs 5] [--seed 0] [--json PATH] [--clock wall|cpu]
                             [--compare NAME=PATH ...] [--external NAME=CMD ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 32_000
KEYS = ("insert_us_per_seq", "match_us_per_query", "match_pin_unpin_us_per_query", "evict_half_ms")
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}

Run = Callable[[list[array], list[array]], dict[str, float]]


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


def load_tree(checkout: Path, name: str) -> type:
    """The ``RadixTree`` class of the checkout at ``checkout``, imported from its files alone."""
    package = checkout / "prefixcache" / "tree"
    if (package / "__init__.py").exists():
        spec = importlib.util.spec_from_file_location(
            name, package / "__init__.py", submodule_search_locations=[str(package)]
        )
    elif (checkout / "prefixcache" / "radix.py").exists():
        spec = importlib.util.spec_from_file_location(name, checkout / "prefixcache" / "radix.py")
    else:
        raise SystemExit(f"--compare: no prefixcache/tree/ nor prefixcache/radix.py under {checkout}")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # the package's relative imports look it up here
    spec.loader.exec_module(module)
    return module.RadixTree


def python_run(tree_class: type, clock: Callable[[], float]) -> Run:
    def one_run(sequences: list[array], queries: list[array]) -> dict[str, float]:
        slot_lists = []
        next_slot = 0
        for seq in sequences:
            slot_lists.append(array("q", range(next_slot, next_slot + len(seq))))
            next_slot += len(seq)
        tree = tree_class()

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

    return one_run


def external_run(command: str, workload: Path, clock: str) -> Run:
    env = {**os.environ, "TREE_OPS_CLOCK": clock}

    def one_run(sequences: list[array], queries: list[array]) -> dict[str, float]:
        out = subprocess.run(
            [*shlex.split(command), str(workload)], check=True, capture_output=True, text=True, env=env
        )
        figures: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
        return figures

    return one_run


def write_workload(path: Path, sequences: list[array], queries: list[array]) -> None:
    with path.open("wb") as f:
        for group in (sequences, queries):
            array("i", [len(group)]).tofile(f)
            for run in group:
                array("i", [len(run)]).tofile(f)
                run.tofile(f)


def named(pairs: list[str], option: str) -> list[tuple[str, str]]:
    out = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name or not value:
            raise SystemExit(f"{option}: expected NAME=VALUE, got {pair!r}")
        out.append((name, value))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="wall clock or CPU time of the process")
    parser.add_argument("--compare", action="append", default=[], metavar="NAME=PATH", help="another checkout's tree")
    parser.add_argument("--external", action="append", default=[], metavar="NAME=CMD", help="a tree outside Python")
    args = parser.parse_args()

    sequences, queries = make_workload(args.seed)
    print(f"seed {args.seed}; {len(sequences)} sequences, {len(queries)} queries, vocabulary {VOCAB}")
    print(
        f"python {platform.python_version()}, {platform.machine()}, {platform.processor() or 'cpu'}, {_cores()} cores"
    )
    print(f"clock: {args.clock}")
    clock = CLOCKS[args.clock]
    variants: list[tuple[str, Run]] = [("this", python_run(load_tree(ROOT, "_tree_this"), clock))]
    for i, (name, path) in enumerate(named(args.compare, "--compare")):
        variants.append((name, python_run(load_tree(Path(path), f"_tree_compare{i}"), clock)))
    with tempfile.TemporaryDirectory() as tmp:
        workload = Path(tmp) / "workload.i32"
        if args.external:
            write_workload(workload, sequences, queries)
        for name, command in named(args.external, "--external"):
            variants.append((name, external_run(command, workload, args.clock)))
        if len(variants) > 1:
            print("interleaved: " + ", ".join(name for name, _ in variants) + "; the order turns each round")
        runs: dict[str, list[dict[str, float]]] = {name: [] for name, _ in variants}
        for round_ in range(args.runs + 1):  # round 0 is the warm-up
            turn = round_ % len(variants)
            for name, one_run in variants[turn:] + variants[:turn]:
                figures = one_run(sequences, queries)
                if round_:
                    runs[name].append(figures)

    summary: dict[str, dict[str, Any]] = {}
    print(f"{'tree':<10}{'operation':<32}{'median':>10}{'min':>10}{'max':>10}")
    for name, _ in variants:
        summary[name] = {}
        for key in [*KEYS, *(k for k in runs[name][0] if k not in KEYS)]:
            values = [run[key] for run in runs[name] if key in run]
            if not values:
                print(f"{name:<10}{key:<32}{'-':>10}{'-':>10}{'-':>10}")
                continue
            med = statistics.median(values)
            summary[name][key] = {"median": med, "min": min(values), "max": max(values)}
            print(f"{name:<10}{key:<32}{med:>10.2f}{min(values):>10.2f}{max(values):>10.2f}")
    if len(variants) > 1:
        print("ratios of medians, this tree's time / the other's:")
        for name, _ in variants[1:]:
            for key in KEYS:
                if key in summary["this"] and key in summary[name]:
                    ratio = summary["this"][key]["median"] / summary[name][key]["median"]
                    print(f"  this / {name:<12}{key:<32}{ratio:>8.2f}")
    if args.json:
        record = {"seed": args.seed, "runs": args.runs, "clock": args.clock, "results": summary}
        args.json.write_text(json.dumps(record, indent=2))


def _cores() -> int:
    return os.cpu_count() or 1


if __name__ == "__main__":
    main()
