"""The host tier, user pins and expiry.

KV evicted from the device pool moves to the host pool and comes back when a
request reaches it; through every move a gathered prefix must still be exactly
the fake KV of its tokens (and, with a model, outputs those of the uncached
model). The host pool drops its least recently used leaves in turn. Pins keep a
prefix on the device; ``ttl`` drops what has not been used for that long.
"""

from __future__ import annotations

import random
from collections.abc import Hashable
from functools import cache
from typing import Any

import pytest
import torch
from hypothesis import assume, note
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, precondition, rule

import prefixcache
from prefixcache import Hit, PrefixCache
from prefixcache.kv import Int8Codec
from prefixcache.tree import DEVICE, HOST

from .fake_kv import LAYERS, assert_kv_is, fake_kv
from .hooked_model import TOKEN_BYTES as MODEL_TOKEN_BYTES
from .hooked_model import greedy, logits, own_llama
from .tiny_models import VOCAB

TOKEN_BYTES = 72  # fake_kv's layers in float64
A = [1, 2, 3, 4, 5, 6]
B = [7, 8, 9, 10, 11, 12]
C = [13, 14, 15, 16, 17, 18]


def tiered(device_tokens: int = 8, host_tokens: int = 32, **kwargs: Any) -> PrefixCache:
    return PrefixCache(
        LAYERS, TOKEN_BYTES * device_tokens, dtype=torch.float64, host_budget=TOKEN_BYTES * host_tokens, **kwargs
    )


def put(c: PrefixCache, tokens: list[int], namespace: Hashable = None) -> int:
    return c.insert(tokens, fake_kv(tokens), namespace=namespace)


def where(c: PrefixCache, tokens: list[int]) -> set[int]:
    """The tiers holding the nodes of ``tokens``' cached path (without touching it)."""
    tiers = set()
    node, pos = c.tree.root(None), 0
    while node is not None and pos < len(tokens):
        node = node.children.get(tokens[pos])
        if node is None:
            break
        tiers.add(node.tier)
        pos += len(node.key)
    return tiers


# -- moving between tiers ---------------------------------------------------------------


def test_an_evicted_prefix_moves_to_the_host_and_comes_back_exact() -> None:
    c = tiered()
    put(c, A)
    put(c, B)  # the device holds 8: A goes to the host to make room
    s = c.stats
    assert (s.cached_tokens, s.host_cached_tokens, s.demoted_tokens, s.evicted_tokens) == (6, 6, 6, 0)
    assert s.bytes_to_host == 6 * TOKEN_BYTES and s.host_bytes_used == 6 * TOKEN_BYTES
    c._check()
    with c.match(A + [99]) as hit:
        assert hit.length == 6
        assert_kv_is(c.gather(hit), A)
        s = c.stats
        assert s.host_hit_tokens == 6 and s.promoted_tokens == 6 and s.bytes_to_device == 6 * TOKEN_BYTES
        assert where(c, B) == {HOST} and where(c, A) == {DEVICE}  # B made room for A
        c._check()
    with c.match(B) as hit:
        assert hit.length == 6
        assert_kv_is(c.gather(hit), B)
    assert c.stats.evicted_tokens == 0
    c._check()


def test_the_host_tier_drops_its_least_recently_used_leaves() -> None:
    c = tiered(device_tokens=6, host_tokens=12)
    for seq in (A, B, C):
        put(c, seq)
    with c.match(A):  # A comes back; B and C are on the host, B used least recently
        pass
    put(c, [20, 21, 22, 23, 24, 25])  # A goes down; the host holds 12: B, the oldest, is dropped
    assert c.tree.peek(B) == 0 and c.tree.peek(C) == 6 and c.tree.peek(A) == 6
    assert c.stats.evicted_tokens == 6
    c._check()


def test_a_request_extending_a_host_prefix_brings_it_back_and_stores_the_rest() -> None:
    c = tiered()
    put(c, A)
    put(c, B)
    assert where(c, A) == {HOST}
    assert put(c, A + [40, 41]) == 2
    assert where(c, A + [40, 41]) == {DEVICE}
    with c.match(A + [40, 41]) as hit:
        assert hit.length == 8
        assert_kv_is(c.gather(hit), A + [40, 41])
    c._check()


def test_a_host_prefix_that_cannot_come_back_is_served_as_far_as_the_device_holds_it() -> None:
    c = tiered(device_tokens=8)
    put(c, A[:3])
    put(c, A)  # A is one path of two nodes: [1, 2, 3] and [4, 5, 6]
    put(c, B)  # both of A's nodes go to the host
    assert where(c, A) == {HOST}
    with c.match(B) as held:  # B stays pinned: the device has 2 free slots for A
        assert held.length == 6
        with c.match(A) as hit:
            assert hit.length == 0  # [1, 2, 3] alone does not fit beside B
            assert c.gather(hit)[0][0].shape[2] == 0
        c._check()
    with c.match(A) as hit:  # B unpinned: it can go down and A come back
        assert hit.length == 6
        assert_kv_is(c.gather(hit), A)
    c._check()


