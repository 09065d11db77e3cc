"""Unit tests of the radix tree: splits, edges, re-inserts, pins, LRU eviction; the check; and a
state machine of the tree alone against a brute-force model."""

from __future__ import annotations

from array import array
from collections.abc import Hashable

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from prefixcache.tree import Node, RadixTree

NAMESPACES = st.sampled_from([None, "b"])
TOKENS = st.lists(st.integers(0, 2), max_size=8).map(tuple)


def slots_for(tokens: list[int], base: int) -> array:
    return array("q", range(base, base + len(tokens)))


def cached_sequences(tree: RadixTree, namespace: object = None) -> set[tuple[int, ...]]:
    """Every cached prefix, as tuples."""
    out: set[tuple[int, ...]] = set()
    for node in tree.iter_nodes():
        path = tuple(tree.path_tokens(node))
        root = node
        while root.parent is not None:
            root = root.parent
        if getattr(root, "namespace", None) == namespace:
            out.update(path[:i] for i in range(1, len(path) + 1))
    return out


@pytest.mark.parametrize("at", range(1, 8))
def test_match_splits_an_edge_at_every_position(at: int) -> None:
    tree = RadixTree()
    seq = [3, 1, 4, 1, 5, 9, 2, 6]
    tree.insert(seq, slots_for(seq, 100))
    hit = tree.match(seq[:at] + [99])
    tree._check()
    assert hit.length == at
    assert list(hit.slots) == list(range(100, 100 + at))
    assert hit.node is not None and list(tree.path_tokens(hit.node)) == seq[:at]
    assert tree.n_nodes == 2 and tree.size == len(seq)
    # The whole sequence still matches, across the split, with the same slots.
    full = tree.match(seq)
    assert full.length == len(seq) and list(full.slots) == list(range(100, 108))


@pytest.mark.parametrize("at", range(1, 6))
def test_insert_branching_inside_an_edge(at: int) -> None:
    tree = RadixTree()
    a = [1, 2, 3, 4, 5, 6]
    b = a[:at] + [7, 8]
    tree.insert(a, slots_for(a, 0))
    res = tree.insert(b, slots_for(b, 50))
    tree._check()
    assert res.prefix_length == at
    assert tree.size == len(a) + 2
    assert list(tree.match(b).slots) == list(range(at)) + [50 + at, 51 + at]
    assert list(tree.match(a).slots) == list(range(6))


def test_empty_input() -> None:
    tree = RadixTree()
    assert tree.match([]).length == 0 and tree.match([]).node is None
    res = tree.insert([], array("q"))
    assert res.prefix_length == 0 and tree.size == 0
    tree.insert([1, 2], slots_for([1, 2], 0))
    hit = tree.match([])
    assert hit.length == 0 and len(hit.slots) == 0
    tree._check()


def test_single_token_edges() -> None:
    tree = RadixTree()
    for t in range(5):
        tree.insert([t], array("q", [t]))
    tree.insert([0, 1], array("q", [0, 10]))
    tree._check()
    assert tree.n_nodes == 6
    assert [tree.match([t, 1]).length for t in range(5)] == [2, 1, 1, 1, 1]
    assert list(tree.match([0, 1]).slots) == [0, 10]


def test_reinsert_existing_sequence_takes_no_new_slot() -> None:
    tree = RadixTree()
    seq = [5, 6, 7, 8]
    tree.insert(seq, slots_for(seq, 0))
    res = tree.insert(seq, slots_for(seq, 40))
    assert res.prefix_length == len(seq)
    assert tree.size == len(seq)
    assert list(tree.match(seq).slots) == [0, 1, 2, 3]
    # A prefix of it is cached already too; inserting it splits but adds nothing.
    res = tree.insert(seq[:2], slots_for(seq[:2], 80))
    assert res.prefix_length == 2 and tree.size == 4
    tree._check()


def test_insert_rejects_slot_count_mismatch() -> None:
    tree = RadixTree()
    with pytest.raises(ValueError, match="slots"):
        tree.insert([1, 2, 3], array("q", [0, 1]))
    assert tree.size == 0
    tree._check()


