"""Saving a cache to a file and loading it back.

Round trips keep every prefix, its KV bit for bit, and the recency order; a file
that is damaged, truncated or saved from another model is refused with
``ValueError`` and leaves the cache as it was; an interrupted save leaves the old
file whole. At the model level, a cache saved in one process serves exact outputs
in another, and the model fingerprint tells models apart.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

import prefixcache
from prefixcache import PrefixCache, persist
from prefixcache.kv import LayerSpec
from prefixcache.persist import fileformat, namespaces

from .fake_kv import LAYERS, assert_kv_is, fake_kv
from .hooked_model import TOKEN_BYTES as LLAMA_TOKEN_BYTES
from .hooked_model import own_llama
from .tiny_models import VOCAB, config_for

TOKEN_BYTES = 72  # fake_kv's layers in float64
MODEL_A = "a" * 64  # stand-ins for model_fingerprint() of two models
MODEL_B = "b" * 64
ROOT = Path(__file__).resolve().parent.parent

SYSTEM = [1, 2, 3, 4, 5, 6]
PREFIXES: list[tuple[Hashable, list[int]]] = [
    (None, [*SYSTEM, 10, 11, 12]),
    (None, [*SYSTEM, 13, 14]),
    (None, [1, 2, 9]),
    (None, [40, 41, 42, 43]),
    ("tenant", [*SYSTEM, 10, 11, 12]),
    ("tenant", [*SYSTEM, 20]),
    ("tenant", [50, 51]),
]


# -- helpers --------------------------------------------------------------------------


def make_cache(tokens: int = 64, *, fingerprint: str | None = MODEL_A, layers: Any = LAYERS) -> PrefixCache:
    cache = PrefixCache(layers, TOKEN_BYTES * tokens, dtype=torch.float64)
    cache.fingerprint = fingerprint
    return cache


def touch(cache: PrefixCache, tokens: list[int], namespace: Hashable = None) -> None:
    cache.match(tokens, namespace=namespace).release()


def filled(tokens: int = 64, *, fingerprint: str | None = MODEL_A) -> PrefixCache:
    """PREFIXES inserted in order, then a few of them used again so that recency is not insertion order."""
    cache = make_cache(tokens, fingerprint=fingerprint)
    for namespace, prefix in PREFIXES:
        cache.insert(prefix, fake_kv(prefix), namespace=namespace)
    touch(cache, [40, 41, 42, 43])
    touch(cache, SYSTEM, "tenant")  # a prompt that ended at an inner node: newer than its children
    touch(cache, [*SYSTEM, 13, 14])
    cache._check()
    return cache


def cached_length(cache: PrefixCache, tokens: list[int], namespace: Hashable = None) -> int:
    with cache.match(tokens, namespace=namespace) as hit:
        return hit.length


def paths(cache: PrefixCache) -> set[tuple[Hashable, tuple[int, ...]]]:
    """Every node's whole path, with its namespace."""
    nodes = cache.export()
    full: list[tuple[int, ...]] = []
    for node in nodes:
        full.append((full[node.parent] if node.parent >= 0 else ()) + tuple(node.tokens))
    return {(node.namespace, path) for node, path in zip(nodes, full, strict=True)}


def eviction_order(cache: PrefixCache) -> list[tuple[Hashable, tuple[int, ...]]]:
    """Evict one leaf at a time until the cache is empty; the leaves in the order they went."""
    order = []
    before = paths(cache)
    while before:
        cache.evict(1)
        after = paths(cache)
        (gone,) = before - after
        order.append(gone)
        before = after
    return order


def snapshot(cache: PrefixCache) -> Any:
    """All a failed load must leave alone: the stats and every node, its KV and its tick."""
    cache._check()
    nodes = [(n.parent, n.namespace, n.tokens.tolist(), n.rows.tolist(), n.tick) for n in cache.export()]
    return cache.stats, nodes


def assert_refused(cache: PrefixCache, path: Path, match: str) -> None:
    before = snapshot(cache)
    with pytest.raises(ValueError, match=match):
        cache.load(path)
    assert snapshot(cache) == before


def target() -> PrefixCache:
    """A cache that already holds something, to load into."""
    cache = make_cache()
    cache.insert([60, 61, 62], fake_kv([60, 61, 62]))
    return cache


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "cache.safetensors"
    filled().save(path)
    return path