def test_without_host_room_eviction_drops_as_before() -> None:
    c = tiered(device_tokens=8, host_tokens=4)  # a 6-token node never fits on the host
    put(c, A)
    put(c, B)
    s = c.stats
    assert (s.host_cached_tokens, s.evicted_tokens, s.demoted_tokens) == (0, 6, 0)
    assert c.tree.peek(A) == 0
    c._check()


def test_clear_and_resize_cover_both_tiers() -> None:
    c = tiered()
    put(c, A)
    put(c, B)
    c.resize(TOKEN_BYTES * 8, host_budget=TOKEN_BYTES * 3)  # A no longer fits on the host
    assert c.tree.peek(A) == 0 and c.stats.host_capacity_tokens == 3
    c.resize(TOKEN_BYTES * 4, host_budget=TOKEN_BYTES * 16)  # B goes down
    assert where(c, B) == {HOST} and c.stats.capacity_tokens == 4
    with c.match(B[:4]) as hit:
        assert_kv_is(c.gather(hit), B[:4])
    c._check()
    assert c.clear() == 6 and c.stats.cached_tokens == c.stats.host_cached_tokens == 0
    c._check()


def test_a_host_budget_can_be_added_later() -> None:
    c = PrefixCache(LAYERS, TOKEN_BYTES * 8, dtype=torch.float64)
    put(c, A)
    c.resize(TOKEN_BYTES * 8, host_budget=TOKEN_BYTES * 16)
    put(c, B)
    assert where(c, A) == {HOST}
    c._check()


@pytest.mark.parametrize(
    ("kwargs", "exc", "names"),
    [
        (dict(host_budget="lots"), ValueError, "lots"),
        (dict(host_budget=-5), ValueError, "-5"),
        (dict(host_budget=10), ValueError, "budget"),  # less than one token
        (dict(host_budget=TOKEN_BYTES * 4, host_dtype=torch.int32), TypeError, "host_dtype"),
        (dict(host_dtype=torch.float32), ValueError, "host_dtype"),
        (dict(ttl=0), ValueError, "ttl"),
        (dict(ttl=-1.5), ValueError, "ttl"),
        (dict(ttl="1h"), ValueError, "ttl"),
    ],
)
def test_bad_tier_arguments_are_refused(kwargs: dict[str, Any], exc: type[Exception], names: str) -> None:
    with pytest.raises(exc, match=names):
        PrefixCache(LAYERS, TOKEN_BYTES * 8, dtype=torch.float64, **kwargs)


# -- int8 host tier -------------------------------------------------------------------------


def test_an_int8_host_tier_takes_fewer_bytes_and_stays_close() -> None:
    c = PrefixCache(LAYERS, 8 * TOKEN_BYTES, dtype=torch.float64, host_budget=16 * 96, host_dtype=torch.int8)
    host = c.host_pool
    assert isinstance(host.codec, Int8Codec) and host.bytes_per_token < c.pool.bytes_per_token
    put(c, A)
    put(c, B)
    with c.match(A) as hit:
        got = c.gather(hit)
    want = fake_kv(A)
    for (gk, gv), (wk, wv) in zip(got, want, strict=True):
        for g, w in ((gk, wk), (gv, wv)):
            scale = w.abs().amax(dim=-1, keepdim=True)  # one scale per token and head
            assert float(((g - w).abs() / scale).max()) <= 0.5 / 127 + 1e-12
    c._check()


# -- user pins and expiry --------------------------------------------------------------------


def test_a_user_pin_keeps_a_prefix_on_the_device_until_unpinned() -> None:
    c = tiered(device_tokens=12)
    put(c, A)
    c.pin(A)
    c.pin(A)  # pins nest
    assert c.stats.user_pinned_tokens == 6
    put(c, B)
    put(c, C)  # B goes down, never A
    assert where(c, A) == {DEVICE} and where(c, B) == {HOST}
    c.unpin(A)
    put(c, B)
    assert where(c, A) == {DEVICE}
    c.unpin(A)
    assert c.stats.user_pinned_tokens == 0 and c.stats.pinned_tokens == 0
    put(c, [30] * 6)
    put(c, B)
    assert where(c, A) == {HOST}
    c._check()


def test_pin_refuses_what_is_not_cached_or_not_pinned_and_changes_nothing() -> None:
    c = tiered()
    put(c, A)
    before = (c.stats, c.tree.n_nodes, c.tree.last_tick)
    with pytest.raises(ValueError, match="only 6 of their 7 tokens are cached"):
        c.pin(A + [9])
    with pytest.raises(ValueError, match="not pinned"):
        c.unpin(A)
    with pytest.raises(ValueError, match="empty"):
        c.pin([])
    with pytest.raises(TypeError, match="namespace"):
        c.pin(A, namespace=[1])
    assert (c.stats, c.tree.n_nodes, c.tree.last_tick) == before
    c._check()


