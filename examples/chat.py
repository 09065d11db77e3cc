"""A multi-turn chat whose every turn reuses the whole conversation so far.

Each turn's prompt is the history (earlier turns and the model's replies) plus the
new user message. The replies' KV was stored when they were generated, so only the
new message is computed.

    python examples/chat.py                             # built-in 58M Llama config, random weights
    python examples/chat.py --model Qwen/Qwen2.5-0.5B-Instruct   # a local path or hub name with a chat template
"""

from __future__ import annotations

import argparse
import time

import torch

import prefixcache

USER_TURNS = [
    "Hi! I want to plan a three-day trip to Lisbon.",
    "What should I see on the first day?",
    "And where should I eat that evening?",
    "Can you suggest a day trip for the second day?",
    "Summarise the whole plan in three lines.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a local path or hub name; default: the built-in model")
    parser.add_argument("--preset", default="default", choices=["default", "tiny"], help="built-in model size")
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args()

    model = prefixcache.load_model(args.model, preset=args.preset)
    cached = prefixcache.wrap(model, budget="256MiB")
    tokenizer = None
    if args.model:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model)
    g = torch.Generator().manual_seed(0)
    messages: list[dict[str, str]] = []
    history = torch.empty(1, 0, dtype=torch.long)
    for turn, text in enumerate(USER_TURNS):
        if tokenizer is not None:
            messages.append({"role": "user", "content": text})
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
            ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
        else:
            # Stand-in token ids: the history plus a new "message" of 20 tokens.
            ids = torch.cat([history, torch.randint(3, model.config.vocab_size, (1, 20), generator=g)], dim=1)
        before = cached.cache.stats.hit_tokens
        t0 = time.perf_counter()
        out = cached.generate(ids, max_new_tokens=args.new_tokens, do_sample=False)
        elapsed = time.perf_counter() - t0
        reused = cached.cache.stats.hit_tokens - before
        reply = out[0, ids.shape[1] :]
        shown = tokenizer.decode(reply, skip_special_tokens=True) if tokenizer is not None else f"{len(reply)} tokens"
        print(f"turn {turn}: prompt {ids.shape[1]:4d} tokens, {reused:4d} reused, {1e3 * elapsed:6.0f} ms | {shown}")
        if tokenizer is not None:
            messages.append({"role": "assistant", "content": tokenizer.decode(reply, skip_special_tokens=True)})
        history = out
    print(f"hit rate over the chat: {cached.cache.stats.hit_rate:.1%}")


if __name__ == "__main__":
    main()
