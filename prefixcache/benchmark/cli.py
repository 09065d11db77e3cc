"""The ``bench`` subcommand of ``python -m prefixcache``: its options, their checks, and the run.

:func:`add_arguments` puts the options on the subcommand's parser; :func:`run_bench`
checks them, loads the model, builds the systems each workload compares, runs them
(:mod:`.runner`) and prints and writes the report (:mod:`.report`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..config import CacheConfig, parse_budget
from ..hf.presets import PRESETS
from .workloads import WORKLOADS, make_workload, prompt_lengths

__all__ = ["DEFAULT_SYSTEMS", "DTYPES", "SYSTEMS", "add_arguments", "run_bench"]

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_REQUESTS = {"fewshot": 100, "chat": 40, "longdoc": 24, "unique": 40, "sampling": 40}
QUICK_REQUESTS = {"fewshot": 12, "chat": 8, "longdoc": 6, "unique": 6, "sampling": 4}
SYSTEMS = ("no-cache", "hf-manual", "prefixcache", "ideal", "hf-cb")
DEFAULT_SYSTEMS = "no-cache,hf-manual,prefixcache,ideal"
OVERHEAD_MODELS = ("tiny", "default")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Put the ``bench`` subcommand's options on ``parser``."""
    parser.add_argument("--model", help="a local path or hub name (default: a built-in preset)")
    parser.add_argument(
        "--preset",
        default="default",
        choices=list(PRESETS),
        help="built-in config with seeded random weights: default (58M), tiny, llama-1b (Llama-3.2-1B's shape), "
        "gemma3 (51M, Gemma-3-shaped: sliding-window layers), qwen3.5 (58M, Qwen3.5-shaped: linear attention)",
    )
    parser.add_argument("--workload", default="fewshot", choices=[*WORKLOADS, "all"])
    parser.add_argument(
        "--requests", type=int, help="requests per workload (default: 100 fewshot, 40 chat, 24 longdoc, 40 unique)"
    )
    parser.add_argument("--budget", default="1GiB", help="pool budget, or a comma-separated list for a sweep")
    parser.add_argument("--host-budget", help="also run each budget with a host tier of this size")
    parser.add_argument("--host-dtype", choices=["same", "int8"], default="same", help="the host tier's dtype")
    parser.add_argument(
        "--window-ratio",
        help="prefixcache's window_ratio (sliding-window models: window rows per token of the pool; 1 holds "
        "as much as storing every layer; default 0.5), or a comma-separated list to run each",
    )
    parser.add_argument(
        "--state-share",
        type=float,
        help="prefixcache's state_share (recurrent models: the budget's share for snapshots)",
    )
    parser.add_argument(
        "--snapshot-interval", type=int, help="prefixcache's snapshot_interval (recurrent models; tokens, 0: none)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--systems",
        default=DEFAULT_SYSTEMS,
        help=f"comma-separated, from {', '.join(SYSTEMS)} (default: {DEFAULT_SYSTEMS}; hf-cb is opt-in)",
    )
    parser.add_argument("--batch", type=int, default=1, help="send requests in left-padded batches of N (default 1)")
    parser.add_argument("--overhead", action="store_true", help="also measure the cache's cost per request")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--plot", type=Path, help="draw speedups and hit rates here (PNG)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (not a measurement)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the benchmark ``args`` describes; a bad option exits through ``parser.error``.

    Returns 0 when every system's outputs matched no-cache's (and, with
    ``--overhead``, every overhead row's did and reused all it could), else 1.
    """
    from .. import hf
    from . import report
    from .ideal import Ideal
    from .runner import run_workload
    from .systems import HfManual, NoCache, PrefixCached, System

    budgets = [b.strip() for b in args.budget.split(",") if b.strip()]
    for budget in budgets:
        try:
            parse_budget(budget)
        except ValueError as err:
            parser.error(str(err))
    if args.host_budget is not None:
        try:
            parse_budget(args.host_budget)
        except ValueError as err:
            parser.error(str(err).replace("budget:", "--host-budget:", 1))
    if args.requests is not None and args.requests < 1:
        parser.error(f"--requests: expected at least 1, got {args.requests}")
    if args.batch < 1:
        parser.error(f"--batch: expected at least 1, got {args.batch}")
    if args.model and args.preset != "default":
        parser.error("--model and --preset: give one of them")
    ratios, options = _cache_options(args, parser)
    chosen = _systems(args.systems, parser)
    skipped: dict[str, str] = {}
    if args.batch > 1 and "hf-manual" in chosen:
        chosen.remove("hf-manual")
        skipped["hf-manual"] = (
            "serves one request at a time: the documented recipe reuses one prompt's prefix cache, while in a "
            "left-padded batch each row's prefix starts at another offset and rows may have different prefixes"
        )
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    torch.manual_seed(args.seed)
    model = hf.load_model(args.model, preset=args.preset, dtype=dtype, device=device, seed=args.seed)
    encode = None
    if args.model:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model)
        encode = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    vocab = hf.vocab_size(model)
    params = sum(p.numel() for p in model.parameters())
    info = report.machine(device)
    print(
        f"prefixcache bench: seed {args.seed}, model {args.model or 'built-in ' + args.preset} "
        f"({params / 1e6:.0f}M parameters), {args.dtype} on {device}, "
        f"batch size {args.batch}, systems {', '.join(chosen)}"
    )
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    for name, why in skipped.items():
        print(f"{name} not run: {why}")

    _warm_up(model, vocab, device)
    names = list(WORKLOADS) if args.workload == "all" else [args.workload]
    counts = QUICK_REQUESTS if args.quick else DEFAULT_REQUESTS
    host_dtype = torch.int8 if args.host_dtype == "int8" else None
    largest = max(parse_budget(b) for b in budgets)
    summaries: dict[str, dict[str, Any]] = {}
    for name in names:
        workload = make_workload(
            name, args.requests or counts[name], seed=args.seed, vocab=vocab, encode=encode, quick=args.quick
        )
        positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        longest = max(n + r.new_tokens for n, r in zip(prompt_lengths(workload), workload.requests, strict=True))
        if isinstance(positions, int) and longest > positions:
            print(f"note: workload {name} reaches {longest} positions, beyond the model's {positions}")
        systems: list[System] = []
        for system in chosen:
            if system == "no-cache":
                systems.append(NoCache(model))
            elif system == "hf-manual":
                systems.append(HfManual(model))
            elif system == "ideal":
                systems.append(Ideal(model))
            elif system == "hf-cb":
                if name == "sampling":  # its engine takes one sequence per request
                    print("hf-cb not run on sampling: generate_batch returns one sequence per request")
                    continue
                systems.append(_hf_cb(model, largest, workload, parser))
            else:
                for budget, ratio in [(b, r) for b in budgets for r in ratios]:
                    # Labels: prefixcache, prefixcache[BUDGET], prefixcache[BUDGET wr=RATIO], each +host.
                    key = budget if len(ratios) == 1 else f"{budget} wr={ratio}"
                    opts = {**options, "window_ratio": ratio} if ratio is not None else options
                    label = (
                        "prefixcache"
                        if len(budgets) == len(ratios) == 1 and not args.host_budget
                        else f"prefixcache[{key}]"
                    )
                    systems.append(PrefixCached(model, budget, name=label, **opts))
                    if args.host_budget:
                        label = f"prefixcache[{key}+host{'-int8' if host_dtype else ''}]"
                        systems.append(
                            PrefixCached(
                                model, budget, label, host_budget=args.host_budget, host_dtype=host_dtype, **opts
                            )
                        )
        started = time.perf_counter()
        with _progress(len(workload.requests), name, disable=args.no_progress) as bar:
            result = run_workload(
                workload,
                systems,
                batch_size=args.batch,
                device=device,
                on_request=lambda _: bar.update(1),
                seed=args.seed,
            )
        summaries[name] = report.summarize(result)
        print(report.table(name, summaries[name]))
        print(f"({time.perf_counter() - started:.0f} s)\n")
    overhead: dict[str, Any] = {}
    if args.overhead:
        from .per_request import measure_preset

        n = 8 if args.quick else 100
        for preset in OVERHEAD_MODELS:
            overhead[preset] = measure_preset(
                preset, device=device, requests=n, seed=args.seed, repeats=1 if args.quick else 3
            )
        print(report.overhead_table(overhead))
        print(f"(float32 on {device}, {n} few-shot requests per model; bench/overhead.py runs the same measurement)\n")
    if args.json:
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        config["systems"] = chosen
        payload: dict[str, Any] = {"config": config, "machine": info, "skipped": skipped, "workloads": summaries}
        if overhead:
            payload["overhead"] = {k: dataclasses.asdict(v) for k, v in overhead.items()}
        report.write_json(args.json, payload)
        print(f"figures written to {args.json}")
    if args.plot:
        title = (
            f"{args.model or 'built-in ' + args.preset}, {args.dtype} on {info.get('gpu', info['cpu'])}, "
            f"seed {args.seed}, batch {args.batch}"
        )
        report.write_plot(args.plot, summaries, budgets=budgets if len(ratios) == 1 else budgets[:1], title=title)
        print(f"plot written to {args.plot}")
    ok = all(s["outputs_identical"] for s in summaries.values())
    ok = ok and all(r.differing == 0 and r.hit_tokens == r.reusable_tokens for r in overhead.values())
    return 0 if ok else 1


def _cache_options(
    args: argparse.Namespace, parser: argparse.ArgumentParser
) -> tuple[list[float | None], dict[str, Any]]:
    """The window ratios to run prefixcache with (``[None]``: wrap's default) and its other
    options from the command line, checked as ``wrap`` checks them."""
    ratios: list[float | None] = [None]
    if args.window_ratio is not None:
        try:
            ratios = [float(r) for r in args.window_ratio.split(",") if r.strip()]
        except ValueError:
            parser.error(f"--window-ratio: expected numbers in (0, 1], comma-separated; got {args.window_ratio!r}")
        if not ratios or len(set(ratios)) != len(ratios):
            parser.error(f"--window-ratio: expected distinct numbers in (0, 1], got {args.window_ratio!r}")
    options: dict[str, Any] = {}
    if args.state_share is not None:
        options["state_share"] = args.state_share
    if args.snapshot_interval is not None:
        options["snapshot_interval"] = args.snapshot_interval
    for ratio in ratios:
        try:
            values: dict[str, Any] = {**options, "window_ratio": ratio} if ratio is not None else options
            CacheConfig.of(**values)
        except (TypeError, ValueError) as err:
            parser.error("--" + str(err).replace("_", "-", 1))
    return ratios, options


def _systems(spec: str, parser: argparse.ArgumentParser) -> list[str]:
    """The systems named in ``--systems``, no-cache first (it is the reference)."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        parser.error(f"--systems: unknown {unknown}; expected names from {', '.join(SYSTEMS)}")
    if len(set(names)) != len(names):
        parser.error(f"--systems: a system named twice in {spec!r}")
    if "no-cache" not in names:
        parser.error("--systems: no-cache must be among them (the baseline every figure is measured against)")
    return ["no-cache"] + [n for n in names if n != "no-cache"]


def _hf_cb(model: Any, budget: int, workload: Any, parser: argparse.ArgumentParser) -> Any:
    from .continuous import HfContinuousBatching

    try:
        return HfContinuousBatching(model, budget, workload)
    except ImportError as err:  # an older transformers
        parser.error(f"--systems hf-cb: needs transformers with ContinuousBatchingConfig ({err})")


def _warm_up(model: Any, vocab: int, device: torch.device) -> None:
    """A few untimed requests, so that no system pays for first-call costs."""
    g = torch.Generator().manual_seed(12345)
    for n in (64, 256):
        ids = torch.randint(3, vocab, (1, n), generator=g).to(device)
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False)


class _progress:
    """A tqdm progress bar on stderr (tqdm comes with transformers)."""

    def __init__(self, total: int, name: str, *, disable: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=name, unit="req", disable=disable, file=sys.stderr, leave=False)

    def __enter__(self) -> Any:
        return self.bar

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