def test_a_pin_that_would_exceed_the_budget_is_refused() -> None:
    c = tiered(device_tokens=8)
    put(c, A)
    put(c, B)  # A on the host
    c.pin(B)
    with pytest.raises(ValueError, match="cannot exceed the budget"):
        c.pin(A)  # 6 pinned + 6 > 8
    assert c.stats.user_pinned_tokens == 6 and where(c, A) == {HOST}
    c._check()


def test_entries_unused_for_ttl_seconds_are_dropped_but_pinned_ones_stay() -> None:
    now = [0]
    c = tiered(device_tokens=8, ttl=10, clock=lambda: now[0])
    put(c, A)
    put(c, B)  # A on the host
    now[0] = 5 * 10**9
    put(c, C)  # B goes down; A is 5 s old
    c.pin(C)
    now[0] = 12 * 10**9  # A (0 s) and B (0 s) are past 10 s; C (5 s) is pinned
    assert c.expire() == 12
    assert c.tree.peek(A) == c.tree.peek(B) == 0 and c.tree.peek(C) == 6
    assert c.stats.expired_tokens == 12
    now[0] = 100 * 10**9
    with c.match([50]):  # a request expires lazily too: C stays, pinned
        pass
    assert c.tree.peek(C) == 6
    c.unpin(C)
    with c.match([50]):
        pass
    assert c.tree.peek(C) == 0 and c.stats.expired_tokens == 18
    c._check()


# -- the state machine ---------------------------------------------------------------------

VOCAB_SMALL = 3


class TieredMachine(RuleBasedStateMachine):
    """Random inserts, matches, pins, evictions and resizes over a two-tier cache: every
    gathered prefix is exactly the fake KV of its tokens, the tree only ever holds what
    was inserted, pinned prefixes stay, and ``_check()`` holds after every step."""

    hits = Bundle("hits")

    def __init__(self) -> None:
        super().__init__()
        self.cache: PrefixCache | None = None
        self.stems: list[tuple[int, ...]] = [()]
        self.inserted: set[tuple[Hashable, tuple[int, ...]]] = set()
        self.pinned: list[tuple[Hit, tuple[int, ...]]] = []

    def prefixes(self) -> set[tuple[Hashable, tuple[int, ...]]]:
        assert self.cache is not None
        tree = self.cache.tree
        out = set()
        for node in tree.iter_nodes():
            path = tuple(tree.path_tokens(node))
            ns = tree.namespace_of(node)
            out.update((ns, path[:i]) for i in range(1, len(path) + 1))
        return out

    @precondition(lambda self: self.cache is None)
    @rule(device=st.integers(1, 24), host=st.integers(1, 48))
    def make(self, device: int, host: int) -> None:
        self.cache = tiered(device, host)

    @precondition(lambda self: self.cache is not None)
    @rule(data=st.data(), ns=st.sampled_from([None, "b"]))
    def insert(self, data: st.DataObject, ns: Hashable) -> None:
        assert self.cache is not None
        stem = data.draw(st.sampled_from(self.stems), label="stem")
        tokens = stem[: data.draw(st.integers(0, len(stem)))] + tuple(
            data.draw(st.lists(st.integers(0, VOCAB_SMALL - 1), max_size=8), label="tail")
        )
        assume(tokens)
        self.stems.append(tokens)
        had = self.cache.tree.peek(tokens, ns)
        stored = self.cache.insert(list(tokens), fake_kv(tokens), namespace=ns)
        note(f"insert {tokens} ns={ns!r}: had {had}, stored {stored}")
        self.inserted.update((ns, tokens[:i]) for i in range(1, len(tokens) + 1))
        assert self.cache.tree.peek(tokens, ns) >= had + stored

    @precondition(lambda self: self.cache is not None)
    @rule(target=hits, data=st.data(), ns=st.sampled_from([None, "b"]))
    def match(self, data: st.DataObject, ns: Hashable) -> Hit:
        assert self.cache is not None
        tokens = data.draw(st.sampled_from(self.stems), label="stem") + (0,)
        cached = self.cache.tree.peek(tokens, ns)
        nobody_pinned = self.cache.stats.pinned_tokens == 0
        hit = self.cache.match(list(tokens), namespace=ns)
        note(f"match {tokens} ns={ns!r}: {hit.length} of {cached} cached")
        assert hit.length <= cached
        if nobody_pinned and cached <= self.cache.stats.capacity_tokens:
            assert hit.length == cached, "a prefix the device could hold did not come back whole"
        assert_kv_is(self.cache.gather(hit), tokens[: hit.length])
        self.pinned.append((hit, tokens[: hit.length]))
        return hit

    @rule(hit=consumes(hits))
    def release(self, hit: Hit) -> None:
        self.pinned = [(h, t) for h, t in self.pinned if h is not hit]
        hit.release()

    @precondition(lambda self: self.cache is not None)
    @rule(n=st.integers(0, 30))
    def evict(self, n: int) -> None:
        assert self.cache is not None
        unpinned = self.cache.stats.cached_tokens - self.cache.stats.pinned_tokens
        assert self.cache.evict(n) >= min(n, unpinned)

    @precondition(lambda self: self.cache is not None)
    @rule(device=st.integers(1, 24), host=st.none() | st.integers(1, 48))
    def resize(self, device: int, host: int | None) -> None:
        assert self.cache is not None
        pinned = self.cache.stats.pinned_tokens
        try:
            self.cache.resize(TOKEN_BYTES * device, None if host is None else TOKEN_BYTES * host)
        except ValueError:
            assert device < pinned
            return
        assert self.cache.stats.capacity_tokens == device

    @precondition(lambda self: self.cache is not None)
    @rule()
    def clear(self) -> None:
        assert self.cache is not None
        self.cache.clear()
        assert self.cache.stats.host_cached_tokens == 0
        assert self.cache.stats.cached_tokens == self.cache.stats.pinned_tokens

    @invariant()
    def holds(self) -> None:
        if self.cache is None:
            return
        c = self.cache
        c._check()
        s = c.stats
        assert s.bytes_used <= s.bytes_reserved <= c.pool.budget
        assert c.host_pool is not None and s.host_bytes_used <= s.host_bytes_reserved <= c.host_pool.budget
        assert self.prefixes() <= self.inserted, "the tree holds a prefix never inserted"
        for hit, tokens in self.pinned:
            assert c.tree.peek(tokens, hit.namespace) >= len(tokens), "a pinned prefix went away"
            assert_kv_is(c.gather(hit), tokens)

    def teardown(self) -> None:
        for hit, _ in self.pinned:
            hit.release()
        if self.cache is not None:
            self.cache._check()
            assert self.cache.stats.pinned_tokens == 0