# -- round trips ----------------------------------------------------------------------


def test_round_trip_keeps_every_prefix_and_its_kv_bit_for_bit(saved: Path) -> None:
    original = filled()
    loaded = make_cache()
    assert loaded.load(saved) == original.stats.cached_tokens
    loaded._check()
    assert paths(loaded) == paths(original)
    assert loaded.stats.nodes == original.stats.nodes
    for namespace, prefix in PREFIXES:
        with loaded.match(prefix, namespace=namespace) as hit, original.match(prefix, namespace=namespace) as old:
            assert hit.length == len(prefix)
            got, want = loaded.gather(hit), original.gather(old)
            assert_kv_is(got, prefix)
            for (gk, gv), (wk, wv) in zip(got, want, strict=True):
                assert torch.equal(gk, wk) and torch.equal(gv, wv)
    loaded._check()


def test_recency_order_is_kept(saved: Path) -> None:
    original, loaded = filled(), make_cache()
    loaded.load(saved)
    expected = eviction_order(original)
    # The first prefix inserted, never used since, goes first.
    assert expected[0] == (None, (*SYSTEM, 10, 11, 12))
    # An inner node used after its children outlives what was used before it.
    assert expected.index(("tenant", tuple(SYSTEM))) > expected.index((None, (40, 41, 42, 43)))
    assert eviction_order(loaded) == expected


def test_a_smaller_budget_keeps_the_most_recent_prefixes(tmp_path: Path) -> None:
    cache = make_cache()
    a, b, c, d = [*SYSTEM, 10, 11, 12], [*SYSTEM, 20, 21, 22], [*SYSTEM, 30, 31, 32], [40, 41, 42, 43, 44]
    for prefix in (a, b, c, d):
        cache.insert(prefix, fake_kv(prefix))
    touch(cache, b)
    touch(cache, a)  # least to most recent: c, d, b, a
    path = tmp_path / "cache.safetensors"
    cache.save(path)
    small = make_cache(12)
    stored = small.load(path)
    small._check()
    assert small.stats.cached_tokens <= 12 and stored >= small.stats.cached_tokens
    assert cached_length(small, a) == len(a) and cached_length(small, b) == len(b)
    assert cached_length(small, c) == len(SYSTEM)
    with small.match(a) as hit:
        assert_kv_is(small.gather(hit), a)


def test_loading_into_a_running_cache_adds_to_it(saved: Path) -> None:
    cache = target()
    cache.insert(PREFIXES[0][1], fake_kv(PREFIXES[0][1]))
    held = cache.stats.cached_tokens
    stored = cache.load(saved)
    assert stored == filled().stats.cached_tokens - len(PREFIXES[0][1])  # what was cached is not stored twice
    assert cache.stats.cached_tokens == held + stored
    assert cached_length(cache, [60, 61, 62]) == 3
    for namespace, prefix in PREFIXES:
        assert cached_length(cache, prefix, namespace) == len(prefix)
    cache._check()


def test_an_empty_cache_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "empty.safetensors"
    make_cache().save(path)
    cache = target()
    before = snapshot(cache)
    assert cache.load(path) == 0
    assert snapshot(cache) == before


def test_save_replaces_an_old_file(tmp_path: Path) -> None:
    path = tmp_path / "cache.safetensors"
    make_cache().save(path)
    filled().save(path)
    loaded = make_cache()
    loaded.load(path)
    assert paths(loaded) == paths(filled())
    assert os.listdir(tmp_path) == [path.name]


NAMESPACES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3).map(tuple),
    max_leaves=6,
)


def same_value_and_types(a: object, b: object) -> bool:
    if isinstance(a, tuple):
        return type(b) is tuple and len(a) == len(b) and all(map(same_value_and_types, a, b))
    return type(a) is type(b) and a == b


@given(NAMESPACES)
def test_namespaces_round_trip_with_their_types(namespace: Hashable) -> None:
    encoded = json.loads(json.dumps(namespaces.encode_namespace(namespace, namespace)))
    assert same_value_and_types(namespaces.decode_namespace(encoded), namespace)


