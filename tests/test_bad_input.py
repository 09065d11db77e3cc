"""Generated bad input for every public entry point.

Each call must fail with the ``TypeError`` or ``ValueError`` expected for that
argument, with a message that names the argument (and shows a scalar value), and
leave the cache exactly as it was: same stats, same nodes, pins, slots and access
ticks, same free list, same pool contents, and ``_check()`` still holding.

The fixed cases of ``test_cache.py``, ``test_budget_pool.py`` and
``test_hf_checks.py`` are widened here into strategies.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from fractions import Fraction
from functools import cache
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import DynamicCache

import prefixcache
from prefixcache import CachedModel, Hit, KVPool, PrefixCache, parse_budget
from prefixcache.hf.kvcache import GENERATE_KEYWORD

from .fake_kv import LAYERS, fake_kv
from .tiny_models import VOCAB, tiny_model

TOKEN_BYTES = 72  # fake_kv's layers in float64
CAPACITY = 12
PINNED = (1, 2, 3, 4, 5)  # a prompt the cache holds pinned while bad calls arrive


class Bad(NamedTuple):
    """One bad call: what to pass, what must be raised, what the message must hold."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    exc: type[Exception]
    names: str  # a regex the message must match (the argument's name)
    shows: str | None = None  # a substring the message must hold (the value), when it is short

    def __repr__(self) -> str:  # hypothesis prints it on failure
        return f"Bad(args={self.args!r}, kwargs={self.kwargs!r}, exc={self.exc.__name__}, names={self.names!r})"


def call_and_check(call: Callable[..., Any], bad: Bad) -> None:
    with pytest.raises((TypeError, ValueError)) as err:
        call(*bad.args, **bad.kwargs)
    assert isinstance(err.value, bad.exc), f"{err.value!r}: expected {bad.exc.__name__}"
    message = str(err.value)
    assert re.search(bad.names, message), f"{message!r} does not name {bad.names!r}"
    if bad.shows is not None:
        assert bad.shows in message, f"{message!r} does not show the value {bad.shows!r}"


# -- what "exactly as it was" means ------------------------------------------------


def snapshot(c: PrefixCache) -> tuple[Any, torch.Tensor]:
    """Everything observable about a cache: stats, every node (namespace, path, slots,
    pins, tick), the tree clock, the free list, and a copy of the pool's table."""
    tree, pool = c.tree, c.pool
    nodes = []
    for node in tree.iter_nodes():
        root = node
        while root.parent is not None:
            root = root.parent
        namespace = repr(root.namespace)  # type: ignore[attr-defined]
        nodes.append((namespace, tuple(tree.path_tokens(node)), tuple(node.slots), node.pins, node.tick))
    plain = (c.stats, sorted(nodes), tree.last_tick, tuple(pool.free_slots()), pool.capacity)
    return plain, pool.table_copy()


def assert_unchanged(c: PrefixCache, before: tuple[Any, torch.Tensor]) -> None:
    after = snapshot(c)
    assert after[0] == before[0], "the cache changed"
    assert torch.equal(after[1], before[1]), "the pool's contents changed"
    c._check()


# -- shared strategies ---------------------------------------------------------------

unhashable = st.one_of(
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sets(st.integers(), max_size=2),
    st.builds(bytearray, st.binary(max_size=3)),
    st.tuples(st.integers(), st.lists(st.integers(), max_size=2)),
)


def not_a_count(allow_none: bool) -> st.SearchStrategy[Any]:
    """Values that are not an int >= 0 (``None`` too, unless it means "no limit")."""
    options = [
        st.integers(max_value=-1),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.text(max_size=3),
        st.decimals(allow_nan=False, allow_infinity=False, places=1),
    ]
    if not allow_none:
        options.append(st.none())
    return st.one_of(*options)