TestTieredMachine = TieredMachine.TestCase


# -- with a model ----------------------------------------------------------------------------


@cache
def model() -> Any:
    return own_llama(seed=3)


def test_outputs_after_demotions_and_promotions_are_the_uncached_models() -> None:
    """A device pool of 40 tokens and a host pool of 400: three 24-token system prompts
    take turns, so every turn finds its prompt moved to the host by the others."""
    m = model()
    cached = prefixcache.wrap(m, MODEL_TOKEN_BYTES * 40, host_budget=MODEL_TOKEN_BYTES * 400, check=False)
    rng = random.Random(0)
    systems = [[rng.randrange(3, VOCAB) for _ in range(24)] for _ in range(3)]
    for turn in range(9):
        ids = torch.tensor([systems[turn % 3] + [rng.randrange(3, VOCAB) for _ in range(5)]])
        out = cached.generate(ids, max_new_tokens=3, do_sample=False)
        assert torch.equal(out, greedy(m, ids, 3)), f"turn {turn}"
        res = cached.prefill(ids)
        want = logits(m, ids)[:, res.cached_length :]
        assert float((res.logits - want).abs().max()) <= 1e-10
        cached.cache._check()
    s = cached.cache.stats
    assert s.host_hit_tokens >= 6 * 24 and s.demoted_tokens > 0 and s.evicted_tokens == 0
    assert s.bytes_to_device == s.promoted_tokens * MODEL_TOKEN_BYTES


def test_warm_stores_prompts_and_can_pin_them() -> None:
    m = model()
    cached = prefixcache.wrap(m, MODEL_TOKEN_BYTES * 64, check=False)
    system = list(range(3, 23))
    assert cached.warm([system, torch.tensor(system[:10])], pin=True) == 20  # the second was cached already
    s = cached.cache.stats
    assert s.inserted_tokens == 20 and s.user_pinned_tokens == 20
    cached.warm(torch.arange(30, 70).unsqueeze(0))  # 40 more: only unpinned KV may go
    assert cached.cache.tree.peek(system) == 20
    ids = torch.tensor([[*system, 80, 81]])
    res = cached.prefill(ids)
    assert res.cached_length == 20
    assert float((res.logits - logits(m, ids)[:, 20:]).abs().max()) <= 1e-10
    cached.cache.unpin(system)
    cached.cache.unpin(system[:10])
    assert cached.cache.stats.pinned_tokens == 0
    with pytest.raises(ValueError, match="outside the vocabulary"):
        cached.warm([[3, 4, VOCAB]])
    with pytest.raises(TypeError, match="prompts"):
        cached.warm("hello")
    cached.cache._check()