def test_evict_everything_and_evict_zero() -> None:
    tree = RadixTree()
    seqs = [[1, 2, 3], [1, 2, 4], [5], [1, 9, 9, 9]]
    base = 0
    for s in seqs:
        tree.insert(s, slots_for(s, base))
        base += 10
    before = tree.size
    assert tree.evict(0) == (0, array("q"), array("q"), 0, array("q"), array("q"))
    assert tree.size == before
    out = tree.evict(10**6)
    assert out.n_tokens == before and sorted(out.slots) == sorted(
        slot for node_slots in ([0, 1, 2], [12], [20], [31, 32, 33]) for slot in node_slots
    )
    assert tree.size == 0 and tree.n_nodes == 0 and tree.namespaces() == []
    tree._check()
    with pytest.raises(ValueError, match="n_tokens"):
        tree.evict(-1)


def test_eviction_is_least_recently_used_first() -> None:
    tree = RadixTree()
    tree.insert([1, 1], array("q", [0, 1]))
    tree.insert([2, 2], array("q", [2, 3]))
    tree.insert([3, 3], array("q", [4, 5]))
    tree.match([1, 1])  # [2, 2] is now the least recently used
    assert sorted(tree.evict(1).slots) == [2, 3]
    assert cached_sequences(tree) == {(1,), (1, 1), (3,), (3, 3)}
    assert sorted(tree.evict(1).slots) == [4, 5]
    tree._check()


def test_parent_becomes_a_candidate_after_its_last_child() -> None:
    tree = RadixTree()
    tree.insert([1, 2, 3], array("q", [0, 1, 2]))
    tree.insert([1, 2, 4], array("q", [0, 1, 3]))  # splits after [1, 2]
    tree.insert([7], array("q", [9]))
    # Leaves [3] and [4] are older than [7] and go first; then their parent [1, 2]
    # is a leaf, listed under the tick of its last access.
    assert list(tree.evict(1).slots) == [2]
    assert list(tree.evict(1).slots) == [3]
    assert cached_sequences(tree) == {(1,), (1, 2), (7,)}
    tree.match([1, 2])  # now [7] is the least recently used
    assert list(tree.evict(1).slots) == [9]
    assert list(tree.evict(1).slots) == [0, 1]
    tree._check()


def test_pins_nest_and_protect_the_path() -> None:
    tree = RadixTree()
    tree.insert([1, 2, 3, 4], array("q", range(4)))
    tree.insert([1, 2, 5], array("q", [0, 1, 8]))
    hit = tree.match([1, 2, 3])
    tree.pin(hit.node)
    tree.pin(hit.node)
    tree._check()
    assert tree.pinned_size == 3 and tree.evictable_size == 2
    out = tree.evict(100)  # only [4] and [5] may go
    assert out.n_tokens == 2 and sorted(out.slots) == [3, 8]
    tree.unpin(hit.node)
    assert tree.evict(100).n_tokens == 0  # still pinned once
    tree.unpin(hit.node)
    assert tree.evict(100).n_tokens == 3
    with pytest.raises(ValueError, match="not pinned"):
        tree.unpin(hit.node)
    tree._check()


def test_a_pinned_node_split_later_keeps_its_pins_on_both_halves() -> None:
    tree = RadixTree()
    tree.insert([1, 2, 3, 4], array("q", range(4)))
    node = tree.match([1, 2, 3, 4]).node
    tree.pin(node)
    tree.match([1, 2, 9])  # splits the pinned edge
    tree._check()
    assert tree.evict(10).n_tokens == 0
    tree.unpin(node)
    tree._check()
    assert tree.evict(10).n_tokens == 4


def test_namespaces_never_share_a_node() -> None:
    tree = RadixTree()
    tree.insert([1, 2, 3], array("q", [0, 1, 2]), namespace="a")
    assert tree.match([1, 2, 3], namespace="b").length == 0
    assert tree.match([1, 2, 3]).length == 0
    tree.insert([1, 2, 3], array("q", [3, 4, 5]), namespace="b")
    assert list(tree.match([1, 2, 3], namespace="a").slots) == [0, 1, 2]
    assert list(tree.match([1, 2, 3], namespace="b").slots) == [3, 4, 5]
    assert sorted(tree.namespaces(), key=str) == ["a", "b"]
    tree._check()


def test_peek_neither_splits_nor_touches() -> None:
    tree = RadixTree()
    tree.insert([1, 2, 3, 4], array("q", range(4)))
    tree.insert([8], array("q", [9]))
    assert tree.peek([1, 2, 7]) == 2 and tree.peek([5]) == 0 and tree.peek([1, 2, 3, 4, 5]) == 4
    assert tree.n_nodes == 2
    assert list(tree.evict(1).slots) == [0, 1, 2, 3]  # peek did not make [1, 2, 3, 4] recent