@st.composite
def bad_tokens(draw: st.DrawFn) -> tuple[Any, type[Exception], str | None]:
    """Token ids that ``as_tokens`` must refuse: (value, exception, shown value)."""
    good = draw(st.lists(st.integers(0, 50), max_size=6))
    at = draw(st.integers(0, len(good)))
    kind = draw(st.sampled_from(["element", "range", "container", "tensor"]))
    if kind == "element":
        odd = draw(st.one_of(st.floats(), st.none(), st.text(max_size=2), st.booleans(), st.just(1 + 2j)))
        return [*good[:at], odd, *good[at:]], TypeError, repr(odd)
    if kind == "range":
        odd = draw(st.one_of(st.integers(max_value=-1), st.integers(min_value=2**31)))
        return [*good[:at], odd, *good[at:]], ValueError, str(odd)
    if kind == "container":
        value = draw(
            st.one_of(
                st.none(),
                st.integers(),
                st.floats(),
                st.text(max_size=4),
                st.binary(max_size=4),
                st.dictionaries(st.integers(0, 9), st.integers(0, 9), max_size=2),
                st.sets(st.integers(0, 9), max_size=2),
                st.just(np.array(good, dtype=np.int64)),
            )
        )
        return value, TypeError, None
    shape = draw(st.sampled_from(["float", "bool", "0-D", "2-D", "3-D", "negative", "meta"]))
    ids = torch.tensor(good or [0], dtype=torch.long)
    if shape == "float":
        return ids.double(), TypeError, None
    if shape == "bool":
        return ids > 3, TypeError, None
    if shape == "0-D":
        return ids[0], TypeError, None
    if shape == "2-D":
        return ids.unsqueeze(0), TypeError, None
    if shape == "3-D":
        return ids.reshape(1, 1, -1), TypeError, None
    if shape == "negative":
        ids[draw(st.integers(0, len(ids) - 1))] = -draw(st.integers(1, 10**6))
        return ids, ValueError, None
    return ids.to("meta"), ValueError, "meta"


def budgets_that_do_not_parse() -> st.SearchStrategy[tuple[Any, type[Exception]]]:
    """Budgets ``parse_budget`` refuses whatever the token size: (value, exception)."""
    known_units = {"", "b", "kb", "mb", "gb", "tb", "kib", "mib", "gib", "tib"}
    number = st.from_regex(r"\A[0-9]{1,4}(\.[0-9]{0,2})?\Z")
    unit = st.text(st.characters(categories=["Ll", "Lu"], max_codepoint=127), min_size=1, max_size=4).filter(
        lambda u: u.lower() not in known_units
    )
    return st.one_of(
        st.tuples(
            st.one_of(st.floats(), st.none(), st.booleans(), st.lists(st.integers(), max_size=1)), st.just(TypeError)
        ),
        st.tuples(st.builds(lambda s: s.encode(), st.just("1GB")), st.just(TypeError)),
        st.tuples(st.integers(max_value=0), st.just(ValueError)),
        st.tuples(st.builds(lambda n, u: n + u, number, unit), st.just(ValueError)),  # unknown unit
        st.tuples(st.builds(lambda n: "-" + n, number), st.just(ValueError)),  # negative
        st.tuples(st.builds(lambda a, b: f"{a}e{b}", st.integers(1, 9), st.integers(0, 9)), st.just(ValueError)),
        st.tuples(
            st.sampled_from(["", " ", "GiB", "MB", ".", "1..5GB", "1 2", "0", "0.0", "0KiB"]), st.just(ValueError)
        ),
        st.tuples(st.builds(lambda k: f"0.{'0' * k}1B", st.integers(0, 3)), st.just(ValueError)),  # under a byte
    )


# -- parse_budget ----------------------------------------------------------------------


@given(bad=budgets_that_do_not_parse())
def test_parse_budget_refuses_with_the_value_in_the_message(bad: tuple[Any, type[Exception]]) -> None:
    value, exc = bad
    call_and_check(parse_budget, Bad((value,), {}, exc, "budget", repr(value)))


_UNIT_BYTES = {"B": 1, "kB": 10**3, "MB": 10**6, "GiB": 2**30, "KiB": 2**10, "TB": 10**12}


@given(
    whole=st.integers(0, 9999),
    frac=st.from_regex(r"\A[0-9]{0,3}\Z"),
    unit=st.sampled_from(sorted(_UNIT_BYTES)),
    case=st.sampled_from([str, str.lower, str.upper]),
    space=st.sampled_from(["", " "]),
)
def test_parse_budget_reads_what_it_documents(whole: int, frac: str, unit: str, case: Any, space: str) -> None:
    text = f"{whole}.{frac}" if frac else str(whole)
    exact = Fraction(text) * _UNIT_BYTES[unit]
    written = f"{text}{space}{case(unit)}"
    if exact < 1:
        with pytest.raises(ValueError, match="budget"):
            parse_budget(written)
    else:
        assert parse_budget(written) == math.floor(exact)


