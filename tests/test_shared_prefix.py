"""Requests of one process that arrive together with the same new prefix compute it once.

The first request to match claims what it will compute; the others wait for its
insert, then hit. Checked: outputs equal the uncached model's, the shared prefix
is computed once, a failed first request hands over to a waiter, waits are
bounded, a batch's rows never wait on each other, and nothing stays pinned.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import prefixcache
from prefixcache import CachedModel

from .hooked_model import before_forward, greedy

SYSTEM = 600
THREADS = 8


def long_llama() -> Any:
    """A tiny float64 Llama that takes 700-token prompts."""
    config = AutoConfig.for_model(
        "llama",
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=1024,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float64).eval()


def prompts(seed: int) -> list[torch.Tensor]:
    """Prompts that share exactly the system prompt: their own parts start with distinct tokens."""
    rng = random.Random(seed)
    system = [rng.randrange(3, 96) for _ in range(SYSTEM)]
    firsts = rng.sample(range(3, 96), THREADS)
    return [
        torch.tensor([system + [first] + [rng.randrange(3, 96) for _ in range(rng.randint(4, 29))]]) for first in firsts
    ]


def pause(seconds: float) -> Callable[[], None]:
    def hold() -> None:
        threading.Event().wait(seconds)

    return hold


def first_call_only(action: Callable[[], None]) -> Callable[[], None]:
    """A hook that runs ``action`` at its first call only, whichever thread makes it."""
    lock = threading.Lock()
    called = False

    def hook() -> None:
        nonlocal called
        with lock:
            first, called = not called, True
        if first:
            action()

    return hook


def run_together(
    cached: CachedModel, ids: list[torch.Tensor], hold: Callable[[], None] = lambda: None
) -> tuple[list[Any], list[threading.Thread]]:
    """Send each prompt from its own thread, all at once; ``hold`` runs at every forward pass."""
    barrier = threading.Barrier(len(ids))
    outputs: list[Any] = [None] * len(ids)

    def worker(i: int) -> None:
        barrier.wait()
        try:
            outputs[i] = cached.generate(ids[i], max_new_tokens=2, do_sample=False)
        except Exception as err:
            outputs[i] = err

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(ids))]
    with before_forward(cached.model, hold):
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    return outputs, threads


def test_a_new_shared_prefix_is_computed_once() -> None:
    model = long_llama()
    cached = prefixcache.wrap(model, "8MiB", check=False)
    ids = prompts(0)
    # The first forward pass lingers so that every other request arrives while it runs.
    outputs, threads = run_together(cached, ids, hold=pause(0.5))
    assert not any(t.is_alive() for t in threads)
    for prompt, out in zip(ids, outputs, strict=True):
        assert isinstance(out, torch.Tensor) and torch.equal(out, greedy(model, prompt, 2))
    s = cached.cache.stats
    computed = s.prompt_tokens - s.hit_tokens
    own = sum(p.shape[1] - SYSTEM for p in ids)
    assert computed == SYSTEM + own, f"computed {computed} prompt tokens; once would be {SYSTEM + own}"
    assert s.shared_waits == THREADS - 1
    assert s.pinned_tokens == 0
    cached.cache._check()


def test_without_waiting_each_request_computes_it() -> None:
    model = long_llama()
    cached = prefixcache.wrap(model, "8MiB", check=False, shared_wait=0)
    ids = prompts(1)
    outputs, _ = run_together(cached, ids, hold=pause(0.2))
    for prompt, out in zip(ids, outputs, strict=True):
        assert torch.equal(out, greedy(model, prompt, 2))
    s = cached.cache.stats
    assert s.shared_waits == 0
    assert s.prompt_tokens - s.hit_tokens > SYSTEM + sum(p.shape[1] - SYSTEM for p in ids)


def test_when_the_first_request_fails_a_waiter_takes_over() -> None:
    model = long_llama()
    cached = prefixcache.wrap(model, "8MiB", check=False)
    ids = prompts(2)

    def fail() -> None:
        threading.Event().wait(0.5)  # the others queue up behind its claim
        raise RuntimeError("the first request fails")

    outputs, threads = run_together(cached, ids, hold=first_call_only(fail))
    assert not any(t.is_alive() for t in threads), "a waiter never woke"
    failed = [out for out in outputs if isinstance(out, RuntimeError)]
    assert len(failed) == 1
    for prompt, out in zip(ids, outputs, strict=True):
        if isinstance(out, torch.Tensor):
            assert torch.equal(out, greedy(model, prompt, 2))
    s = cached.cache.stats
    # One of the waiters computed the prefix; the rest waited for it and hit.
    assert s.prompt_tokens - s.hit_tokens <= 2 * SYSTEM + sum(p.shape[1] - SYSTEM for p in ids)
    assert s.pinned_tokens == 0
    cached.cache._check()


def test_a_wait_is_bounded() -> None:
    model = long_llama()
    cached = prefixcache.wrap(model, "8MiB", check=False, shared_wait=0.2)
    ids = prompts(3)[:3]
    release = threading.Event()
    entered = threading.Event()
    others_done = threading.Event()

    def block() -> None:
        entered.set()
        release.wait(60)  # held until the others are done: they must not wait for it

    results: dict[int, Any] = {}

    def worker(i: int) -> None:
        if i:
            entered.wait(60)
        results[i] = cached.generate(ids[i], max_new_tokens=2, do_sample=False)

    with before_forward(model, first_call_only(block)):
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(ids))]
        for t in threads:
            t.start()
        for t in threads[1:]:
            t.join(timeout=60)
        if not any(t.is_alive() for t in threads[1:]):
            others_done.set()
        release.set()
        threads[0].join(timeout=60)
    assert others_done.is_set(), "a request waited for a blocked one beyond its bound"
    for i, prompt in enumerate(ids):
        assert torch.equal(results[i], greedy(model, prompt, 2))
    assert cached.cache.stats.pinned_tokens == 0


@pytest.mark.parametrize("rows", [2, 4])
def test_the_rows_of_a_batch_never_wait_on_each_other(rows: int) -> None:
    model = long_llama()
    cached = prefixcache.wrap(model, "8MiB", check=False)
    ids = [p[0] for p in prompts(4)[:rows]]
    width = max(len(p) for p in ids)
    batch = torch.zeros(rows, width, dtype=torch.long)
    mask = torch.zeros(rows, width, dtype=torch.long)
    for r, p in enumerate(ids):
        batch[r, width - len(p) :] = p
        mask[r, width - len(p) :] = 1
    done = threading.Event()
    result: dict[str, Any] = {}

    def run() -> None:
        result["out"] = cached.generate(batch, attention_mask=mask, max_new_tokens=2, do_sample=False)
        done.set()

    t = threading.Thread(target=run)
    t.start()
    t.join(timeout=120)
    assert done.is_set(), "a batch waited on its own rows"
    assert torch.equal(result["out"], greedy(model, batch, 2, mask))
    assert cached.cache.stats.shared_waits == 0 and cached.cache.stats.pinned_tokens == 0


class _HeldAfterFirstToken:
    """A streamer to a slow client: after the first generated token it blocks until released."""

    def __init__(self) -> None:
        self.first_token = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def put(self, value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2:  # the first put is the prompt, the second the first new token
            self.first_token.set()
            assert self.release.wait(60), "never released"

    def end(self) -> None:
        pass


def test_waiters_get_the_prompt_once_it_is_computed_not_after_the_whole_reply() -> None:
    """The first request streams a long reply to a slow client; the requests waiting for its
    prompt are served as soon as its prompt's forward pass is done, while it still decodes."""
    model = long_llama()
    cached = prefixcache.wrap(model, "8MiB", check=False, shared_wait=10)
    ids = prompts(5)
    streamer = _HeldAfterFirstToken()
    first = threading.Thread(
        target=lambda: cached.generate(ids[0], max_new_tokens=20, do_sample=False, streamer=streamer)
    )
    first.start()
    assert streamer.first_token.wait(60)
    outs, threads = run_together(cached, ids[1:4])  # they match while the first request holds its claim
    finished = all(not t.is_alive() for t in threads)
    streamer.release.set()
    first.join(60)
    assert finished, "the waiters were held until the first request's reply was done"
    for prompt, out in zip(ids[1:4], outs, strict=True):
        assert torch.equal(out, greedy(model, prompt, 2))
    assert cached.cache.stats.hit_tokens >= 3 * SYSTEM
