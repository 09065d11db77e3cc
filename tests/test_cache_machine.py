"""A hypothesis state machine over PrefixCache, checked against a brute-force model.

The reference holds every cached prefix (per namespace) as a tuple with the time
of its last access, and the pins in force. After every step:

- a match returns exactly the longest cached prefix the reference knows;
- with room to spare, an insert caches exactly what the reference expects;
- whatever an eviction removed was unpinned, and was used no later than any
  unpinned leaf that stayed (least recently used first);
- pinned prefixes are always still cached, and their KV is right;
- ``_check()`` holds (an invariant), and bytes never exceed the budget.
"""

from __future__ import annotations

from collections.abc import Hashable

import torch
from hypothesis import assume, note
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, precondition, rule

from prefixcache import Hit, PrefixCache

from .fake_kv import LAYERS, assert_kv_is, fake_kv

TOKEN_BYTES = 72
VOCAB = 3
NAMESPACES: list[Hashable] = [None, "b"]
Key = tuple[Hashable, tuple[int, ...]]


class CacheMachine(RuleBasedStateMachine):
    hits = Bundle("hits")

    def __init__(self) -> None:
        super().__init__()
        self.cache: PrefixCache | None = None
        self.clock = 0
        self.ticks: dict[Key, int] = {}  # every cached prefix -> last access
        self.pinned: list[tuple[Hit, Key]] = []
        self.stems: list[tuple[int, ...]] = [()]

    # -- helpers ------------------------------------------------------------

    def tree_prefixes(self) -> set[Key]:
        assert self.cache is not None
        tree = self.cache.tree
        out: set[Key] = set()
        for node in tree.iter_nodes():
            root = node
            while root.parent is not None:
                root = root.parent
            path = tuple(tree.path_tokens(node))
            ns = root.namespace  # type: ignore[attr-defined]
            out.update((ns, path[:i]) for i in range(1, len(path) + 1))
        return out

    def touch(self, ns: Hashable, tokens: tuple[int, ...], length: int) -> None:
        self.clock += 1
        for i in range(1, length + 1):
            self.ticks[(ns, tokens[:i])] = self.clock

    def longest(self, ns: Hashable, tokens: tuple[int, ...]) -> int:
        n = 0
        while n < len(tokens) and (ns, tokens[: n + 1]) in self.ticks:
            n += 1
        return n

    def leaves(self, keys: set[Key]) -> set[Key]:
        """Maximal elements: cached prefixes no cached prefix extends by one token."""
        parents = {(ns, seq[:-1]) for ns, seq in keys}
        return keys - parents

    def reconcile(self, allowed_new: set[Key] = frozenset()) -> None:  # type: ignore[assignment]
        """Take the tree's set as the new truth after checking that what went away
        went in LRU order and was unpinned, and that nothing unknown appeared."""
        now = self.tree_prefixes()
        known = set(self.ticks) | set(allowed_new)
        assert now <= known, f"the tree holds prefixes never inserted: {sorted(now - known, key=str)[:3]}"
        removed = set(self.ticks) - now
        pinned = {key for _, key in self.pinned}
        pinned_paths = {(ns, seq[:i]) for ns, seq in pinned for i in range(1, len(seq) + 1)}
        assert not removed & pinned_paths, "a pinned prefix was evicted"
        if removed:
            stayed = {k for k in self.leaves(now) if k not in pinned_paths and k in self.ticks}
            latest_removed = max(self.ticks[k] for k in removed)
            if stayed:
                oldest_stayed = min(self.ticks[k] for k in stayed)
                assert latest_removed <= oldest_stayed, (
                    f"evicted a prefix used at {latest_removed} while a leaf used at {oldest_stayed} stayed"
                )
        self.ticks = {k: self.ticks.get(k, self.clock) for k in now}

    # -- rules --------------------------------------------------------------

    @precondition(lambda self: self.cache is None)
    @rule(capacity=st.integers(1, 40))
    def make(self, capacity: int) -> None:
        self.cache = PrefixCache(LAYERS, TOKEN_BYTES * capacity, dtype=torch.float64)

    @precondition(lambda self: self.cache is not None)
    @rule(data=st.data(), ns=st.sampled_from(NAMESPACES))
    def insert(self, data: st.DataObject, ns: Hashable) -> None:
        assert self.cache is not None
        stem = data.draw(st.sampled_from(self.stems), label="stem")
        cut = data.draw(st.integers(0, len(stem)), label="cut")
        tail = data.draw(st.lists(st.integers(0, VOCAB - 1), max_size=8), label="tail")
        tokens = stem[:cut] + tuple(tail)
        assume(tokens)
        self.stems.append(tokens)
        before = set(self.ticks)
        had = self.longest(ns, tokens)
        free = self.cache.pool.n_free
        stored = self.cache.insert(list(tokens), fake_kv(tokens), namespace=ns)
        note(f"insert {tokens} ns={ns!r}: had {had}, stored {stored}")
        assert stored <= len(tokens) - had
        new_keys = {(ns, tokens[:i]) for i in range(1, had + stored + 1)}
        if len(tokens) - had <= free:
            assert stored == len(tokens) - had, "room to spare, yet not everything was stored"
            assert self.tree_prefixes() == before | new_keys, "an insert with room to spare changed other entries"
        elif stored < len(tokens) - had:
            stats = self.cache.stats
            assert stats.cached_tokens == stats.capacity_tokens, "stored a shorter prefix while slots were free"
            # Everything else that could have been evicted to make room was.
            pinned = {(n, seq[:i]) for _, (n, seq) in self.pinned for i in range(1, len(seq) + 1)}
            own = sum(1 for i in range(1, had + stored + 1) if (ns, tokens[:i]) not in pinned)
            assert self.cache.tree.evictable_size == own, "stored a shorter prefix without evicting first"
        self.reconcile(new_keys)
        self.touch(ns, tokens, had + stored)

    @precondition(lambda self: self.cache is not None)
    @rule(target=hits, data=st.data(), ns=st.sampled_from(NAMESPACES), limit=st.none() | st.integers(0, 12))
    def match_and_pin(self, data: st.DataObject, ns: Hashable, limit: int | None) -> Hit:
        assert self.cache is not None
        stem = data.draw(st.sampled_from(self.stems), label="stem")
        tokens = stem + tuple(data.draw(st.lists(st.integers(0, VOCAB - 1), max_size=3), label="tail"))
        look = tokens if limit is None else tokens[:limit]
        expected = self.longest(ns, look)
        hit = self.cache.match(list(tokens), namespace=ns, max_length=limit)
        note(f"match {tokens} ns={ns!r} limit={limit}: {hit.length}")
        assert hit.length == expected
        self.touch(ns, tokens, hit.length)
        self.pinned.append((hit, (ns, tokens[: hit.length])))
        assert_kv_is(self.cache.gather(hit), tokens[: hit.length])
        return hit

    @rule(hit=consumes(hits))
    def release(self, hit: Hit) -> None:
        self.pinned = [(h, k) for h, k in self.pinned if h is not hit]
        hit.release()

    @precondition(lambda self: self.cache is not None)
    @rule(n=st.integers(0, 45))
    def evict(self, n: int) -> None:
        assert self.cache is not None
        evictable = self.cache.tree.evictable_size
        freed = self.cache.evict(n)
        assert freed >= min(n, evictable)
        if freed < n:
            assert self.cache.tree.evictable_size == 0
        if n == 0:
            assert freed == 0
        self.reconcile()

    @precondition(lambda self: self.cache is not None)
    @rule(capacity=st.integers(1, 40))
    def resize(self, capacity: int) -> None:
        assert self.cache is not None
        pinned = self.cache.tree.pinned_size
        try:
            self.cache.resize(TOKEN_BYTES * capacity)
        except ValueError:
            assert capacity < pinned
            return
        assert capacity >= pinned
        assert self.cache.stats.capacity_tokens == capacity
        self.reconcile()

    @precondition(lambda self: self.cache is not None)
    @rule()
    def clear(self) -> None:
        assert self.cache is not None
        self.cache.clear()
        assert self.cache.tree.evictable_size == 0
        self.reconcile()

    @precondition(lambda self: self.cache is not None)
    @rule(ns=st.sampled_from(NAMESPACES))
    def drop_namespace(self, ns: Hashable) -> None:
        assert self.cache is not None
        tree = self.cache.tree
        before = self.tree_prefixes()
        held: set[Key] = set()  # the paths of the nodes requests in flight pin, in ns
        for node in tree.iter_nodes():
            if node.pins and tree.namespace_of(node) == ns:
                path = tuple(tree.path_tokens(node))
                held.update((ns, path[:i]) for i in range(1, len(path) + 1))
        dropped = self.cache.drop_namespace(ns)
        after = self.tree_prefixes()
        assert after == {k for k in before if k[0] != ns} | held, "dropped the wrong prefixes"
        assert dropped == len(before) - len(after)
        self.ticks = {k: t for k, t in self.ticks.items() if k in after}

    # -- invariants ---------------------------------------------------------

    @invariant()
    def structure_holds(self) -> None:
        if self.cache is not None:
            self.cache._check()
            stats = self.cache.stats
            assert stats.bytes_used <= stats.bytes_reserved <= self.cache.pool.budget

    @invariant()
    def tree_agrees_with_the_reference(self) -> None:
        if self.cache is not None:
            assert self.tree_prefixes() == set(self.ticks)

    @invariant()
    def pinned_kv_is_intact(self) -> None:
        if self.cache is not None:
            for hit, (_, seq) in self.pinned:
                assert_kv_is(self.cache.gather(hit), seq)

    def teardown(self) -> None:
        for hit, _ in self.pinned:
            hit.release()
        if self.cache is not None:
            self.cache._check()
            assert self.cache.stats.pinned_tokens == 0


TestCacheMachine = CacheMachine.TestCase