@pytest.mark.parametrize("namespace", [0, -7, True, "", ("tenant", 3, None, (False, "x")), ()])
def test_namespaces_round_trip_through_a_file(tmp_path: Path, namespace: Hashable) -> None:
    cache = make_cache()
    cache.insert([5, 6, 7], fake_kv([5, 6, 7]), namespace=namespace)
    path = tmp_path / "cache.safetensors"
    cache.save(path)
    loaded = make_cache()
    loaded.load(path)
    ((saved_namespace, _),) = paths(loaded)
    assert same_value_and_types(saved_namespace, namespace)
    assert cached_length(loaded, [5, 6, 7], namespace) == 3


@pytest.mark.parametrize("namespace", [1.5, b"tenant", frozenset({1}), ("ok", 2.0)])
def test_a_namespace_that_cannot_be_saved_is_refused_before_writing(tmp_path: Path, namespace: Hashable) -> None:
    path = tmp_path / "cache.safetensors"
    make_cache().save(path)
    old = path.read_bytes()
    cache = make_cache()
    cache.insert([5, 6], fake_kv([5, 6]), namespace=namespace)
    with pytest.raises(ValueError, match=r"namespace: .* cannot be saved"):
        cache.save(path)
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == [path.name]


# -- files that must not be loaded ----------------------------------------------------


def test_a_file_from_another_model_is_refused(saved: Path) -> None:
    assert_refused(make_cache(fingerprint=MODEL_B), saved, "saved from another model")


@pytest.mark.parametrize(("file_model", "cache_model"), [(MODEL_A, None), (None, MODEL_A)])
def test_a_fingerprint_on_one_side_only_is_refused(tmp_path: Path, file_model: Any, cache_model: Any) -> None:
    path = tmp_path / "cache.safetensors"
    filled(fingerprint=file_model).save(path)
    assert_refused(make_cache(fingerprint=cache_model), path, "names the model")


def test_no_fingerprint_on_either_side_loads(tmp_path: Path) -> None:
    path = tmp_path / "cache.safetensors"
    filled(fingerprint=None).save(path)
    assert make_cache(fingerprint=None).load(path) == filled().stats.cached_tokens


def test_other_layer_shapes_or_dtype_are_refused(saved: Path) -> None:
    other = (LayerSpec(1, 2, 1), LayerSpec(1, 3, 3))  # the same row width, other layers
    assert_refused(make_cache(layers=other), saved, "layers")
    assert_refused(make_cache(layers=LAYERS[:1]), saved, "layers")
    float32 = PrefixCache(LAYERS, TOKEN_BYTES * 64, dtype=torch.float32)
    float32.fingerprint = MODEL_A
    assert_refused(float32, saved, "float64 rows of 9")


def test_a_truncated_file_is_refused(saved: Path, tmp_path: Path) -> None:
    data = saved.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    cache = target()
    cut_path = tmp_path / "cut.safetensors"
    for cut in sorted({0, 1, 7, 8, 9, header_end // 2, header_end - 1, header_end, header_end + 1, len(data) - 1}):
        cut_path.write_bytes(data[:cut])
        assert_refused(cache, cut_path, "cannot be loaded")
    cut_path.write_bytes(data + b"\0")
    assert_refused(cache, cut_path, "cannot be loaded")


def test_a_flipped_byte_anywhere_is_refused(saved: Path, tmp_path: Path) -> None:
    data = saved.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    cache = target()
    before = snapshot(cache)
    bad = tmp_path / "bad.safetensors"
    expected = f"path: {str(bad)!r} cannot be loaded: "
    # Every byte of the header length and of the header (tensor table, manifest, its checksum);
    # the data is covered evenly by its checksums, so every fifth byte of it will do.
    flips = [(at, mask) for at in range(header_end) for mask in (0x01, 0x80)]
    flips += [(at, 0x01) for at in range(header_end, len(data), 5)]
    not_refused = []
    for at, mask in flips:
        flipped = bytearray(data)
        flipped[at] ^= mask
        bad.write_bytes(flipped)
        try:
            cache.load(bad)
        except ValueError as err:
            if not str(err).startswith(expected):
                not_refused.append((at, mask, str(err)))
        else:
            not_refused.append((at, mask, "loaded"))
    assert not_refused == []
    assert snapshot(cache) == before


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "0 bytes long"),
        (b"not a safetensors file at all", "header claims"),
        (b"\x04\0\0\0\0\0\0\0[1] ", "no 'prefixcache.manifest'"),
        (b"\x04\0\0\0\0\0\0\0\xff\xfe{}", "not valid JSON"),
    ],
)
def test_garbage_is_refused(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(content)
    assert_refused(target(), path, match)


def test_a_safetensors_file_of_something_else_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(path), metadata={"format": "pt"})
    assert_refused(target(), path, "not a prefixcache-kv file")


