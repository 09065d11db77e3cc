"""Soak run: a long seeded stream of requests through one CachedModel, watching memory.

Workload (seeded, vocabulary of the model, ids from 3 up):
- 40% few-shot: one of 8 headers (64-192 tokens) and a question (8-24 tokens);
  prefill keeping the last logits, or generate 1 token;
- 25% chat: up to 12 live conversations sharing a 96-token system prompt; a turn is
  the whole history and a new user message (8-24 tokens), 4 tokens generated; a
  conversation past 384 tokens starts over;
- 25% unique: 32-128 fresh tokens, 2 generated (they share nothing and push the
  rest out of a small budget);
- 10% batches: 2-4 few-shot prompts, left-padded, 1 token generated.
A tenth of the single requests go to a second namespace.

Every ``--interval`` requests it prints requests/s and the hit rate over the
interval, the tokens evicted so far, the pool's bytes in use and reserved, and the
process's resident memory (RSS, after a garbage collection). At the end: RSS
after warm-up and at the end, ``cache._check()``, and how many of the requests
checked against the uncached model (every ``--verify-every``-th) differed. Before
the run, a no-cache baseline times the model alone on the first requests.

    python bench/soak.py [--requests 30000] [--seed 0] [--budget 512KiB] [--interval 2500]
                         [--threads 1] [--verify-every 100] [--baseline 500]

Exits with status 1 when ``_check()`` fails, the pool exceeds its budget, a pin
outlives its request, or a checked request differs from the uncached model.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import resource
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import prefixcache
from prefixcache import CachedModel
from prefixcache.hf import left_pad, transformers_version

LOGIT_TOLERANCE = 1e-4  # float32


@dataclass(frozen=True)
class Request:
    kind: str  # "prefill" or "generate"
    ids: torch.Tensor  # [batch, seq]
    mask: torch.Tensor | None
    new_tokens: int
    namespace: str | None
    conversation: int | None = None  # the chat this turn belongs to


class Stream:
    """The seeded request stream; chat turns depend on the replies fed back."""

    def __init__(self, seed: int, vocab: int) -> None:
        self.rng = random.Random(seed)
        self.vocab = vocab
        self.headers = [self.fresh(self.rng.randint(64, 192)) for _ in range(8)]
        self.system = self.fresh(96)
        self.chats: list[list[int]] = []

    def fresh(self, n: int) -> list[int]:
        return [self.rng.randrange(3, self.vocab) for _ in range(n)]

    def fewshot(self) -> list[int]:
        return self.rng.choice(self.headers) + self.fresh(self.rng.randint(8, 24))

    def next(self) -> Request:
        rng = self.rng
        namespace = "tenant-b" if rng.random() < 0.1 else None
        roll = rng.random()
        if roll < 0.4:
            ids = torch.tensor([self.fewshot()])
            if rng.random() < 0.5:
                return Request("prefill", ids, None, 0, namespace)
            return Request("generate", ids, None, 1, namespace)
        if roll < 0.65:
            if len(self.chats) < 12 and (not self.chats or rng.random() < 0.2):
                self.chats.append(list(self.system))
            k = rng.randrange(len(self.chats))
            if len(self.chats[k]) > 384:
                self.chats[k] = list(self.system)
            ids = torch.tensor([self.chats[k] + self.fresh(rng.randint(8, 24))])
            return Request("generate", ids, None, 4, None, conversation=k)
        if roll < 0.9:
            return Request("generate", torch.tensor([self.fresh(rng.randint(32, 128))]), None, 2, namespace)
        rows = [self.fewshot() for _ in range(rng.randint(2, 4))]
        ids, mask = left_pad(rows)
        return Request("generate", ids, mask, 1, None)

    def reply(self, req: Request, out: Any) -> None:
        if req.conversation is not None:
            self.chats[req.conversation] = out[0].tolist()


def serve(target: Any, req: Request, cached: bool) -> Any:
    """One request, through the cache or to the model alone; returns what it returned."""
    if req.kind == "prefill":
        if cached:
            return target.prefill(req.ids, req.mask, namespace=req.namespace, logits_to_keep=1).logits
        with torch.no_grad():
            return target(input_ids=req.ids, attention_mask=req.mask, logits_to_keep=1).logits
    # Padding is given by the mask; naming the end-of-sequence token as the pad token keeps
    # generate from guessing a mask (or warning) when a prompt holds a token that looks like padding.
    kwargs: dict[str, Any] = dict(max_new_tokens=req.new_tokens, do_sample=False)
    kwargs["pad_token_id"] = (
        target.model.generation_config.eos_token_id if cached else target.generation_config.eos_token_id
    )
    if cached:
        kwargs["namespace"] = req.namespace
    return target.generate(req.ids, attention_mask=req.mask, **kwargs)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype.is_floating_point:
        return a.shape == b.shape and float((a - b).abs().max()) <= LOGIT_TOLERANCE
    return torch.equal(a, b)


def rss_bytes() -> int:
    """Resident set size now, from /proc/self/statm; else the peak from getrusage."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


