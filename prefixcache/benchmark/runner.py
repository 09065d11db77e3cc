"""Run several systems over one workload, batch by batch, and measure them.

The requests are cut into batches in arrival order (:func:`.workloads.batches`);
with ``batch=1`` each request is sent alone. Each batch goes to every system in
turn (the order rotates from batch to batch, so no system always runs first), each
with its own cache state and its own history (a chat turn's prompt holds the
system's own earlier replies). The clock runs around the system's ``run`` alone,
with the device synchronized at both ends. A request's latency is its batch's
time: every request of a batch waits for the batch to return. Its time to first
token is when its first generated token is known: from the system's own
per-request timestamps when it has them, otherwise when the batch's first
generated tokens reach a streamer.
"""

from __future__ import annotations

import math
import statistics
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..tree import RadixTree
from .systems import PrefixCached, System, padded_requests
from .workloads import Workload, batches, prompt_ids

__all__ = ["SystemResult", "WorkloadResult", "run_workload"]


class _FirstToken:
    """A streamer that notes when the first generated token arrives (the first ``put``
    is the prompt itself)."""

    def __init__(self) -> None:
        self.calls = 0
        self.at: float | None = None

    def put(self, value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2:
            self.at = time.perf_counter()

    def end(self) -> None:
        if self.at is None:
            self.at = time.perf_counter()


@dataclass
class SystemResult:
    name: str
    ttft_s: list[float] = field(default_factory=list)
    """Per request: from its batch's start to its first generated token."""
    latency_s: list[float] = field(default_factory=list)
    """Per request: its batch's time."""
    batch_s: list[float] = field(default_factory=list)
    """Per batch: the time of ``run``."""
    hit_tokens: int | None = None
    prompt_tokens: int | None = None
    peak_pool_bytes: int | None = None
    hit_rate_over_time: list[float] = field(default_factory=list)
    exact: bool = True
    host_hit_tokens: int | None = None
    bytes_to_host: int | None = None
    bytes_to_device: int | None = None
    memory: dict[str, Any] | None = None
    """For prefixcache: its pools' sizes and what they held at the peak (``PrefixCached.memory``)."""

    def summary(self, baseline: SystemResult | None, ideal: SystemResult | None) -> dict[str, Any]:
        total = sum(self.batch_s)
        ttft = sorted(self.ttft_s)
        hit_rate = None
        if self.hit_tokens is not None and self.prompt_tokens:
            hit_rate = self.hit_tokens / self.prompt_tokens
        out: dict[str, Any] = {
            "requests": len(self.latency_s),
            "batches": len(self.batch_s),
            "ttft_mean_ms": 1e3 * statistics.fmean(ttft),
            "ttft_p50_ms": 1e3 * statistics.median(ttft),
            "ttft_p99_ms": 1e3 * _percentile(ttft, 0.99),
            "total_s": total,
            "speedup": sum(baseline.batch_s) / total if baseline else None,
            "efficiency": sum(ideal.batch_s) / total if ideal else None,
            "hit_rate": hit_rate,
            "peak_pool_bytes": self.peak_pool_bytes,
            "exact": self.exact,
            "host_hit_tokens": self.host_hit_tokens,
            "bytes_to_host": self.bytes_to_host,
            "bytes_to_device": self.bytes_to_device,
        }
        if self.memory is not None:
            out["memory"] = self.memory
        return out


@dataclass
class WorkloadResult:
    workload: Workload
    systems: dict[str, SystemResult]
    best_hit_rate: float
    mismatches: dict[str, int]
    prompt_lengths: list[int]
    batch_size: int
    notes: list[str] = field(default_factory=list)


def run_workload(
    workload: Workload,
    systems: Sequence[System],
    *,
    batch_size: int = 1,
    device: torch.device | None = None,
    on_request: Callable[[int], None] | None = None,
    seed: int = 0,
) -> WorkloadResult:
    """Send every request of ``workload`` to every system in batches of up to ``batch_size``;
    compare outputs with the first system's (the uncached one) and keep the best hit rate
    an unbounded cache could reach with that batching (a row reuses what earlier batches
    left). Systems that take no batches must not be given ``batch_size > 1``. Every
    system is closed at the end, however the run ends."""
    if batch_size > 1 and any(not s.takes_batches for s in systems):
        names = [s.name for s in systems if not s.takes_batches]
        raise ValueError(f"systems {names} serve one request at a time; got batch size {batch_size}")
    try:
        return _run(workload, systems, batch_size, device, on_request, seed)
    finally:
        for system in systems:
            system.close()


def _run(
    workload: Workload,
    systems: Sequence[System],
    batch_size: int,
    device: torch.device | None,
    on_request: Callable[[int], None] | None,
    seed: int,
) -> WorkloadResult:
    results = {s.name: SystemResult(s.name, exact=s.exact) for s in systems}
    histories: dict[str, list[torch.Tensor]] = {s.name: [] for s in systems}  # in arrival order
    mismatches = {s.name: 0 for s in systems}
    reference = RadixTree()  # every token sequence seen, as an unbounded cache would hold it
    reusable_total = prompt_total = 0
    lengths = []
    reference_name = systems[0].name
    for b, indices in enumerate(batches(workload, batch_size)):
        requests = [workload.requests[i] for i in indices]
        order = list(systems[b % len(systems) :]) + list(systems[: b % len(systems)])
        reusable = []
        for request in requests:
            tokens = prompt_ids(request, histories[reference_name], device)[0].tolist()
            n = len(tokens)
            reusable.append(min(reference.peek(array("i", tokens)), n - 1))
            reusable_total += reusable[-1]
            prompt_total += n
            lengths.append(n)
        outputs: dict[str, list[torch.Tensor]] = {}
        for system in order:
            prompts = [prompt_ids(r, histories[system.name], device) for r in requests]
            batch = padded_requests(requests, prompts)
            prepared = system.prepare(batch, reusable)
            streamer = _FirstToken()
            torch.manual_seed(seed + b)  # every system samples with the same draws
            _sync(device)
            start = time.perf_counter()
            served = system.run(batch, prepared, streamer)
            _sync(device)
            end = time.perf_counter()
            result = results[system.name]
            result.batch_s.append(end - start)
            firsts = served.first_token_at or [streamer.at or end] * len(requests)
            for first in firsts:
                result.ttft_s.append(first - start)
                result.latency_s.append(end - start)
            outputs[system.name] = [_as_sequence(seq, device) for seq in served.sequences]
            histories[system.name].extend(outputs[system.name])
            _record_cache(system, result)
        for name, outs in outputs.items():
            mismatches[name] += sum(not torch.equal(a, b) for a, b in zip(outs, outputs[reference_name], strict=True))
        # What an unbounded prefix cache holds after this batch: each prompt and reply but
        # for the last generated token, whose KV is never computed.
        for seq in outputs[reference_name]:
            for row in seq:  # each sample of a request is its own branch
                seen = row[:-1].tolist()
                reference.insert(seen, array("q", bytes(8 * len(seen))))
        if on_request is not None:
            for i in indices:
                on_request(i)
    notes = [line for s in systems for line in s.notes()]
    return WorkloadResult(workload, results, reusable_total / prompt_total, mismatches, lengths, batch_size, notes)


def _record_cache(system: System, result: SystemResult) -> None:
    hits = system.hits()
    if hits is not None:
        result.hit_tokens, result.prompt_tokens = hits
        result.hit_rate_over_time.append(hits[0] / hits[1] if hits[1] else 0.0)
    if isinstance(system, PrefixCached):
        stats = system.cached.cache.stats
        result.peak_pool_bytes = system.peak_bytes  # the pool, the window pool and the snapshot pool
        result.memory = system.memory()
        if system.cached.cache.host_pool is not None:
            result.host_hit_tokens = stats.host_hit_tokens
            result.bytes_to_host, result.bytes_to_device = stats.bytes_to_host, stats.bytes_to_device


def _as_sequence(sequence: Any, device: torch.device | None) -> torch.Tensor:
    if isinstance(sequence, torch.Tensor):
        return sequence
    return torch.tensor([sequence], dtype=torch.long, device=device)


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values: the smallest value with at
    least a fraction ``q`` of the values at or below it."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]
