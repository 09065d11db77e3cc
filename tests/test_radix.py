"""Unit tests of the radix tree: splits, edges, re-inserts, pins, LRU eviction."""

from __future__ import annotations

from array import array

import pytest

from prefixcache.tree import RadixTree


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