def test_relabel_slots() -> None:
    tree = RadixTree()
    tree.insert([1, 2], array("q", [5, 6]))
    tree.insert([1, 3], array("q", [5, 7]))
    tree.relabel_slots([-1, -1, -1, -1, -1, 0, 1, 2])
    assert list(tree.match([1, 2]).slots) == [0, 1]
    assert list(tree.match([1, 3]).slots) == [0, 2]


def test_check_catches_a_broken_tree() -> None:
    tree = RadixTree()
    tree.insert([1, 2], array("q", [0, 1]))
    tree.insert([1, 3], array("q", [0, 2]))
    node = tree.match([1, 3]).node
    assert node is not None
    node.slots = array("q", [1])  # slot 1 now owned twice
    with pytest.raises(AssertionError, match="owned by two"):
        tree._check()


def test_descend_without_slots_walks_as_with_them() -> None:
    trees = [RadixTree(), RadixTree()]
    for tree in trees:
        tree.insert([1, 2, 3, 4, 5], array("q", range(5)))
        tree.insert([1, 2, 7], array("q", [0, 1, 9]))
    top = [tree.match([1, 2]).node for tree in trees]
    with_slots = trees[0].descend(top[0], [1, 2, 3, 4, 8], 2)
    without = trees[1].descend(top[1], [1, 2, 3, 4, 8], 2, slots=False)
    assert (with_slots.length, list(with_slots.slots)) == (4, [2, 3])
    assert (without.length, list(without.slots)) == (4, [])
    for tree, found in zip(trees, (with_slots, without), strict=True):
        tree._check()
        assert found.node is not None and list(tree.path_tokens(found.node)) == [1, 2, 3, 4]
        assert tree.n_nodes == 4  # [1, 2] [3, 4] [5] [7]: both split [3, 4, 5] after 4
        victim = tree.victim()  # the lower half of the split keeps the tick of the first insert
        assert victim is not None and list(victim.key) == [5]


def _damage(kind: str, tree: RadixTree) -> None:
    node = tree.match([1, 3]).node  # [3]: a device child [4], a parent [1] with children [2] and [3]
    leaf = tree.match([1, 2]).node
    assert node is not None and node.parent is not None and leaf is not None
    if kind == "device_children":
        node.device_children = 5
    elif kind == "root":
        root = tree.root(None)
        assert root is not None
        root.device_children = 0
    elif kind == "pins":
        node.parent.pins = 1  # not counted in pinned_size
    elif kind == "length":
        node.key = array("i", [3, 3])
    elif kind == "typecode":
        node.slots = array("i", [2])
    elif kind == "cycle":
        node.children[4] = node.parent  # [1] is reached again below [3]
    elif kind == "tick":
        node.tick = node.parent.tick + 1
    elif kind == "order":
        tree._order.remove(leaf)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("device_children", "device_children"),
        ("root", "device_children"),
        ("pins", "pinned count"),
        ("length", "slots and tokens differ"),
        ("typecode", "typecodes"),
        ("cycle", "reached twice"),
        ("tick", "touched after its parent"),
        ("order", "not exactly its candidates"),
    ],
)
def test_check_catches_each_kind_of_damage(kind: str, message: str) -> None:
    tree = RadixTree()
    tree.insert([1, 2], array("q", [0, 1]))
    tree.insert([1, 3, 4], array("q", [0, 2, 3]))
    tree._check()
    _damage(kind, tree)
    with pytest.raises(AssertionError, match=message):
        tree._check()


