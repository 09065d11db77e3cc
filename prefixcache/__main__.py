"""``python -m prefixcache bench``: what prefix caching buys, against the baselines.

python -m prefixcache bench                         # few-shot workload, built-in 58M model
python -m prefixcache bench --workload all --json out.json --plot out.png
python -m prefixcache bench --budget 1GiB,64MiB,16MiB   # a budget sweep
python -m prefixcache bench --workload chat --budget 16MiB --host-budget 1GiB   # with and without a host tier
python -m prefixcache bench --preset gemma3 --workload longdoc --budget 128MiB --window-ratio 1,0.5,0.25
python -m prefixcache bench --preset qwen3.5 --workload chat --snapshot-interval 256
python -m prefixcache bench --model Qwen/Qwen2.5-0.5B --device cuda --dtype bfloat16
python -m prefixcache bench --preset llama-1b --device cuda --dtype bfloat16 --systems no-cache,prefixcache,ideal,hf-cb
python -m prefixcache bench --batch 8               # left-padded batches of 8, as evaluation harnesses send them
python -m prefixcache bench --overhead              # also the cache's cost per request, tiny and default model
python -m prefixcache bench --quick                 # a smoke test under a minute
python -m prefixcache demo                          # one cached request, explained
python -m prefixcache eval --model_args pretrained=PATH --tasks mmlu --num_fewshot 5   # lm-eval, through the cache
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from .benchmark.cli import DTYPES, add_arguments, run_bench

__all__ = ["DTYPES", "main"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["eval"]:  # every argument after it is lm-eval's
        return run_eval(argv[1:])
    parser = argparse.ArgumentParser(
        prog="prefixcache", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="run the benchmark")
    add_arguments(bench)
    commands.add_parser(
        "eval",
        help="lm-evaluation-harness's command line with the prefixcache model (needs the lm-eval extra)",
        add_help=False,
    )
    demo = commands.add_parser("demo", help="one cached request on the built-in model, explained")
    demo.add_argument("--model", help="a local path or hub name")
    args = parser.parse_args(argv)
    if args.command == "bench":
        return run_bench(args, parser)
    return run_demo(args)


def run_eval(argv: list[str]) -> int:
    try:
        from .lm_eval.cli import main as lm_eval_main
    except ImportError as err:
        print(f"prefixcache eval: {err}", file=sys.stderr)
        return 2
    return lm_eval_main(argv)


def run_demo(args: argparse.Namespace) -> int:
    from . import hf

    model = hf.load_model(args.model, preset="default")
    cached = hf.wrap(model, "256MiB")
    vocab = hf.vocab_size(model)
    g = torch.Generator().manual_seed(0)
    header = torch.randint(3, vocab, (1, 500), generator=g)
    for i in range(3):
        prompt = torch.cat([header, torch.randint(3, vocab, (1, 40), generator=g)], dim=1)
        start = time.perf_counter()
        cached.generate(prompt, max_new_tokens=1, do_sample=False)
        took = time.perf_counter() - start
        s = cached.cache.stats
        print(f"request {i}: {prompt.shape[1]} prompt tokens, {1e3 * took:.0f} ms, hit rate so far {s.hit_rate:.1%}")
    print(cached)
    return 0


if __name__ == "__main__":
    sys.exit(main())
