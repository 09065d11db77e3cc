"""Run several systems over one workload, request by request, and measure them.

Each request goes to every system in turn (the order rotates from request to
request, so no system always runs first), each with its own cache state. The
clock runs around the system's ``run`` alone; time to first token is when the
first generated token reaches a streamer.
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

from ..radix import RadixTree
from .systems import PrefixCached, System
from .workloads import Workload, prompt_ids

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
    total_s: list[float] = field(default_factory=list)
    hit_tokens: int = 0
    prompt_tokens: int = 0
    peak_pool_bytes: int | None = None
    hit_rate_over_time: list[float] = field(default_factory=list)
    exact: bool = True
    host_hit_tokens: int | None = None
    bytes_to_host: int | None = None
    bytes_to_device: int | None = None

    def summary(self, baseline: SystemResult | None, ideal: SystemResult | None) -> dict[str, Any]:
        total = sum(self.total_s)
        ttft = sorted(self.ttft_s)
        out: dict[str, Any] = {
            "requests": len(self.total_s),
            "ttft_mean_ms": 1e3 * statistics.fmean(ttft),
            "ttft_p50_ms": 1e3 * statistics.median(ttft),
            "ttft_p99_ms": 1e3 * _percentile(ttft, 0.99),
            "total_s": total,
            "speedup": sum(baseline.total_s) / total if baseline else None,
            "efficiency": sum(ideal.total_s) / total if ideal else None,
            "hit_rate": self.hit_tokens / self.prompt_tokens if self.prompt_tokens else None,
            "peak_pool_bytes": self.peak_pool_bytes,
            "exact": self.exact,
            "host_hit_tokens": self.host_hit_tokens,
            "bytes_to_host": self.bytes_to_host,
            "bytes_to_device": self.bytes_to_device,
        }
        return out


@dataclass
class WorkloadResult:
    workload: Workload
    systems: dict[str, SystemResult]
    best_hit_rate: float
    mismatches: dict[str, int]
    prompt_lengths: list[int]


def run_workload(
    workload: Workload,
    systems: Sequence[System],
    *,
    on_request: Callable[[int], None] | None = None,
) -> WorkloadResult:
    """Send every request of ``workload`` to every system; compare outputs with the first
    system's (the uncached one) and keep the best hit rate an unbounded cache could reach."""
    results = {s.name: SystemResult(s.name) for s in systems}
    histories: dict[str, list[torch.Tensor]] = {s.name: [] for s in systems}
    mismatches = {s.name: 0 for s in systems}
    reference = RadixTree()  # every token sequence seen, as an unbounded cache would hold it
    reusable_total = prompt_total = 0
    lengths = []
    reference_name = systems[0].name
    for i, request in enumerate(workload.requests):
        order = list(systems[i % len(systems) :]) + list(systems[: i % len(systems)])
        reference_prompt = prompt_ids(request, histories[reference_name])
        n = reference_prompt.shape[1]
        reusable = min(reference.peek(array("i", reference_prompt[0].tolist())), n - 1)
        reusable_total += reusable
        prompt_total += n
        lengths.append(n)
        outputs = {}
        for system in order:
            prompt = prompt_ids(request, histories[system.name])
            prepared = system.prepare(request, prompt, reusable)
            streamer = _FirstToken()
            start = time.perf_counter()
            out = system.run(prompt, request, prepared, streamer)
            end = time.perf_counter()
            result = results[system.name]
            result.total_s.append(end - start)
            result.ttft_s.append((streamer.at or end) - start)
            histories[system.name].append(out)
            outputs[system.name] = out
            if isinstance(system, PrefixCached):
                stats = system.cached.cache.stats
                result.hit_tokens, result.prompt_tokens = stats.hit_tokens, stats.prompt_tokens
                result.peak_pool_bytes = system.peak_bytes
                result.hit_rate_over_time.append(stats.hit_rate)
                result.exact = system.exact
                if system.cached.cache.host_pool is not None:
                    result.host_hit_tokens = stats.host_hit_tokens
                    result.bytes_to_host, result.bytes_to_device = stats.bytes_to_host, stats.bytes_to_device
        for name, out in outputs.items():
            if not torch.equal(out, outputs[reference_name]):
                mismatches[name] += 1
        # What an unbounded prefix cache holds after this request: prompt and reply but
        # for the last generated token, whose KV is never computed.
        seen = outputs[reference_name][0, :-1].tolist()
        reference.insert(seen, array("q", bytes(8 * len(seen))))
        if on_request is not None:
            on_request(i)
    return WorkloadResult(workload, results, reusable_total / prompt_total, mismatches, lengths)


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values: the smallest value with at
    least a fraction ``q`` of the values at or below it."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]