# -- KVPool ---------------------------------------------------------------------------


@st.composite
def bad_pool_args(draw: st.DrawFn) -> Bad:
    good_layers = draw(
        st.lists(st.tuples(st.integers(1, 4), st.integers(1, 8), st.integers(1, 8)), min_size=1, max_size=3)
    )
    per_token = sum(h * (k + v) for h, k, v in good_layers) * 4  # float32
    kind = draw(st.sampled_from(["no layers", "size", "budget", "below a token", "dtype"]))
    if kind == "no layers":
        return Bad(([], 10**6), {}, ValueError, "layers")
    if kind == "size":
        i, j = draw(st.integers(0, len(good_layers) - 1)), draw(st.integers(0, 2))
        odd = draw(st.one_of(st.integers(max_value=0), st.floats()))  # a float, even 2.0, is not an int
        spec = list(good_layers[i])
        spec[j] = odd
        layers = [*good_layers[:i], tuple(spec), *good_layers[i + 1 :]]
        return Bad((layers, 10**6), {}, ValueError, rf"layers\[{i}\]")
    if kind == "budget":
        value, exc = draw(budgets_that_do_not_parse())
        return Bad((good_layers, value), {}, exc, "budget", repr(value))
    if kind == "below a token":
        value = draw(st.integers(1, per_token - 1))
        return Bad((good_layers, value), {}, ValueError, "budget", str(per_token))
    dtype = draw(st.sampled_from([torch.int32, torch.int64, torch.bool, torch.uint8, "float32", None, float]))
    return Bad((good_layers, 10**6), {"dtype": dtype}, TypeError, "dtype")


@given(bad=bad_pool_args())
def test_kvpool_refuses_bad_layers_budgets_and_dtypes(bad: Bad) -> None:
    call_and_check(KVPool, bad)


# Malformed layer specs and devices.
MALFORMED_POOL_ARGS = [
    pytest.param((None, 1000), {}, TypeError, "layers", id="layers None"),
    pytest.param(([5], 1000), {}, TypeError, r"layers\[0\]", id="layer an int"),
    pytest.param(([(1, 2)], 1000), {}, ValueError, r"layers\[0\]", id="two sizes"),
    pytest.param(([(1, 2, 3, 4)], 1000), {}, ValueError, r"layers\[0\]", id="four sizes"),
    pytest.param(([(1, "a", 2)], 1000), {}, ValueError, r"layers\[0\]", id="a str size"),
    pytest.param(([(True, 4, 4)], 1000), {}, ValueError, r"layers\[0\]", id="a bool size"),
    pytest.param((LAYERS, 1000), {"device": "nonsense"}, ValueError, "device", id="unknown device"),
]


@pytest.mark.parametrize(("args", "kwargs", "exc", "names"), MALFORMED_POOL_ARGS)
def test_kvpool_refuses_malformed_layers_and_devices(
    args: tuple[Any, ...], kwargs: dict[str, Any], exc: type[Exception], names: str
) -> None:
    call_and_check(KVPool, Bad(args, kwargs, exc, names))


# -- PrefixCache ----------------------------------------------------------------------


def loaded_cache() -> tuple[PrefixCache, Hit]:
    """A cache holding three prompts (two in namespace "a"), one of them pinned."""
    c = PrefixCache(LAYERS, TOKEN_BYTES * CAPACITY, dtype=torch.float64)
    c.insert(list(PINNED), fake_kv(PINNED))
    c.insert([1, 2, 9], fake_kv([1, 2, 9]), namespace="a")
    c.insert([7, 7], fake_kv([7, 7]), namespace="a")
    hit = c.match(list(PINNED))
    assert hit.length == len(PINNED)
    return c, hit


@st.composite
def bad_match(draw: st.DrawFn) -> Bad:
    which = draw(st.sampled_from(["tokens", "namespace", "max_length"]))
    tokens = draw(st.lists(st.integers(0, 9), max_size=6))
    if which == "tokens":
        value, exc, shows = draw(bad_tokens())
        return Bad((value,), {}, exc, "tokens", shows)
    if which == "namespace":
        return Bad((tokens,), {"namespace": draw(unhashable)}, TypeError, "namespace")
    value = draw(not_a_count(allow_none=True))
    return Bad((tokens,), {"max_length": value}, ValueError, "max_length", repr(value))


