"""Wrap a model, send prompts that share a system prompt, and see what the cache saved.

python examples/wrap_hf_model.py                    # built-in 58M Llama config, random weights
python examples/wrap_hf_model.py --model gpt2       # a local path or hub name, with its tokenizer
"""

from __future__ import annotations

import argparse
import time

import torch

import prefixcache

SYSTEM = (
    "You are a careful assistant for a hardware store. Answer in one short sentence, name the aisle "
    "when you know it, and never invent a product the store does not sell. "
) * 4
QUESTIONS = [
    "Where are the wood screws?",
    "Do you sell cordless drills?",
    "What glue works on ceramic?",
    "Which aisle has garden hoses?",
    "Can I rent a floor sander?",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a local path or hub name; default: the built-in model")
    parser.add_argument("--preset", default="default", choices=["default", "tiny"], help="built-in model size")
    parser.add_argument("--new-tokens", type=int, default=8)
    args = parser.parse_args()

    model = prefixcache.load_model(args.model, preset=args.preset)
    if args.model:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model)
        prompts = [tokenizer(SYSTEM + q, return_tensors="pt").input_ids for q in QUESTIONS]
    else:
        # No tokenizer without a download: stand-in token ids of realistic lengths.
        g = torch.Generator().manual_seed(0)
        vocab = model.config.vocab_size
        system = torch.randint(3, vocab, (300,), generator=g)
        prompts = [torch.cat([system, torch.randint(3, vocab, (12,), generator=g)]).unsqueeze(0) for _ in QUESTIONS]

    cached = prefixcache.wrap(model, budget="256MiB")
    plain_s = cached_s = 0.0
    for i, ids in enumerate(prompts):
        t0 = time.perf_counter()
        want = model.generate(ids, max_new_tokens=args.new_tokens, do_sample=False)
        t1 = time.perf_counter()
        got = cached.generate(ids, max_new_tokens=args.new_tokens, do_sample=False)
        t2 = time.perf_counter()
        assert torch.equal(got, want), "the cache changed the output"
        plain_s += t1 - t0
        cached_s += t2 - t1
        print(f"prompt {i}: {ids.shape[1]} tokens, {1e3 * (t1 - t0):7.1f} ms plain, {1e3 * (t2 - t1):7.1f} ms cached")

    stats = cached.cache.stats
    print(f"hit rate {stats.hit_rate:.1%} ({stats.hit_tokens} of {stats.prompt_tokens} prompt tokens reused)")
    print(
        f"time: {1e3 * plain_s:.0f} ms plain, {1e3 * cached_s:.0f} ms cached, {1e3 * (plain_s - cached_s):.0f} ms saved"
    )
    print(f"outputs identical: yes; pool {stats.bytes_used / 2**20:.1f} MiB used of {stats.bytes_reserved / 2**20:.0f}")


if __name__ == "__main__":
    main()
