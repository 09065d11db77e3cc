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

__all__ = ["machine", "summarize", "table", "write_json", "write_plot"]


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
        "prompt_tokens_mean": sum(result.prompt_lengths) / len(result.prompt_lengths),
        "best_hit_rate": result.best_hit_rate,
        # Systems that may change outputs (an int8 host tier) report agreement instead.
        "outputs_identical": not any(n for name, n in result.mismatches.items() if systems[name].exact),
        "mismatched_requests": result.mismatches,
        "systems": {},
    }
    for name, sr in systems.items():
        summary = sr.summary(baseline, ideal)
        summary["ttft_ms"] = [1e3 * t for t in sr.ttft_s]
        summary["total_ms"] = [1e3 * t for t in sr.total_s]
        summary["hit_rate_over_time"] = sr.hit_rate_over_time
        out["systems"][name] = summary
    return out


def table(name: str, summary: dict[str, Any]) -> str:
    """A table a person reads at a glance."""
    head = (
        f"{'system':<30}{'TTFT mean':>10}{'p50':>8}{'p99':>8}{'total s':>9}{'speedup':>9}"
        f"{'effic.':>8}{'hit rate':>10}{'best':>7}{'peak pool':>11}"
    )
    lines = [f"workload {name}: {summary['description']}", head, "-" * len(head)]
    for system, s in summary["systems"].items():
        rate = f"{s['hit_rate']:.1%}" if s["hit_rate"] is not None else "-"
        best = f"{summary['best_hit_rate']:.1%}" if s["hit_rate"] is not None else "-"
        peak = f"{s['peak_pool_bytes'] / 2**20:.1f} MiB" if s["peak_pool_bytes"] is not None else "-"
        speedup = f"{s['speedup']:.2f}x" if s["speedup"] is not None else "-"
        eff = f"{s['efficiency']:.2f}" if s["efficiency"] is not None and system.startswith("prefixcache") else "-"
        lines.append(
            f"{system:<30}{s['ttft_mean_ms']:>8.1f}ms{s['ttft_p50_ms']:>6.1f}ms{s['ttft_p99_ms']:>6.1f}ms"
            f"{s['total_s']:>9.2f}{speedup:>9}{eff:>8}{rate:>10}{best:>7}{peak:>11}"
        )
    exact = {k: v for k, v in summary["mismatched_requests"].items() if summary["systems"][k]["exact"]}
    same = "yes" if summary["outputs_identical"] else f"NO {exact}"
    lines.append(f"outputs identical to no-cache: {same}")
    for system, s in summary["systems"].items():
        if s.get("host_hit_tokens") is not None:
            lines.append(
                f"{system}: {s['host_hit_tokens']} hit tokens came from the host tier; "
                f"{s['bytes_to_host'] / 2**20:.1f} MiB moved to the host, {s['bytes_to_device'] / 2**20:.1f} MiB back"
            )
        if not s["exact"]:
            n = summary["requests"]
            agree = n - summary["mismatched_requests"][system]
            lines.append(f"{system}: greedy outputs equal to no-cache's on {agree} of {n} requests ({agree / n:.0%})")
    return "\n".join(lines)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2))


def write_plot(path: Path, results: dict[str, dict[str, Any]]) -> None:
    """Time to first token per request for each system, and hit rate over time."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise SystemExit("--plot needs matplotlib: pip install 'prefixcache[plot]'") from err
    fig, axes = plt.subplots(len(results), 2, figsize=(12, 3.6 * len(results)), squeeze=False)
    for row, (name, summary) in enumerate(results.items()):
        left, right = axes[row]
        for system, s in summary["systems"].items():
            left.plot(s["ttft_ms"], label=system, linewidth=1)
            if s["hit_rate_over_time"]:
                right.plot(s["hit_rate_over_time"], label=f"{system} (cumulative)")
        right.axhline(summary["best_hit_rate"], color="gray", linestyle="--", label="best possible (end)")
        left.set(title=f"{name}: time to first token", xlabel="request", ylabel="ms")
        left.set_yscale("log")
        right.set(title=f"{name}: token hit rate", xlabel="request", ylabel="hit rate", ylim=(0, 1))
        left.legend(fontsize=8)
        right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
