"""What the benchmark prints and writes: the machine, a table, JSON and a plot."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from .. import hf
from .runner import WorkloadResult

__all__ = ["machine", "memory_line", "overhead_table", "summarize", "table", "write_json", "write_plot"]


def machine(device: torch.device) -> dict[str, Any]:
    """The facts a reader needs to place the figures."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": hf.transformers_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def summarize(result: WorkloadResult) -> dict[str, Any]:
    """Every figure of one workload, as plain data."""
    systems = result.systems
    baseline = systems.get("no-cache")
    ideal = systems.get("ideal")
    out: dict[str, Any] = {
        "description": result.workload.description,
        "requests": len(result.workload.requests),
        "batch_size": result.batch_size,
        "prompt_tokens_mean": sum(result.prompt_lengths) / len(result.prompt_lengths),
        "best_hit_rate": result.best_hit_rate,
        # Systems that may change outputs (an int8 host tier) report agreement instead.
        "outputs_identical": not any(n for name, n in result.mismatches.items() if systems[name].exact),
        "mismatched_requests": result.mismatches,
        "notes": result.notes,
        "systems": {},
    }
    for name, sr in systems.items():
        summary = sr.summary(baseline, ideal)
        summary["ttft_ms"] = [1e3 * t for t in sr.ttft_s]
        summary["total_ms"] = [1e3 * t for t in sr.latency_s]
        summary["batch_ms"] = [1e3 * t for t in sr.batch_s]
        summary["hit_rate_over_time"] = sr.hit_rate_over_time
        out["systems"][name] = summary
    return out


def table(name: str, summary: dict[str, Any]) -> str:
    """A table a person reads at a glance."""
    head = (
        f"{'system':<30}{'TTFT mean':>10}{'p50':>8}{'p99':>8}{'total s':>9}{'speedup':>9}"
        f"{'effic.':>8}{'hit rate':>10}{'best':>7}{'peak pool':>11}"
    )
    size = summary["batch_size"]
    sent = "one request at a time" if size == 1 else f"in left-padded batches of up to {size} (arrival order)"
    lines = [f"workload {name}, sent {sent}: {summary['description']}", head, "-" * len(head)]
    for system, s in summary["systems"].items():
        rate = f"{s['hit_rate']:.1%}" if s["hit_rate"] is not None else "-"
        best = f"{summary['best_hit_rate']:.1%}" if s["hit_rate"] is not None else "-"
        peak = f"{s['peak_pool_bytes'] / 2**20:.1f} MiB" if s["peak_pool_bytes"] is not None else "-"
        speedup = f"{s['speedup']:.2f}x" if s["speedup"] is not None else "-"
        eff = f"{s['efficiency']:.2f}" if s["efficiency"] is not None and system.startswith("prefixcache") else "-"
        lines.append(
            f"{system:<30}{_ms(s['ttft_mean_ms']):>10}{_ms(s['ttft_p50_ms']):>8}{_ms(s['ttft_p99_ms']):>8}"
            f"{s['total_s']:>9.2f}{speedup:>9}{eff:>8}{rate:>10}{best:>7}{peak:>11}"
        )
    exact = {k: v for k, v in summary["mismatched_requests"].items() if summary["systems"][k]["exact"]}
    same = "yes" if summary["outputs_identical"] else f"NO {exact}"
    lines.append(f"outputs identical to no-cache: {same}")
    if size > 1:
        lines.append(
            f"{next(iter(summary['systems'].values()))['batches']} batches; a request's latency is its batch's time, "
            "its TTFT the time to its first token from its batch's start"
        )
    for system, s in summary["systems"].items():
        if s.get("host_hit_tokens") is not None:
            lines.append(
                f"{system}: {s['host_hit_tokens']} hit tokens came from the host tier; "
                f"{s['bytes_to_host'] / 2**20:.1f} MiB moved to the host, {s['bytes_to_device'] / 2**20:.1f} MiB back"
            )
        memory = s.get("memory")
        if memory is not None and (memory["window_bytes_per_token"] or memory["bytes_per_snapshot"]):
            lines.append(f"{system}: {memory_line(memory)}")
        if not s["exact"]:
            n = summary["requests"]
            agree = n - summary["mismatched_requests"][system]
            lines.append(f"{system}: greedy outputs equal to no-cache's on {agree} of {n} requests ({agree / n:.0%})")
    lines.extend(summary["notes"])
    return "\n".join(lines)


def memory_line(m: dict[str, Any]) -> str:
    """What a cache with a window pool or a snapshot pool holds: the bytes of a row and of a
    snapshot, the budget's split, and what was held when the pools held the most bytes."""
    parts = [f"pool {m['bytes_per_token']:,} B/token x {m['capacity_tokens']:,}"]
    if m["window_bytes_per_token"]:
        parts.append(f"window pool {m['window_bytes_per_token']:,} B/token x {m['window_capacity']:,}")
    if m["bytes_per_snapshot"]:
        parts.append(f"snapshot pool {m['bytes_per_snapshot']:,} B/snapshot x {m['snapshot_capacity']:,}")
    held = f"{m['cached_tokens_at_peak']:,} tokens"
    if m["window_bytes_per_token"]:
        held += f", {m['window_tokens_at_peak']:,} window rows"
    if m["bytes_per_snapshot"]:
        held += f", {m['snapshots_at_peak']:,} snapshots"
    line = "; ".join(parts) + f"; at the peak {held}"
    if m["window_bytes_per_token"]:
        per = m["bytes_per_cached_token"]
        used = f"{per:,.0f}" if per is not None else "-"
        line += (
            f"; pool + window: {m['reserved_bytes_per_token']:,.0f} B per token it can hold, "
            f"{used} B per token cached at the peak"
        )
    return line