class Meter:
    """Counts finished requests and prints a row every ``interval`` of them."""

    HEADER = f"{'requests':>9} {'elapsed s':>9} {'req/s':>7} {'hit rate':>8} {'evicted tok':>11} "
    HEADER += f"{'pool used':>10} {'pool rsvd':>10} {'RSS MiB':>8}"

    def __init__(self, cached: CachedModel, total: int, interval: int, warmup: int) -> None:
        self.cached, self.total, self.interval, self.warmup = cached, total, interval, warmup
        self.lock = threading.Lock()
        self.done = 0
        self.start = self.last_time = time.perf_counter()
        s = cached.cache.stats
        self.last_hit, self.last_prompt = s.hit_tokens, s.prompt_tokens
        self.rss_warm: int | None = None
        self.rss_min = self.rss_max = 0
        self.problems: list[str] = []

    def finish_one(self) -> None:
        with self.lock:
            self.done += 1
            if self.done == self.warmup:
                gc.collect()
                self.rss_warm = self.rss_min = self.rss_max = rss_bytes()
            if self.done % self.interval == 0 or self.done == self.total:
                self.row()

    def row(self) -> None:
        now = time.perf_counter()
        s = self.cached.cache.stats
        gc.collect()
        rss = rss_bytes()
        if self.rss_warm is not None:
            self.rss_min, self.rss_max = min(self.rss_min, rss), max(self.rss_max, rss)
        prompt = s.prompt_tokens - self.last_prompt
        hit_rate = (s.hit_tokens - self.last_hit) / prompt if prompt else 0.0
        n = self.done % self.interval or self.interval
        print(
            f"{self.done:>9} {now - self.start:>9.1f} {n / (now - self.last_time):>7.1f} {hit_rate:>8.1%} "
            f"{s.evicted_tokens:>11} {s.bytes_used:>10} {s.bytes_reserved:>10} {mib(rss):>8}",
            flush=True,
        )
        if s.bytes_reserved > self.cached.cache.pool.budget or s.bytes_used > s.bytes_reserved:
            self.problems.append(
                f"pool bytes {s.bytes_used}/{s.bytes_reserved} over budget {self.cached.cache.pool.budget}"
            )
        self.last_time, self.last_hit, self.last_prompt = now, s.hit_tokens, s.prompt_tokens