@given(bad=bad_match())
def test_match_refuses_and_changes_nothing(bad: Bad) -> None:
    c, hit = loaded_cache()
    before = snapshot(c)
    call_and_check(c.match, bad)
    assert_unchanged(c, before)
    hit.release()


@st.composite
def bad_insert(draw: st.DrawFn) -> Bad:
    tokens = draw(st.lists(st.integers(0, 9), min_size=1, max_size=6))
    kv = fake_kv(tokens)
    which = draw(st.sampled_from(["tokens", "namespace", "offset", "row", "kv"]))
    if which == "tokens":
        value, exc, shows = draw(bad_tokens())
        return Bad((value, fake_kv(list(range(8)))), {}, exc, "tokens", shows)
    if which == "namespace":
        return Bad((tokens, kv), {"namespace": draw(unhashable)}, TypeError, "namespace")
    if which in ("offset", "row"):
        value = draw(not_a_count(allow_none=False))
        return Bad((tokens, kv), {which: value}, ValueError, which, repr(value))
    layer = draw(st.integers(0, len(kv) - 1))
    part = draw(st.integers(0, 1))
    kind = draw(
        st.sampled_from(
            [
                "not layers",
                "layer count",
                "not a pair",
                "one tensor",
                "not a tensor",
                "shape",
                "short",
                "row",
                "dtype",
                "device",
            ]
        )
    )

    def with_part(new: Any) -> list[Any]:
        pair = list(kv[layer])
        pair[part] = new
        return [*kv[:layer], tuple(pair), *kv[layer + 1 :]]

    t = kv[layer][part]
    name = rf"kv\[{layer}\]"
    if kind == "not layers":
        return Bad(
            (tokens, draw(st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=3)))), {}, TypeError, "kv"
        )
    if kind == "layer count":
        return Bad((tokens, draw(st.sampled_from([kv[:1], [*kv, kv[0]], []]))), {}, ValueError, "kv.*layers")
    if kind == "not a pair":
        odd = draw(st.one_of(st.none(), st.integers(), st.floats()))
        return Bad((tokens, [*kv[:layer], odd, *kv[layer + 1 :]]), {}, TypeError, name)
    if kind == "one tensor":
        return Bad((tokens, [*kv[:layer], (kv[layer][0],), *kv[layer + 1 :]]), {}, ValueError, name)
    if kind == "not a tensor":
        return Bad((tokens, with_part(t.tolist())), {}, TypeError, name)
    if kind == "shape":
        odd = draw(st.sampled_from([t[:, :, :, :0], torch.cat([t, t], 3), t.unsqueeze(0), t[0], t.repeat(1, 2, 1, 1)]))
        return Bad((tokens, with_part(odd)), {}, ValueError, name)
    if kind == "short":  # fewer positions than offset + len(tokens)
        return Bad((tokens, kv), {"offset": draw(st.integers(1, 5))}, ValueError, r"kv\[0\]")
    if kind == "row":
        return Bad((tokens, kv), {"row": draw(st.integers(1, 5))}, ValueError, r"kv\[0\].*batch")
    if kind == "dtype":
        dtype = draw(st.sampled_from([torch.int64, torch.int32, torch.bool]))
        return Bad((tokens, with_part(t.to(dtype))), {}, TypeError, name)
    return Bad((tokens, with_part(t.to("meta"))), {}, ValueError, rf"{name}.*meta")


@given(bad=bad_insert())
def test_insert_refuses_and_changes_nothing(bad: Bad) -> None:
    c, hit = loaded_cache()
    before = snapshot(c)
    call_and_check(c.insert, bad)
    assert_unchanged(c, before)
    hit.release()


