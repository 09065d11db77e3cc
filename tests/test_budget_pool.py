"""Budgets and the KV pool: parsing, capacity, alloc/free, gather/write, resize."""

from __future__ import annotations

from array import array

import pytest
import torch

from prefixcache.config import parse_budget
from prefixcache.errors import PoolExhaustedError
from prefixcache.kv import KVPool, LayerSpec
from prefixcache.kv.layout import check_kv

from .fake_kv import LAYERS, assert_kv_is, fake_kv


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4GiB", 4 * 2**30),
        ("512MB", 512 * 10**6),
        ("1.5GB", 1_500_000_000),
        ("1.5 GiB", 3 * 2**29),
        ("100kb", 100_000),
        ("2KiB", 2048),
        ("1TB", 10**12),
        ("7", 7),
        ("7B", 7),
        (".5KiB", 512),
        (123, 123),
    ],
)
def test_parse_budget_accepts_si_and_iec(text: str | int, expected: int) -> None:
    assert parse_budget(text) == expected


@pytest.mark.parametrize("bad", ["", "GiB", "4 GiBs", "4G", "-1GB", "1e9", "four", "0", "0.1", "0MB", 0, -5])
def test_parse_budget_rejects_garbage_zero_and_negative(bad: str | int) -> None:
    with pytest.raises(ValueError, match="budget") as err:
        parse_budget(bad)
    assert repr(bad) in str(err.value)


@pytest.mark.parametrize("bad", [1.5, None, True, [1], b"1GB"])
def test_parse_budget_rejects_other_types(bad: object) -> None:
    with pytest.raises(TypeError, match="budget"):
        parse_budget(bad)  # type: ignore[arg-type]


def test_capacity_from_budget_and_reserved_never_above_it() -> None:
    spec = [LayerSpec(4, 8, 8)] * 3  # 2 x 3 layers x 4 heads x 8 dims = 192 elements
    pool = KVPool(spec, "1MiB", dtype=torch.float16)
    assert pool.bytes_per_token == 192 * 2
    assert pool.capacity == 2**20 // 384
    assert pool.reserved_bytes <= 2**20
    assert pool.reserved_bytes + pool.bytes_per_token > 2**20


def test_budget_of_exactly_one_token_and_below() -> None:
    pool = KVPool(LAYERS, 72, dtype=torch.float64)  # 9 elements x 8 bytes
    assert pool.capacity == 1
    with pytest.raises(ValueError, match="smaller than one token"):
        KVPool(LAYERS, 71, dtype=torch.float64)


def test_bad_layer_specs_and_dtype() -> None:
    with pytest.raises(ValueError, match="layers"):
        KVPool([], 1000)
    with pytest.raises(ValueError, match=r"layers\[0\]"):
        KVPool([LayerSpec(0, 4, 4)], 1000)
    with pytest.raises(TypeError, match="dtype"):
        KVPool([LayerSpec(1, 4, 4)], 1000, dtype=torch.int32)


def test_alloc_free_and_exhaustion() -> None:
    pool = KVPool(LAYERS, 72 * 5, dtype=torch.float64)
    a = pool.alloc(3)
    assert list(a) == [0, 1, 2] and pool.n_free == 2
    with pytest.raises(PoolExhaustedError):
        pool.alloc(3)
    assert pool.n_free == 2
    pool.free(a)
    assert pool.n_free == 5
    assert sorted(pool.alloc(5)) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="n"):
        pool.alloc(-1)


def test_write_then_gather_round_trip_from_a_batch_row() -> None:
    pool = KVPool(LAYERS, 72 * 20, dtype=torch.float64)
    tokens = [4, 8, 15, 16, 23, 42]
    kv = fake_kv(tokens, batch=3, row=2, offset=4)  # row 2, positions 4..9
    check_kv(kv, pool.layers, pool.device, positions=4 + len(tokens), row=2)
    slots = array("q", [7, 3, 11, 0, 19, 5])
    pool.write(slots, kv, start=4, row=2)
    assert_kv_is(pool.gather(slots), tokens)
    assert_kv_is(pool.gather(slots[:3]), tokens[:3])
    assert pool.gather(array("q"))[0][0].shape == (1, 1, 0, 2)


def test_check_kv_rejects_wrong_shapes() -> None:
    pool = KVPool(LAYERS, 72 * 20, dtype=torch.float64)
    kv = fake_kv([1, 2, 3])
    with pytest.raises(ValueError, match="layers"):
        check_kv(kv[:1], pool.layers, pool.device, positions=3, row=0)
    with pytest.raises(ValueError, match=r"kv\[0\] key_states"):
        check_kv(kv, pool.layers, pool.device, positions=4, row=0)
    with pytest.raises(ValueError, match="batch"):
        check_kv(kv, pool.layers, pool.device, positions=3, row=1)
    bad = [(kv[0][0].transpose(1, 3), kv[0][1]), kv[1]]
    with pytest.raises(ValueError, match=r"kv\[0\] key_states"):
        check_kv(bad, pool.layers, pool.device, positions=3, row=0)


def test_resize_keeps_data_and_renumbers() -> None:
    pool = KVPool(LAYERS, 72 * 8, dtype=torch.float64)
    tokens = [1, 2, 3, 4, 5]
    slots = pool.alloc(5)
    pool.write(slots, fake_kv(tokens))
    keep = array("q", [slots[0], slots[1], slots[2]])
    numbers = pool.resize(72 * 3, keep)
    assert pool.capacity == 3 and pool.n_free == 0 and pool.budget == 216
    assert [numbers[s] for s in keep] == [0, 1, 2]
    assert_kv_is(pool.gather(array("q", [0, 1, 2])), tokens[:3])
    with pytest.raises(ValueError, match="budget"):
        pool.resize(72 * 2, keep)
    assert pool.capacity == 3  # unchanged by the refused resize
    pool.resize("1KiB", array("q", [0, 1, 2]))
    assert pool.capacity == 1024 // 72 and pool.n_free == pool.capacity - 3
    assert_kv_is(pool.gather(array("q", [0, 1, 2])), tokens[:3])