def forge(source: Path, out: Path, edit: Callable[[dict[str, Any], dict[str, torch.Tensor]], None]) -> Path:
    """A copy of ``source`` with its manifest or tensors changed and every checksum made to fit,
    so that only the content checks can catch it."""
    with safe_open(str(source), "pt") as f:
        manifest = json.loads(f.metadata()["prefixcache.manifest"])
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    edit(manifest, tensors)
    if "kv" in tensors and "tokens" in tensors:
        manifest["sha256"] = {
            "kv": fileformat.sha256_hex(tensors["kv"]),
            "tokens": fileformat.sha256_hex(tensors["tokens"]),
        }
    save_file(tensors, str(out), metadata=fileformat.manifest_metadata(manifest))
    return out


def set_field(name: str, value: Any) -> Callable[[dict[str, Any], dict[str, torch.Tensor]], None]:
    return lambda manifest, tensors: manifest.__setitem__(name, value)


def edit_node(i: int, field: int, value: int) -> Callable[[dict[str, Any], dict[str, torch.Tensor]], None]:
    return lambda manifest, tensors: manifest["nodes"][i].__setitem__(field, value)


def negative_token(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    tensors["tokens"][0] = -1


def move_to_other_namespace(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    child = next(i for i, node in enumerate(manifest["nodes"]) if node[0] >= 0)
    parent_namespace = manifest["nodes"][manifest["nodes"][child][0]][1]
    manifest["nodes"][child][1] = (parent_namespace + 1) % len(manifest["namespaces"])


def same_first_token(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    nodes, tokens = manifest["nodes"], tensors["tokens"]
    starts = [sum(node[2] for node in nodes[:i]) for i in range(len(nodes))]
    siblings = [i for i, node in enumerate(nodes) if node[0] == -1 and node[1] == nodes[0][1]]
    tokens[starts[siblings[1]]] = tokens[starts[siblings[0]]]


def extra_tensor(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    tensors["extra"] = torch.zeros(1)


def shorter_kv(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    tensors["kv"] = tensors["kv"][1:].clone()


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (set_field("version", 2), "version is 2; this prefixcache reads version 1"),
        (set_field("format", "something-else"), "format is 'something-else'"),
        (set_field("width", 10), "width 10"),
        (set_field("layers", [[1, 2, 1], [2, 1, 0]]), "'layers' must be"),
        (set_field("tokens", "many"), "'tokens' must be"),
        (set_field("node_fields", ["parent"]), "'node_fields'"),
        (set_field("nodes", [[0, 0, 1]]), "'nodes' must be"),
        (set_field("namespaces", [["float", 1.5]]), r"namespaces\[0\]"),
        (set_field("namespaces", [["none"], ["none"], ["none"]]), "listed twice"),
        (edit_node(0, 0, 0), "node 0: parent 0"),
        (edit_node(0, 1, 7), "node 0: namespace index 7"),
        (edit_node(1, 2, 0), "node 1: length 0"),
        (edit_node(1, 3, -1), "node 1: tick -1"),
        (negative_token, "token ids must be >= 0"),
        (move_to_other_namespace, "its parent is in another"),
        (same_first_token, "a sibling's edge also starts with token"),
        (extra_tensor, "expected the tensors"),
        (shorter_kv, "'kv' tensor has shape"),
    ],
)
def test_a_manifest_that_does_not_describe_a_valid_tree_is_refused(
    saved: Path, tmp_path: Path, edit: Callable[[dict[str, Any], dict[str, torch.Tensor]], None], match: str
) -> None:
    assert_refused(target(), forge(saved, tmp_path / "forged.safetensors", edit), match)


def test_a_checksum_that_does_not_match_is_refused(saved: Path, tmp_path: Path) -> None:
    with safe_open(str(saved), "pt") as f:
        metadata = f.metadata()
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    tensors["kv"][0, 0] += 1  # the data changed, its checksum did not
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=metadata)
    assert_refused(target(), tmp_path / "bad.safetensors", "'kv' tensor does not match its checksum")


def test_bad_paths_and_arguments(tmp_path: Path) -> None:
    cache = make_cache()
    for bad in (5, None, b"cache.safetensors"):
        with pytest.raises(TypeError, match=r"path: expected a str or os.PathLike"):
            cache.save(bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"path: expected a str or os.PathLike"):
            cache.load(bad)  # type: ignore[arg-type]
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(FileNotFoundError, match=r"missing.safetensors"):
        cache.load(missing)
    with pytest.raises(TypeError, match="cache: expected a PrefixCache"):
        persist.save("cache", missing)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cache: expected a PrefixCache"):
        persist.load(None, missing)  # type: ignore[arg-type]
    cache.fingerprint = 12345  # type: ignore[assignment]
    with pytest.raises(TypeError, match=r"cache.fingerprint: expected a str"):
        cache.save(missing)
    assert not missing.exists()


# -- an interrupted save ----------------------------------------------------------------


class HalfWrite:
    """A file that writes half of what it is given, then fails as a full disk does."""

    def __init__(self, f: Any) -> None:
        self.f = f

    def __enter__(self) -> HalfWrite:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()

    def write(self, data: bytes) -> None:
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")


def fail(error: BaseException) -> Callable[..., None]:
    def call(*args: Any, **kwargs: Any) -> None:
        raise error

    return call


@pytest.mark.parametrize(
    "breaks",
    ["the write", "fsync", "fsync, with KeyboardInterrupt", "the rename"],
)
def test_an_interrupted_save_leaves_the_old_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, breaks: str
) -> None:
    path = tmp_path / "cache.safetensors"
    old = make_cache()
    old.insert([7, 8, 9], fake_kv([7, 8, 9]))
    old.save(path)
    new = filled()
    real_fdopen = os.fdopen
    error: type[BaseException] = OSError
    if breaks == "the write":
        monkeypatch.setattr(os, "fdopen", lambda *args, **kwargs: HalfWrite(real_fdopen(*args, **kwargs)))
    elif breaks == "fsync":
        monkeypatch.setattr(os, "fsync", fail(OSError(errno.EIO, "Input/output error")))
    elif breaks == "fsync, with KeyboardInterrupt":
        monkeypatch.setattr(os, "fsync", fail(KeyboardInterrupt()))
        error = KeyboardInterrupt
    else:
        monkeypatch.setattr(os, "replace", fail(OSError(errno.EXDEV, "Invalid cross-device link")))
    with pytest.raises(error):
        new.save(path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == [path.name], "a temporary file was left behind"
    loaded = make_cache()
    assert loaded.load(path) == 3
    assert paths(loaded) == paths(old)
    new.save(path)  # and the next save goes through
    loaded = make_cache()
    loaded.load(path)
    assert paths(loaded) == paths(new)


# -- the model fingerprint ------------------------------------------------------------


def test_fingerprint_is_equal_for_equal_models_and_changes_with_them() -> None:
    model = own_llama(0)
    base = persist.model_fingerprint(model)
    assert len(base) == 64 and int(base, 16) >= 0
    assert persist.model_fingerprint(own_llama(0)) == base
    assert persist.model_fingerprint(own_llama(1)) != base

    weight = model.model.layers[1].mlp.down_proj.weight
    with torch.no_grad():
        weight[3, 5] += 1e-9
        assert persist.model_fingerprint(model) != base
        weight[3, 5] -= 1e-9
    assert persist.model_fingerprint(model) == base

    assert persist.model_fingerprint(own_llama(0).to(torch.float32)) != base
    exact = Big(10)  # small integers: the same values in either dtype, only the dtype differs
    assert persist.model_fingerprint(exact.to(torch.float64)) != persist.model_fingerprint(Big(10))

    changed = own_llama(0)
    changed.config.rms_norm_eps = 1e-5
    assert persist.model_fingerprint(changed) != base
    other_config = type(model)(config_for("llama", max_position_embeddings=1024)).to(torch.float64).eval()
    other_config.load_state_dict(model.state_dict())
    assert persist.model_fingerprint(other_config) != base

    moved = own_llama(0)
    moved.config._name_or_path = "/somewhere/else"
    moved.config.use_cache = False
    assert persist.model_fingerprint(moved) == base  # where it came from is not what it computes


class Big(torch.nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.arange(n, dtype=torch.float32))


def test_fingerprint_samples_large_tensors_at_documented_indices() -> None:
    n, samples = 100_003, persist.SAMPLES_PER_TENSOR
    model = Big(n)
    base = persist.model_fingerprint(model)
    sampled = [0, 1 * (n - 1) // (samples - 1), 2000 * (n - 1) // (samples - 1), n - 1]
    for k in sampled:
        with torch.no_grad():
            model.weight[k] += 0.5
            assert persist.model_fingerprint(model) != base, k
            model.weight[k] -= 0.5
    with torch.no_grad():  # an element between two samples is not read, as documented
        model.weight[sampled[1] + 1] += 0.5
    assert persist.model_fingerprint(model) == base


def test_fingerprint_refuses_what_it_cannot_read() -> None:
    with pytest.raises(TypeError, match=r"model: expected a torch.nn.Module"):
        persist.model_fingerprint("llama")
    with torch.device("meta"):
        meta = Big(10)
    with pytest.raises(ValueError, match="weight is on the meta device"):
        persist.model_fingerprint(meta)


# -- a real model, saved in this process and loaded in another ----------------------------

SHARED = [(7 * i + 3) % (VOCAB - 3) + 3 for i in range(14)]
PROMPTS = [SHARED + [10 + i, 20 + i, 30 + i] for i in range(3)]
FRESH_PROMPT = [*SHARED, 60, 61, 62, 63]  # not seen before: hits SHARED only

LOADER = """
import json, sys
import torch
import prefixcache
from prefixcache import persist
from tests.hooked_model import TOKEN_BYTES, greedy, logits, own_llama

model = own_llama(0)
cached = prefixcache.wrap(model, TOKEN_BYTES * 256, check=False)
cached.cache.fingerprint = persist.model_fingerprint(model)
result = {"stored": cached.cache.load(sys.argv[1]), "hits": [], "same_output": [], "logit_diff": 0.0}
for prompt in json.loads(sys.argv[2]) + [json.loads(sys.argv[3])]:
    ids = torch.tensor([prompt])
    before = cached.cache.stats.hit_tokens
    res = cached.prefill(ids)
    result["hits"].append(cached.cache.stats.hit_tokens - before)
    diff = (res.logits - logits(model, ids)[:, res.cached_length :]).abs().max().item()
    result["logit_diff"] = max(result["logit_diff"], diff)
    out = cached.generate(ids, max_new_tokens=4, do_sample=False)
    result["same_output"].append(torch.equal(out, greedy(model, ids, 4)))
print(json.dumps(result))
"""


def test_a_saved_model_cache_serves_exact_outputs_in_a_fresh_process(tmp_path: Path) -> None:
    model = own_llama(0)
    cached = prefixcache.wrap(model, LLAMA_TOKEN_BYTES * 256, check=False)
    cached.cache.fingerprint = persist.model_fingerprint(model)
    for prompt in PROMPTS:
        cached.generate(torch.tensor([prompt]), max_new_tokens=3, do_sample=False)
    path = tmp_path / "llama.safetensors"
    cached.cache.save(path)

    other = prefixcache.wrap(own_llama(1), LLAMA_TOKEN_BYTES * 256, check=False)
    other.cache.fingerprint = persist.model_fingerprint(other.model)
    assert_refused(other.cache, path, "saved from another model")

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", LOADER, str(path), json.dumps(PROMPTS), json.dumps(FRESH_PROMPT)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["stored"] == cached.cache.stats.cached_tokens
    # Each saved prompt was stored with its output, so all of it but the last token is reused.
    assert result["hits"] == [len(p) - 1 for p in PROMPTS] + [len(SHARED)]
    assert all(result["same_output"])
    assert result["logit_diff"] < 1e-10