@given(
    which=st.sampled_from(["not a hit", "another cache", "released", "length"]),
    odd=st.one_of(st.none(), st.integers(), st.text(max_size=3), st.tuples(st.integers())),
    length=st.one_of(st.integers(max_value=-1), st.integers(min_value=len(PINNED) + 1), not_a_count(allow_none=True)),
)
def test_gather_refuses_and_changes_nothing(which: str, odd: Any, length: Any) -> None:
    c, hit = loaded_cache()
    _, other_hit = loaded_cache()
    released = c.match([7, 7], namespace="a")
    released.release()
    before = snapshot(c)
    if which == "not a hit":
        bad = Bad((odd,), {}, TypeError, "hit")
    elif which == "another cache":
        bad = Bad((other_hit,), {}, ValueError, "hit.*another")
    elif which == "released":
        bad = Bad((released,), {}, ValueError, "hit.*released")
    else:
        bad = Bad((hit,), {"length": length}, ValueError, "length", repr(length))
    call_and_check(c.gather, bad)
    assert_unchanged(c, before)
    hit.release()
    other_hit.release()


@given(n=not_a_count(allow_none=False))
def test_evict_refuses_and_changes_nothing(n: Any) -> None:
    c, hit = loaded_cache()
    before = snapshot(c)
    call_and_check(c.evict, Bad((n,), {}, ValueError, "n_tokens", repr(n)))
    assert_unchanged(c, before)
    hit.release()


@st.composite
def bad_resize(draw: st.DrawFn) -> Bad:
    kind = draw(st.sampled_from(["unparseable", "below a token", "below the pinned"]))
    if kind == "unparseable":
        value, exc = draw(budgets_that_do_not_parse())
        return Bad((value,), {}, exc, "budget", repr(value))
    if kind == "below a token":
        value = draw(
            st.one_of(st.integers(1, TOKEN_BYTES - 1), st.builds(lambda n: f"{n}B", st.integers(1, TOKEN_BYTES - 1)))
        )
        return Bad((value,), {}, ValueError, "budget.*one token", repr(value))
    value = draw(st.integers(TOKEN_BYTES, TOKEN_BYTES * len(PINNED) - 1))
    return Bad((value,), {}, ValueError, "budget.*pinned", repr(value))


@given(bad=bad_resize())
def test_resize_refuses_and_changes_nothing(bad: Bad) -> None:
    c, hit = loaded_cache()
    before = snapshot(c)
    call_and_check(c.resize, bad)
    assert_unchanged(c, before)
    hit.release()


# -- wrap and CachedModel ----------------------------------------------------------------


@cache
def cached_model() -> CachedModel:
    """A wrapped tiny float64 Llama holding a few prompts (shared across examples: a bad
    call must not change it, which each example checks)."""
    wrapped = prefixcache.wrap(tiny_model("llama", torch.float64), "64KiB")
    wrapped.prefill(torch.arange(3, 23))
    wrapped.generate(torch.arange(3, 15).unsqueeze(0), max_new_tokens=2, do_sample=False)
    wrapped.prefill(torch.arange(40, 50), namespace="a")
    return wrapped


@settings(max_examples=min(60, settings().max_examples))  # each builds a model's first forward passes
@given(
    which=st.sampled_from(["model", "budget", "below a token"]),
    model=st.sampled_from([None, 3, "llama", {}, torch.nn.Linear(2, 2)]),
    budget=budgets_that_do_not_parse(),
    small=st.integers(1, 511),
)
def test_wrap_refuses_bad_models_and_budgets(
    which: str, model: Any, budget: tuple[Any, type[Exception]], small: int
) -> None:
    tiny = tiny_model("llama", torch.float64)  # 512 bytes of KV per token
    if which == "model":
        call_and_check(prefixcache.wrap, Bad((model, "1MiB"), {}, TypeError, "model"))
    elif which == "budget":
        call_and_check(prefixcache.wrap, Bad((tiny, budget[0]), {}, budget[1], "budget", repr(budget[0])))
    else:
        call_and_check(prefixcache.wrap, Bad((tiny, small), {}, ValueError, "budget.*one token", "512"))