def _ms(ms: float) -> str:
    """A duration in a column of 8: milliseconds, or seconds from 10 s up."""
    return f"{ms:.1f}ms" if ms < 10_000 else f"{ms / 1e3:.1f}s"


def overhead_table(rows: dict[str, Any]) -> str:
    """The cache's cost per request, one row per model (see :mod:`.overhead`)."""
    steps = list(next(iter(rows.values())).steps)
    head = f"{'model':<10}{'model alone':>13}{'added':>9}{'quartiles':>15}" + "".join(f"{s:>14}" for s in steps)
    lines = [
        "added cost per request of the cache (microseconds; every prompt cached, one token generated; "
        "each step timed alone, median)",
        head,
        "-" * len(head),
    ]
    for name, r in rows.items():
        quart = f"{r.added_q1_us:.0f}..{r.added_q3_us:.0f}"
        lines.append(
            f"{name:<10}{r.model_us:>13.0f}{r.added_us:>9.0f}{quart:>15}"
            + "".join(f"{r.steps[s]:>14.1f}" for s in steps)
        )
    return "\n".join(lines)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2))


def write_plot(path: Path, results: dict[str, dict[str, Any]], *, budgets: list[str], title: str = "") -> None:
    """One picture: speedup over no-cache per workload and system; beside it the token hit
    rate, against the budget for a sweep (with speedup on a second axis), else per
    workload and system, each against the best any cache could reach."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise SystemExit("--plot needs matplotlib: pip install 'prefixcache[plot]'") from err
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.6))
    workloads = list(results)
    systems = [s for s in dict.fromkeys(n for r in results.values() for n in r["systems"]) if s != "no-cache"]
    palette = plt.get_cmap("tab10")
    colors = {system: palette(j % 10) for j, system in enumerate(systems)}
    width = 0.8 / max(1, len(systems))
    for j, system in enumerate(systems):
        xs = [i + (j - (len(systems) - 1) / 2) * width for i in range(len(workloads))]
        ys = [results[w]["systems"].get(system, {}).get("speedup") or 0.0 for w in workloads]
        bars = left.bar(xs, ys, width, label=system, color=colors[system])
        left.bar_label(bars, labels=[f"{y:.2f}" if y else "" for y in ys], fontsize=7, padding=1)
    left.axhline(1.0, color="gray", linewidth=1, linestyle="--")
    left.set_xticks(range(len(workloads)), [f"{w}\n(batch {results[w]['batch_size']})" for w in workloads])
    left.set(title="speedup over no-cache (total time)", ylabel="x faster than no-cache")
    left.legend(fontsize=8)
    if len(budgets) > 1:
        _hit_rate_sweep(right, results, budgets)
    else:
        _hit_rate_bars(right, results, colors)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _hit_rate_sweep(ax: Any, results: dict[str, dict[str, Any]], budgets: list[str]) -> None:
    """Hit rate (solid) and speedup (dotted, right axis) of prefixcache at each budget."""
    xs = list(range(len(budgets)))
    speed = ax.twinx()
    for w, summary in results.items():
        runs = [summary["systems"].get(f"prefixcache[{b}]") for b in budgets]
        line = ax.plot(xs, [r["hit_rate"] if r else None for r in runs], marker="o", label=f"{w}: hit rate")[0]
        ax.axhline(summary["best_hit_rate"], color=line.get_color(), linestyle="--", linewidth=1, alpha=0.6)
        speed.plot(xs, [r["speedup"] if r else None for r in runs], marker="x", linestyle=":", color=line.get_color())
    ax.set_xticks(xs, budgets)
    ax.set(title="prefixcache against its budget (dashed: best possible)", xlabel="budget", ylabel="token hit rate")
    ax.set_ylim(0, 1)
    speed.set_ylabel("speedup (dotted)")
    speed.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="lower right")


def _hit_rate_bars(ax: Any, results: dict[str, dict[str, Any]], colors: dict[str, Any]) -> None:
    """Token hit rate of every system that reuses KV, per workload, with the best possible."""
    workloads = list(results)
    systems = [
        s
        for s in dict.fromkeys(n for r in results.values() for n in r["systems"])
        if any(r["systems"].get(s, {}).get("hit_rate") is not None for r in results.values())
    ]
    width = 0.8 / max(1, len(systems))
    for j, system in enumerate(systems):
        xs = [i + (j - (len(systems) - 1) / 2) * width for i in range(len(workloads))]
        ys = [results[w]["systems"].get(system, {}).get("hit_rate") or 0.0 for w in workloads]
        bars = ax.bar(xs, ys, width, label=system, color=colors.get(system))
        ax.bar_label(bars, labels=[f"{y:.0%}" for y in ys], fontsize=7, padding=1)
    for i, w in enumerate(workloads):
        ax.hlines(results[w]["best_hit_rate"], i - 0.45, i + 0.45, color="black", linewidth=1.5)
    ax.set_xticks(range(len(workloads)), workloads)
    ax.set(title="token hit rate (black: best any cache could reach)", ylabel="prompt tokens reused", ylim=(0, 1))
    if systems:
        ax.legend(fontsize=8)
