"""Faults in the middle of a request.

Whatever raises inside a request (the model, a stopping criterion, a streamer, a
KeyboardInterrupt, running out of memory while the pool or the model allocates),
the caller gets that very exception, and the cache is left whole: ``_check()``
holds (no slot both free and owned, none leaked), nothing is pinned, nothing of
the failed request was inserted, and the next request gives the uncached
model's output.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

import pytest
import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

import prefixcache
from prefixcache import CachedModel, PrefixCache

from .fake_kv import LAYERS, assert_kv_is, fake_kv
from .hooked_model import TOKEN_BYTES, before_forward, greedy, logits, own_llama
from .tiny_models import VOCAB

LOGIT_TOLERANCE = 1e-10


@cache
def model() -> Any:
    return own_llama()


def tokens(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, VOCAB) for _ in range(n)]


SHARED = tokens(0, 14)
PROMPT = torch.tensor([SHARED + tokens(1, 4)])  # the request that fails: it hits SHARED


@pytest.fixture
def cached() -> Iterator[CachedModel]:
    """A cache holding SHARED, so that the failing request holds a pin when it fails."""
    wrapped = prefixcache.wrap(model(), TOKEN_BYTES * 64, check=False)
    wrapped.prefill(torch.tensor([SHARED]))
    yield wrapped


def fail_on_call(n: int, error: BaseException) -> Callable[..., None]:
    """A callable that raises ``error`` on its ``n``-th call (1-based)."""
    calls = [0]

    def call(*args: Any, **kwargs: Any) -> None:
        calls[0] += 1
        if calls[0] == n:
            raise error

    return call


def assert_whole_and_working(cached: CachedModel, before: Any, *, prompt_stored: bool = False) -> None:
    """The failed request left nothing behind, or, when it failed after generate's first
    step (``prompt_stored``), its whole prompt and nothing more; the next requests are exact."""
    c = cached.cache
    c._check()
    s = c.stats
    assert s.pinned_tokens == 0, "a pin outlived the request"
    added = s.inserted_tokens - before.inserted_tokens
    assert s.cached_tokens - before.cached_tokens == added
    if prompt_stored:
        assert c.cached_length(PROMPT[0]) == PROMPT.shape[1] and added <= PROMPT.shape[1], "more than the prompt"
    else:
        assert added == 0, "the failed request inserted something"
    m = model()
    out = cached.generate(PROMPT, max_new_tokens=3, do_sample=False)
    assert torch.equal(out, greedy(m, PROMPT, 3))
    res = cached.prefill(PROMPT)
    assert res.cached_length == PROMPT.shape[1] - 1  # the prompt and its output were stored
    assert float((res.logits - logits(m, PROMPT)[:, res.cached_length :]).abs().max()) <= LOGIT_TOLERANCE
    c._check()
    assert c.stats.pinned_tokens == 0


def request(cached: CachedModel, entry: str, **kwargs: Any) -> Any:
    if entry == "prefill":
        return cached.prefill(PROMPT)
    return cached.generate(PROMPT, max_new_tokens=4, do_sample=False, **kwargs)


# -- raised by the model -----------------------------------------------------------------

MODEL_FAULTS = [
    pytest.param("prefill", 1, RuntimeError("the model broke"), id="prefill"),
    pytest.param("generate", 1, RuntimeError("the model broke"), id="generate, prompt pass"),
    pytest.param("generate", 3, RuntimeError("the model broke"), id="generate, third pass"),
    pytest.param("prefill", 1, KeyboardInterrupt(), id="prefill, KeyboardInterrupt"),
    pytest.param("generate", 2, KeyboardInterrupt(), id="generate, KeyboardInterrupt"),
    pytest.param("prefill", 1, torch.OutOfMemoryError("out of memory"), id="prefill, out of memory"),
    pytest.param("generate", 2, torch.OutOfMemoryError("out of memory"), id="generate, out of memory"),
]


@pytest.mark.parametrize(("entry", "on_pass", "error"), MODEL_FAULTS)
def test_an_error_in_the_forward_pass(cached: CachedModel, entry: str, on_pass: int, error: BaseException) -> None:
    before = cached.cache.stats
    with before_forward(model(), fail_on_call(on_pass, error)), pytest.raises(type(error)) as raised:
        request(cached, entry)
    assert raised.value is error
    assert_whole_and_working(cached, before, prompt_stored=on_pass > 1)


def test_an_error_from_generates_own_checks(cached: CachedModel) -> None:
    before = cached.cache.stats
    with pytest.raises(ValueError, match="max_new_tokens"):
        cached.generate(PROMPT, max_new_tokens=-1)
    assert_whole_and_working(cached, before)


# -- raised by what the caller hands to generate ---------------------------------------------


class FailingCriterion(StoppingCriteria):
    def __init__(self, on_call: int, error: BaseException) -> None:
        self.fail = fail_on_call(on_call, error)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        self.fail()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)  # type: ignore[return-value]


class FailingStreamer(BaseStreamer):
    def __init__(self, on_call: int, error: BaseException) -> None:
        self.fail = fail_on_call(on_call, error)

    def put(self, value: torch.Tensor) -> None:
        self.fail()

    def end(self) -> None:
        pass


@pytest.mark.parametrize("on_call", [1, 3])
@pytest.mark.parametrize(
    "error", [RuntimeError("stop!"), KeyboardInterrupt()], ids=["RuntimeError", "KeyboardInterrupt"]
)
def test_an_error_in_a_stopping_criterion(cached: CachedModel, on_call: int, error: BaseException) -> None:
    before = cached.cache.stats
    criteria = StoppingCriteriaList([FailingCriterion(on_call, error)])
    with pytest.raises(type(error)) as raised:
        request(cached, "generate", stopping_criteria=criteria)
    assert raised.value is error
    # The prompt is stored by a criterion of the cache's own, called after the caller's.
    assert_whole_and_working(cached, before, prompt_stored=on_call > 1)


@pytest.mark.parametrize("on_call", [1, 3], ids=["the prompt", "a new token"])
def test_an_error_in_a_streamer(cached: CachedModel, on_call: int) -> None:
    before = cached.cache.stats
    error = OSError("the client went away")
    with pytest.raises(OSError) as raised:
        request(cached, "generate", streamer=FailingStreamer(on_call, error))
    assert raised.value is error
    assert_whole_and_working(cached, before, prompt_stored=on_call > 2)


# -- out of memory where the cache allocates ---------------------------------------------------


@pytest.mark.parametrize("entry", ["prefill", "generate"])
@pytest.mark.parametrize("where", ["write", "gather"])
def test_out_of_memory_in_the_pool(
    cached: CachedModel, monkeypatch: pytest.MonkeyPatch, entry: str, where: str
) -> None:
    """The pool's device is full when the request's new KV is stored, or when its prefix is read."""
    before = cached.cache.stats
    error = torch.OutOfMemoryError("out of memory: the pool's device is full")
    pool = cached.cache.pool
    real = getattr(pool, where)

    def failing(*args: Any, **kwargs: Any) -> Any:
        if where == "write":  # the slots are taken when this fails: they must go back
            assert pool.n_free < before.capacity_tokens - before.cached_tokens
        raise error

    monkeypatch.setattr(pool, where, failing)
    with pytest.raises(torch.OutOfMemoryError) as raised:
        request(cached, entry)
    assert raised.value is error
    monkeypatch.setattr(pool, where, real)
    assert pool.n_free == before.capacity_tokens - before.cached_tokens
    assert_whole_and_working(cached, before)


def test_out_of_memory_storing_the_second_row_of_a_batch(cached: CachedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each row is stored whole or not at all: the first row is in, the second is not."""
    rows = [tokens(2, 6), tokens(3, 6)]
    ids = torch.tensor(rows)
    before = cached.cache.stats
    error = torch.OutOfMemoryError("out of memory")
    pool = cached.cache.pool
    real_write = pool.write
    calls: list[int] = []

    def write(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise error
        real_write(*args, **kwargs)

    monkeypatch.setattr(pool, "write", write)
    with pytest.raises(torch.OutOfMemoryError) as raised:
        cached.prefill(ids)
    assert raised.value is error
    monkeypatch.setattr(pool, "write", real_write)
    c = cached.cache
    c._check()
    assert c.tree.peek(rows[0]) == 6 and c.tree.peek(rows[1]) == 0
    assert c.stats.cached_tokens == before.cached_tokens + 6 and c.stats.pinned_tokens == 0
    res = cached.prefill(ids)
    want = logits(model(), ids)[:, res.cached_length :]
    assert float((res.logits - want).abs().max()) <= LOGIT_TOLERANCE
    c._check()


@pytest.mark.parametrize("grow", [True, False], ids=["growing", "shrinking"])
def test_out_of_memory_while_resizing(cached: CachedModel, monkeypatch: pytest.MonkeyPatch, grow: bool) -> None:
    """The new table cannot be had: a ValueError naming the budget (caused by the allocator's
    error), and the pool keeps its old table and its budget."""
    c = cached.cache
    cached.prefill(torch.tensor([tokens(4, 10)]))
    before = c.stats
    budget = c.pool.budget
    error = torch.OutOfMemoryError("out of memory")
    real_zeros = torch.zeros

    def zeros(*args: Any, **kwargs: Any) -> torch.Tensor:
        raise error

    monkeypatch.setattr(torch, "zeros", zeros)
    try:
        with pytest.raises(ValueError, match=r"^budget: .* could not be allocated") as raised:
            c.resize(budget * 2 if grow else TOKEN_BYTES * 16)
    finally:
        monkeypatch.setattr(torch, "zeros", real_zeros)
    assert raised.value.__cause__ is error
    c._check()
    s = c.stats
    assert s.capacity_tokens == before.capacity_tokens and c.pool.budget == budget
    if grow:
        assert s.cached_tokens == before.cached_tokens
    else:  # what shrinking evicted first stays evicted; the rest is intact
        assert s.cached_tokens <= 16
    assert_whole_and_working(cached, c.stats)


# -- inside PrefixCache.insert itself --------------------------------------------------------


@pytest.mark.parametrize("error", [MemoryError(), KeyboardInterrupt()], ids=["MemoryError", "KeyboardInterrupt"])
def test_an_insert_that_fails_after_taking_slots_gives_them_back(
    monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    c = PrefixCache(LAYERS, 72 * 8, dtype=torch.float64)
    c.insert([1, 2, 3], fake_kv([1, 2, 3]))
    c.insert([4, 5, 6], fake_kv([4, 5, 6]))
    monkeypatch.setattr(c.tree, "attach", fail_on_call(1, error))
    with pytest.raises(type(error)) as raised:
        c.insert([1, 2, 7, 8, 9, 10], fake_kv([1, 2, 7, 8, 9, 10]))  # evicts to make room first
    assert raised.value is error
    monkeypatch.undo()
    c._check()
    assert c.stats.inserted_tokens == 6 and c.stats.pinned_tokens == 0
    assert c.insert([1, 2, 7, 8, 9, 10], fake_kv([1, 2, 7, 8, 9, 10])) == 4
    with c.match([1, 2, 7, 8, 9, 10]) as hit:
        assert hit.length == 6
        assert_kv_is(c.gather(hit), [1, 2, 7, 8, 9, 10])
    c._check()