def good_ids(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    """A valid left-padded batch of ids in [3, VOCAB) and its mask."""
    batch, width = draw(st.integers(1, 3)), draw(st.integers(2, 8))
    lengths = draw(st.lists(st.integers(1, width), min_size=batch, max_size=batch))
    ids = torch.tensor(
        draw(
            st.lists(
                st.lists(st.integers(3, VOCAB - 1), min_size=width, max_size=width), min_size=batch, max_size=batch
            )
        )
    )
    mask = torch.zeros(batch, width, dtype=torch.long)
    for r, n in enumerate(lengths):
        mask[r, width - n :] = 1
    return ids, mask


@st.composite
def bad_request(draw: st.DrawFn, entry: str) -> Bad:
    ids, mask = good_ids(draw)
    targets = ["input_ids", "attention_mask", "namespace"] + (["logits_to_keep"] if entry == "prefill" else [])
    which = draw(st.sampled_from(targets))
    if which == "namespace":
        return Bad((ids, mask), {"namespace": draw(unhashable)}, TypeError, "namespace")
    if which == "logits_to_keep":
        value = draw(not_a_count(allow_none=False))
        return Bad((ids, mask), {"logits_to_keep": value}, ValueError, "logits_to_keep", repr(value))
    if which == "input_ids":
        kind = draw(st.sampled_from(["not a tensor", "dtype", "dims", "empty", "negative", "too large", "device"]))
        if kind == "not a tensor":
            value = draw(st.sampled_from([ids.tolist(), ids.numpy(), None, 7, "3 4 5"]))
            return Bad((value, None), {}, TypeError, "input_ids")
        if kind == "dtype":
            dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bool, torch.complex64]))
            return Bad((ids.to(dtype), None), {}, TypeError, "input_ids.*dtype|input_ids.*integer")
        if kind == "dims":
            value = draw(st.sampled_from([ids.unsqueeze(0), ids.reshape(1, 1, 1, -1), ids[0, 0]]))
            return Bad((value, None), {}, ValueError, r"input_ids.*\[batch, seq\]")
        if kind == "empty":
            value = draw(st.sampled_from([ids[:, :0], ids[:0], ids[0, :0]]))
            return Bad((value, None), {}, ValueError, "input_ids.*empty")
        r, c = draw(st.integers(0, ids.shape[0] - 1)), draw(st.integers(0, ids.shape[1] - 1))
        if kind == "device":
            return Bad((ids.to("meta"), None), {}, ValueError, "input_ids.*meta")
        odd = -draw(st.integers(1, 10**9)) if kind == "negative" else draw(st.integers(VOCAB, 10**9))
        ids[r, c] = odd
        return Bad((ids, mask), {}, ValueError, "input_ids.*vocabulary", str(odd))
    kind = draw(st.sampled_from(["not a tensor", "dtype", "shape", "values", "hole", "all padding", "device"]))
    r = draw(st.integers(0, ids.shape[0] - 1))
    if kind == "not a tensor":
        return Bad((ids, draw(st.sampled_from([mask.tolist(), mask.numpy(), 1]))), {}, TypeError, "attention_mask")
    if kind == "dtype":
        return Bad(
            (ids, mask.to(draw(st.sampled_from([torch.float32, torch.float64])))), {}, TypeError, "attention_mask"
        )
    if kind == "shape":
        odd = draw(st.sampled_from([mask[:, 1:], mask[:, :, None], torch.cat([mask, mask]), mask.reshape(-1)]))
        return Bad((ids, odd), {}, ValueError, "attention_mask.*shape")
    if kind == "values":
        c = draw(st.integers(0, ids.shape[1] - 1))
        mask[r, c] = draw(st.one_of(st.integers(2, 100), st.integers(-100, -1)))
        return Bad((ids, mask), {}, ValueError, "attention_mask.*0 or 1")
    if kind == "hole":  # a 0 after the row's first 1: a hole, or right padding at the end
        first = int((mask[r] == 1).nonzero()[0])
        if first == ids.shape[1] - 1:
            mask[r, -2:] = torch.tensor([1, 0])
        else:
            mask[r, draw(st.integers(first + 1, ids.shape[1] - 1))] = 0
        return Bad((ids, mask), {}, ValueError, "attention_mask.*(hole|right padding)")
    if kind == "all padding":
        mask[r] = 0
        return Bad((ids, mask), {}, ValueError, "attention_mask.*all padding")
    return Bad((ids, mask.to("meta")), {}, ValueError, "attention_mask.*meta")


@pytest.mark.parametrize("entry", ["prefill", "generate"])
@given(data=st.data())
def test_requests_refuse_bad_input_and_change_nothing(entry: str, data: st.DataObject) -> None:
    wrapped = cached_model()
    bad = data.draw(bad_request(entry))
    if entry == "generate":
        bad = bad._replace(kwargs={**bad.kwargs, "max_new_tokens": 1, "do_sample": False})
    before = snapshot(wrapped.cache)
    call_and_check(getattr(wrapped, entry), bad)
    assert_unchanged(wrapped.cache, before)