def baseline(model: Any, seed: int, n: int) -> float:
    """Requests per second of the model alone over the stream's first ``n`` requests."""
    stream = Stream(seed, model.config.vocab_size)
    start = time.perf_counter()
    for _ in range(n):
        req = stream.next()
        stream.reply(req, serve(model, req, cached=False))
    return n / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=30_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", default="512KiB", help='pool budget ("256KiB", "1MiB", bytes)')
    parser.add_argument("--interval", type=int, default=2_500, help="requests between two rows")
    parser.add_argument("--threads", type=int, default=1, help="threads sending requests at once")
    parser.add_argument("--verify-every", type=int, default=100, help="check every n-th request (0: never)")
    parser.add_argument("--baseline", type=int, default=500, help="requests for the no-cache baseline (0: skip)")
    parser.add_argument("--preset", default="tiny", choices=["tiny", "default"], help="built-in model")
    args = parser.parse_args()
    if args.requests < 1 or args.interval < 1 or args.threads < 1:
        parser.error("--requests, --interval and --threads must be at least 1")

    model = prefixcache.load_model(preset=args.preset, seed=args.seed)
    cached = prefixcache.wrap(model, args.budget)
    pool = cached.cache.pool
    params = sum(p.numel() for p in model.parameters())
    print(f"seed {args.seed}; {args.requests} requests on {args.threads} thread(s); budget {args.budget}")
    print(
        f"model: built-in '{args.preset}' ({model.config.model_type}, {params / 1e6:.2f}M parameters, {pool.dtype}); "
        f"KV {pool.bytes_per_token} bytes/token, pool {pool.capacity} tokens"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}; "
        f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"transformers {transformers_version()}"
    )
    if args.baseline:
        rate = baseline(model, args.seed, min(args.baseline, args.requests))
        print(f"no-cache baseline: {rate:.1f} req/s over the first {min(args.baseline, args.requests)} requests")
    gc.collect()
    rss_start = rss_bytes()
    warmup = min(args.interval, args.requests)
    meter = Meter(cached, args.requests, args.interval, warmup)
    print(f"RSS before the run {mib(rss_start)} MiB; warm-up {warmup} requests\n")
    print(meter.HEADER, flush=True)

    counter = iter(range(args.requests))
    counter_lock = threading.Lock()
    checked = [0]
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        stream = Stream(args.seed + k, model.config.vocab_size)
        try:
            while True:
                with counter_lock:
                    i = next(counter, None)
                if i is None:
                    return
                req = stream.next()
                out = serve(cached, req, cached=True)
                if args.verify_every and i % args.verify_every == 0:
                    checked[0] += 1
                    want = serve(model, req, cached=False)
                    if not same(out, want):
                        meter.problems.append(f"request {i} ({req.kind}, {list(req.ids.shape)}) differs")
                stream.reply(req, out)
                meter.finish_one()
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    elapsed = time.perf_counter() - meter.start

    s = cached.cache.stats
    try:
        cached.cache._check()
        check = "ok"
    except AssertionError as err:
        check = f"FAILED: {err}"
        meter.problems.append(check)
    if s.pinned_tokens:
        meter.problems.append(f"{s.pinned_tokens} tokens still pinned")
    gc.collect()
    rss_end = rss_bytes()
    warm = meter.rss_warm or rss_start
    print(f"\n{args.requests} requests in {elapsed:.1f} s ({args.requests / elapsed:.1f} req/s)")
    print(
        f"hit rate {s.hit_rate:.1%} overall; {s.inserted_tokens} tokens inserted, {s.evicted_tokens} evicted; "
        f"pool {s.bytes_used}/{s.bytes_reserved} bytes (budget {pool.budget})"
    )
    print(
        f"RSS: {mib(rss_start)} MiB before the run, {mib(warm)} MiB after warm-up, {mib(rss_end)} MiB at the end "
        f"({(rss_end - warm) / 2**20:+.1f} MiB since warm-up; "
        f"{mib(meter.rss_min)}-{mib(meter.rss_max)} MiB at the rows after it)"
    )
    differ = sum("differs" in p for p in meter.problems)
    print(f"checked against the uncached model: {checked[0]} requests, {differ} differ")
    print(f"cache._check(): {check}")
    for problem in meter.problems[:10]:
        print(f"problem: {problem}")
    return 1 if meter.problems else 0


if __name__ == "__main__":
    sys.exit(main())
