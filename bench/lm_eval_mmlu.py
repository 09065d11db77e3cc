"""lm-evaluation-harness on an MMLU-shaped task: HFLM against PrefixCacheLM, same model, same requests.

The offline task (prefixcache/lm_eval/offline_task.py, seeded): 5 subjects, headers of
about 300, 400, 500, 600 and 700 tokens (a description and five answered exemplars),
``--questions`` test questions of 30-50 words per subject, 4 choices, 5-shot. Both
systems run ``lm_eval.simple_evaluate`` on the whole group with the built-in default
model (58M parameters, seeded random weights). Printed: the seed, the workload, the
model, the machine; each system's wall time for ``simple_evaluate`` and for its
``loglikelihood`` call alone, its process CPU time, and the tokens its forward passes
computed (with ``--repeats``, the systems alternate and the run of median wall time is shown); the accuracy
of both, the largest per-request log-likelihood difference and the number of
``is_greedy`` that differ; the cache's hit rate. Exits 1 if the accuracies or any
``is_greedy`` differ.

    python bench/lm_eval_mmlu.py [--questions 20] [--limit N] [--batch-size 1] [--seed 0] [--repeats 1]
                                 [--device cpu] [--dtype float32] [--budget 1GiB] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lm_eval
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from transformers import AutoTokenizer

import prefixcache
from prefixcache.benchmark.cli import DTYPES
from prefixcache.benchmark.report import machine
from prefixcache.lm_eval import PrefixCacheLM
from prefixcache.lm_eval.offline_task import write_task


class TokenCounter:
    """Counts the input tokens of every forward pass of a model (padding included)."""

    def __init__(self, model: Any) -> None:
        self.tokens = 0
        self.calls = 0
        model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            self.tokens += ids.numel()
            self.calls += 1


def run(lm: Any, counter: TokenCounter, task: Any, manager: TaskManager, limit: float | None) -> dict[str, Any]:
    took: dict[str, float] = {}
    inner = lm.loglikelihood

    def timed(requests: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = inner(requests, **kwargs)
        took["loglikelihood"] = time.perf_counter() - start
        return out

    lm.loglikelihood = timed
    counter.tokens = counter.calls = 0
    start, cpu = time.perf_counter(), time.process_time()
    out = lm_eval.simple_evaluate(
        model=lm, tasks=[task.group], task_manager=manager, limit=limit, log_samples=True, verbosity="ERROR"
    )
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "loglikelihood_s": took["loglikelihood"],
        "forward_tokens": counter.tokens,
        "forward_calls": counter.calls,
        "results": out["results"],
        "samples": out["samples"],
    }


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median wall time (the lower middle one of an even number)."""
    return sorted(runs, key=lambda r: r["wall_s"])[(len(runs) - 1) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=20, help="test questions per subject (default 20)")
    parser.add_argument("--limit", type=float, help="lm-eval's --limit: questions per subject actually run")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--preset", default="default", choices=["default", "tiny"])
    parser.add_argument("--budget", default="1GiB", help="PrefixCacheLM's pool budget")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each system, alternating (median reported)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    for name in ("questions", "batch_size", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected at least 1, got {getattr(args, name)}")
    logging.getLogger("lm-eval").setLevel(logging.ERROR)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)

    device = torch.device(args.device)
    workdir = tempfile.mkdtemp(prefix="prefixcache-lm-eval-")
    task = write_task(workdir, seed=args.seed, questions=args.questions)
    tokenizer = AutoTokenizer.from_pretrained(str(task.tokenizer))
    model = prefixcache.load_model(preset=args.preset, dtype=DTYPES[args.dtype], device=device, seed=args.seed)
    params = sum(p.numel() for p in model.parameters())
    info = machine(device)
    info["lm_eval"] = lm_eval.__version__
    print(
        f"lm-eval bench: seed {args.seed}, workload {task.group} ({len(task.tasks)} subjects, headers of about "
        f"300-700 tokens, {args.questions} questions each, limit {args.limit}, 4 choices, 5-shot), "
        f"model built-in {args.preset} ({params / 1e6:.0f}M parameters), {args.dtype} on {device}, "
        f"batch size {args.batch_size}, budget {args.budget}"
    )
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    counter = TokenCounter(model)
    manager = TaskManager(include_path=str(task.directory))
    with torch.no_grad():  # a warm-up outside the clock, so neither system pays first-call costs
        for n in (64, 512):
            model(torch.randint(4, 400, (1, n), device=device))

    common = dict(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size, device=str(device))
    runs: dict[str, list[dict[str, Any]]] = {"HFLM": [], "PrefixCacheLM": []}
    for _ in range(args.repeats):  # alternating, so that a change in the machine's load touches both
        runs["HFLM"].append(run(HFLM(**common), counter, task, manager, args.limit))
        cached_lm = PrefixCacheLM(**common, budget=args.budget)  # a cold cache each time
        runs["PrefixCacheLM"].append(run(cached_lm, counter, task, manager, args.limit))
    stats = cached_lm.cache.stats
    hf, pc = (median_run(runs[name]) for name in ("HFLM", "PrefixCacheLM"))

    worst, greedy_differ, requests = 0.0, 0, 0
    for name in task.tasks:
        for a, b in zip(hf["samples"][name], pc["samples"][name], strict=True):
            for (ll_a, greedy_a), (ll_b, greedy_b) in zip(
                (r[0] for r in a["resps"]), (r[0] for r in b["resps"]), strict=True
            ):
                requests += 1
                worst = max(worst, abs(ll_a - ll_b))
                greedy_differ += greedy_a != greedy_b
    acc = {
        name: (hf["results"][name]["acc,none"], pc["results"][name]["acc,none"]) for name in (task.group, *task.tasks)
    }
    print()
    print("| system | simple_evaluate s | (each run) | loglikelihood s | CPU s | forward tokens | accuracy |")
    print("|---|---|---|---|---|---|---|")
    for label, r in (("HFLM", hf), ("PrefixCacheLM", pc)):
        each = ", ".join(f"{x['wall_s']:.1f}" for x in runs[label])
        print(
            f"| {label} | {r['wall_s']:.1f} | {each} | {r['loglikelihood_s']:.1f} | {r['cpu_s']:.1f} | "
            f"{r['forward_tokens']:,} | {r['results'][task.group]['acc,none']:.4f} |"
        )
    print()
    print(
        f"speedup: {hf['wall_s'] / pc['wall_s']:.2f}x on simple_evaluate, "
        f"{hf['loglikelihood_s'] / pc['loglikelihood_s']:.2f}x on loglikelihood, "
        f"{hf['cpu_s'] / pc['cpu_s']:.2f}x in CPU time; "
        f"forward tokens {pc['forward_tokens'] / hf['forward_tokens']:.1%} of HFLM's"
    )
    same = all(a == b for a, b in acc.values())
    print(
        f"accuracy identical on the group and every subject: {same}; {requests} requests, "
        f"max |delta loglikelihood| {worst:.3g}, is_greedy differing {greedy_differ}"
    )
    print(
        f"cache: hit rate {stats.hit_rate:.1%} ({stats.hit_tokens:,} of {stats.prompt_tokens:,} prompt tokens), "
        f"{stats.requests} lookups, {stats.cached_tokens:,} tokens cached, {stats.evicted_tokens:,} evicted"
    )
    if args.json:
        payload = {
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": info,
            "systems": {
                label: {k: v for k, v in r.items() if k != "samples"}
                for label, r in (("HFLM", hf), ("PrefixCacheLM", pc))
            },
            "accuracy": acc,
            "max_abs_delta_loglikelihood": worst,
            "is_greedy_differing": greedy_differ,
            "requests": requests,
            "cache": {"hit_rate": stats.hit_rate, "hit_tokens": stats.hit_tokens, "prompt_tokens": stats.prompt_tokens},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2, default=float) + "\n")
        print(f"figures written to {args.json}")
    return 0 if same and greedy_differ == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