# Integer dtypes an embedding cannot take, and bad ids next to the caller's own cache.
@pytest.mark.parametrize(
    ("entry", "kwargs", "ids", "exc"),
    [
        pytest.param("prefill", {}, torch.tensor([[3, 4, 5]], dtype=torch.int8), TypeError),
        pytest.param("generate", {}, torch.tensor([[3, 4, 5]], dtype=torch.uint8), TypeError),
        pytest.param("generate", {"own_cache": True}, torch.rand(1, 3), TypeError),
        pytest.param(
            "generate",
            {"own_cache": True},
            torch.zeros(1, 2, 3, dtype=torch.long),
            ValueError,
        ),
    ],
    ids=["prefill int8", "generate uint8", "own cache, float ids", "own cache, 3-D ids"],
)
def test_requests_refuse_ids_the_model_cannot_take(
    entry: str, kwargs: dict[str, Any], ids: torch.Tensor, exc: type[Exception]
) -> None:
    wrapped = cached_model()
    if kwargs.pop("own_cache", False):
        kwargs = {GENERATE_KEYWORD: DynamicCache(config=wrapped.model.config)}
    if entry == "generate":
        kwargs = {**kwargs, "max_new_tokens": 1, "do_sample": False}
    before = snapshot(wrapped.cache)
    call_and_check(getattr(wrapped, entry), Bad((ids,), kwargs, exc, "input_ids"))
    assert_unchanged(wrapped.cache, before)


# -- what an unlucky caller sends ------------------------------------------------------------


def test_a_host_budget_below_a_token_names_host_budget() -> None:
    tiny = tiny_model("llama", torch.float64)
    with pytest.raises(ValueError, match=r"^host_budget: 100 .*one token"):
        prefixcache.wrap(tiny, "1MiB", host_budget=100)


@pytest.mark.parametrize("option", ["budget", "host_budget"])
def test_a_budget_no_machine_holds_is_a_value_error_naming_it(option: str) -> None:
    tiny = tiny_model("llama", torch.float64)
    options = {"budget": "1MiB", option: "1000TiB"}
    with pytest.raises(ValueError, match=rf"^{option}: '1000TiB'"):
        prefixcache.wrap(tiny, **options)


@pytest.mark.parametrize("name", [GENERATE_KEYWORD, "past_key_values", "cache", "use_cache"])
def test_none_for_a_generate_option_is_its_default(name: str, caplog: pytest.LogCaptureFixture) -> None:
    model = tiny_model("llama", torch.float64)
    cached = prefixcache.wrap(model, "1MiB")
    ids = torch.arange(3, 23).unsqueeze(0)
    with caplog.at_level("WARNING", logger="prefixcache"):
        got = cached.generate(ids, max_new_tokens=3, do_sample=False, **{name: None})
    assert torch.equal(got, model.generate(ids, max_new_tokens=3, do_sample=False))
    assert cached.cache.stats.inserted_tokens > 0 and cached.cache.stats.passed_through == 0
    assert caplog.text == ""


def test_namespaces_equal_in_python_but_of_other_types_are_two_namespaces(tmp_path: Any) -> None:
    """1 == True in Python, but saved files and the remote tier tell them apart: so does the tree."""
    model = tiny_model("llama", torch.float64)
    cached = prefixcache.wrap(model, "1MiB")
    ids = torch.arange(3, 23).unsqueeze(0)
    cached.prefill(ids, namespace=1)
    assert cached.prefill(ids, namespace=True).cached_length == 0
    assert cached.prefill(ids, namespace=(1, "a")).cached_length == 0
    assert cached.prefill(ids, namespace=(True, "a")).cached_length == 0
    assert cached.prefill(ids, namespace=1).cached_length == 19
    path = tmp_path / "c.safetensors"
    cached.cache.save(path)
    again = prefixcache.wrap(model, "1MiB", load=path)
    for namespace in (1, True, (1, "a"), (True, "a")):
        assert again.cache.cached_length(ids[0], namespace=namespace) == 20
    assert again.cache.cached_length(ids[0], namespace=0) == 0
    again.cache.drop_namespace(True)
    assert again.cache.cached_length(ids[0], namespace=1) == 20
    again.cache._check()