class TreeMachine(RuleBasedStateMachine):
    """The tree alone against a brute-force model: every cached prefix (per namespace) and the
    slot of its last token. Matches, inserts and descents must agree with it exactly; an
    eviction removes unpinned prefixes only and hands back exactly their slots."""

    def __init__(self) -> None:
        super().__init__()
        self.tree = RadixTree()
        self.model: dict[tuple[Hashable, tuple[int, ...]], int] = {}
        self.next_slot = 0
        self.pinned: list[tuple[Node, Hashable, tuple[int, ...]]] = []

    def fresh(self, n: int) -> array:
        self.next_slot += n
        return array("q", range(self.next_slot - n, self.next_slot))

    def longest(self, ns: Hashable, tokens: tuple[int, ...]) -> int:
        n = 0
        while n < len(tokens) and (ns, tokens[: n + 1]) in self.model:
            n += 1
        return n

    def slots_of(self, ns: Hashable, tokens: tuple[int, ...], start: int, stop: int) -> list[int]:
        return [self.model[(ns, tokens[: i + 1])] for i in range(start, stop)]

    def add(self, ns: Hashable, tokens: tuple[int, ...], start: int, slots: array) -> None:
        for i in range(start, len(tokens)):
            self.model[(ns, tokens[: i + 1])] = slots[i - start]

    @rule(ns=NAMESPACES, tokens=TOKENS)
    def insert(self, ns: Hashable, tokens: tuple[int, ...]) -> None:
        have = self.longest(ns, tokens)
        slots = self.fresh(len(tokens))
        out = self.tree.insert(tokens, slots, namespace=ns)
        assert out.prefix_length == have
        self.add(ns, tokens, have, slots[have:])
        if tokens:
            assert tuple(self.tree.path_tokens(out.node)) == tokens

    @rule(ns=NAMESPACES, tokens=TOKENS, limit=st.none() | st.integers(0, 8))
    def match(self, ns: Hashable, tokens: tuple[int, ...], limit: int | None) -> None:
        hit = self.tree.match(tokens, namespace=ns, max_length=limit)
        want = self.longest(ns, tokens[:limit])
        assert hit.length == want == self.tree.peek(tokens[:limit], namespace=ns)
        assert list(hit.slots) == self.slots_of(ns, tokens, 0, want)
        if want:
            assert hit.node is not None and tuple(self.tree.path_tokens(hit.node)) == tokens[:want]

    @rule(ns=NAMESPACES, tokens=TOKENS, cut=st.integers(0, 8), with_slots=st.booleans())
    def descend_and_attach(self, ns: Hashable, tokens: tuple[int, ...], cut: int, with_slots: bool) -> None:
        start = min(cut, self.longest(ns, tokens))
        top = self.tree.match(tokens[:start], namespace=ns).node if start else None
        found = self.tree.descend(top, tokens, start, ns, slots=with_slots)
        want = self.longest(ns, tokens)
        assert found.length == want
        assert list(found.slots) == (self.slots_of(ns, tokens, start, want) if with_slots else [])
        if want < len(tokens):
            slots = self.fresh(len(tokens) - want)
            leaf = self.tree.attach(found.node, array("i", tokens[want:]), slots, ns)
            self.add(ns, tokens, want, slots)
            assert tuple(self.tree.path_tokens(leaf)) == tokens

    @rule(ns=NAMESPACES, tokens=TOKENS)
    def pin(self, ns: Hashable, tokens: tuple[int, ...]) -> None:
        hit = self.tree.match(tokens, namespace=ns)
        if hit.node is not None and hit.length:
            self.tree.pin(hit.node)
            self.pinned.append((hit.node, ns, tokens[: hit.length]))

    @precondition(lambda self: self.pinned)
    @rule(data=st.data())
    def unpin(self, data: st.DataObject) -> None:
        node, _, _ = self.pinned.pop(data.draw(st.integers(0, len(self.pinned) - 1)))
        self.tree.unpin(node)

    @rule(n_tokens=st.integers(0, 12))
    def evict(self, n_tokens: int) -> None:
        evictable = self.tree.evictable_size
        out = self.tree.evict(n_tokens)
        assert out.n_tokens >= min(n_tokens, evictable)
        now = set()
        for node in self.tree.iter_nodes():
            seq = tuple(self.tree.path_tokens(node))
            now.update((self.tree.namespace_of(node), seq[:i]) for i in range(1, len(seq) + 1))
        gone = set(self.model) - now
        assert sorted(out.slots) == sorted(self.model[key] for key in gone)
        for _, ns, seq in self.pinned:
            assert (ns, seq) in now
        self.model = {key: slot for key, slot in self.model.items() if key in now}

    @invariant()
    def agrees(self) -> None:
        self.tree._check()
        assert self.tree.size == len(self.model)
        for node in self.tree.iter_nodes():
            ns, seq = self.tree.namespace_of(node), tuple(self.tree.path_tokens(node))
            assert list(self.tree.path_slots(node)) == self.slots_of(ns, seq, 0, len(seq))

    def teardown(self) -> None:
        for node, _, _ in self.pinned:
            self.tree.unpin(node)
        self.tree._check()
        assert self.tree.pinned_size == 0


TestTreeMachine = TreeMachine.TestCase
TestTreeMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
