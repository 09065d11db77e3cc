"""Saving a PrefixCache to one safetensors file, loading it back, and the model fingerprint.

A saved cache is one safetensors file (format ``prefixcache-kv``, version 1):

    8 bytes   header length N, little-endian (as in every safetensors file)
    N bytes   JSON header: each tensor's dtype, shape and offsets, and ``__metadata__``:
                "prefixcache.manifest"          the manifest below, as JSON text
                "prefixcache.manifest_sha256"   the sha256 of that text
    data      "kv"      [T, width] in the pool's dtype: row t holds token t's K and V of every layer
              "tokens"  [T] int32: the token ids

The manifest describes the tree. Node ``i``'s edge is a run of consecutive rows:

    # [start[i], start[i] + length[i])   node i's tokens and KV rows, start[i] = sum of earlier lengths

    {"format": "prefixcache-kv", "version": 1,
     "fingerprint": "<hex>" or null,     model_fingerprint() of the model the KV came from
     "dtype": "float32", "width": 9,      the pool's dtype and row width
     "layers": [[kv_heads, key_dim, value_dim], ...],
     "tokens": T,
     "namespaces": [["none"], ["str", "tenant"], ...],   type-tagged, see below
     "node_fields": ["parent", "namespace", "length", "tick"],
     "nodes": [[-1, 0, 5, 3], ...],       parents first; parent -1: under the namespace's root;
                                          namespace: an index into "namespaces"; tick: the rank
                                          of the node's last access (0 = least recent)
     "sha256": {"kv": "<hex>", "tokens": "<hex>"}}

Token ids live in a tensor rather than in the manifest: safetensors caps its header
at 100 MB, and a large pool can hold tens of millions of tokens.

Namespaces may be ``None``, ``str``, ``int``, ``bool`` or tuples of these (nested
too); each is written with a type tag (``["none"]``, ``["str", s]``, ``["int", n]``,
``["bool", b]``, ``["tuple", [...]]``) so that it loads back as the same value.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from array import array
from collections.abc import Callable, Hashable, Iterable
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load as _load_safetensors
from safetensors.torch import save as _serialize

from .cache import PrefixCache
from .pool import LayerSpec

__all__ = ["FORMAT", "SAMPLES_PER_TENSOR", "VERSION", "load", "model_fingerprint", "save"]

FORMAT = "prefixcache-kv"
"""The ``format`` a saved file's manifest names."""
VERSION = 1
"""The manifest version this module writes and reads."""
SAMPLES_PER_TENSOR = 4096
"""Elements of each parameter and buffer that :func:`model_fingerprint` reads."""

_MANIFEST_KEY = "prefixcache.manifest"
_SHA_KEY = "prefixcache.manifest_sha256"
_NODE_FIELDS = ["parent", "namespace", "length", "tick"]
# Config entries that say where or how a model was loaded, or how it answers a call,
# not which function it computes. The dtype is hashed from the parameters instead.
_VOLATILE_CONFIG = frozenset(
    {
        "_name_or_path",
        "transformers_version",
        "_commit_hash",
        "torch_dtype",
        "dtype",
        "_attn_implementation",
        "_attn_implementation_autoset",
        "_attn_implementation_internal",
        "use_cache",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
    }
)


# -- the model's fingerprint ------------------------------------------------------------


def model_fingerprint(model: Any) -> str:
    """A sha256 hex digest that identifies the function ``model`` computes, to tie saved KV to it.

    It hashes the model's class name; its config (``model.config.to_dict()``, or a
    dict ``model.config``) as sorted JSON, without the entries that only say where or
    how it was loaded or how it answers a call (``_name_or_path``,
    ``transformers_version``, ``_commit_hash``, ``dtype``/``torch_dtype``, the
    attention implementation, ``use_cache``, ``output_attentions``,
    ``output_hidden_states``, ``return_dict``); the set of its parameters' dtypes;
    and, for every parameter and buffer (sorted by name), its name, shape, dtype and
    a sample of its values: all of them when it has at most
    :data:`SAMPLES_PER_TENSOR` elements, else that many at evenly spaced flat indices
    ``k * (numel - 1) // (SAMPLES_PER_TENSOR - 1)`` (the first and the last
    included), read as float64 on the CPU. So it is fast for large models (it reads a
    few thousand elements per tensor, wherever they live) and changes with the
    class, the config, the dtype, any shape, and any sampled element. A change only
    to elements between the samples of a large tensor is not seen.

    The model is duck-typed (any ``torch.nn.Module``, a ``config`` is optional); the
    same weights on another device give the same fingerprint. Raises ``ValueError``
    for a tensor on the meta device (its values are unknown) and ``TypeError`` for
    something that is not a ``torch.nn.Module``.

    >>> a, b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    >>> model_fingerprint(a) == model_fingerprint(b)  # other random weights
    False
    >>> _ = b.load_state_dict(a.state_dict())
    >>> model_fingerprint(a) == model_fingerprint(b), len(model_fingerprint(a))
    (True, 64)
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    digest = hashlib.sha256()

    def part(label: str, value: bytes) -> None:
        # Length-prefixed, so that no two different sequences of parts hash alike.
        for piece in (label.encode(), value):
            digest.update(len(piece).to_bytes(8, "little"))
            digest.update(piece)

    part("format", b"prefixcache-fingerprint/1")
    part("class", type(model).__name__.encode())
    part("config", _config_json(getattr(model, "config", None)).encode())
    tensors: dict[str, torch.Tensor] = dict(model.named_parameters())
    dtypes = sorted({str(t.dtype) for t in tensors.values()})
    tensors.update(model.named_buffers())
    part("dtypes", ",".join(dtypes).encode())
    for name in sorted(tensors):
        tensor = tensors[name]
        part("tensor", f"{name}:{list(tensor.shape)}:{tensor.dtype}".encode())
        part("sample", _sample(name, tensor))
    return digest.hexdigest()


def _config_json(config: object) -> str:
    to_dict = getattr(config, "to_dict", None)
    if callable(to_dict):
        config = to_dict()
    if not isinstance(config, dict):
        return "null"
    return json.dumps(_stable(config), sort_keys=True, separators=(",", ":"))


def _stable(value: object) -> object:
    """``value`` as plain JSON data, without volatile config entries, at any depth."""
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict) and not isinstance(value, dict):
        value = to_dict()  # a nested config
    if isinstance(value, dict):
        return {str(k): _stable(v) for k, v in value.items() if k not in _VOLATILE_CONFIG}
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(json.dumps(_stable(v), sort_keys=True) for v in value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    text = str(value)
    # An object's default str names its address, which differs between processes.
    return type(value).__name__ if " at 0x" in text else f"{type(value).__name__}:{text}"


@torch.no_grad()
def _sample(name: str, tensor: torch.Tensor) -> bytes:
    if tensor.is_meta:
        raise ValueError(
            f"model: {name} is on the meta device (offloaded or not loaded), so its values "
            f"cannot be fingerprinted; load the weights first"
        )
    tensor = tensor.detach()
    n = tensor.numel()
    if n > SAMPLES_PER_TENSOR:
        at = torch.arange(SAMPLES_PER_TENSOR, dtype=torch.int64) * (n - 1) // (SAMPLES_PER_TENSOR - 1)
        # Indexing by position reads only the samples, even from a non-contiguous tensor.
        flat = tensor[torch.unravel_index(at.to(tensor.device), tensor.shape)]
    else:
        flat = tensor.reshape(-1)
    if flat.is_complex():
        flat = torch.view_as_real(flat)
    try:
        values = flat.to("cpu", torch.float64)
    except (RuntimeError, TypeError):  # a dtype with no float conversion: hash its bytes
        values = flat.cpu().contiguous().view(torch.uint8)
    return bytes(values.contiguous().numpy().tobytes())


# -- saving -------------------------------------------------------------------------------


def save(cache: PrefixCache, path: str | os.PathLike[str]) -> None:
    """Write every prefix of ``cache`` and its KV to ``path``, one safetensors file (see the module doc).

    The tree is copied under the cache's lock; the file is written after, to a
    temporary file in the same directory that is flushed, fsynced and then renamed
    onto ``path``, so ``path`` holds either its old content or the whole new file,
    never a part (if anything raises, the temporary file is removed). O(cached
    tokens) time, and about twice the cached KV in host memory while it runs.

    Raises ``TypeError`` for a ``cache`` that is not a PrefixCache (or whose
    ``fingerprint`` is neither a str nor None) or a ``path`` that is not a str or
    os.PathLike, ``ValueError`` for a namespace that cannot be saved (before anything
    is written), and ``OSError`` when writing fails.
    """
    target = _check_path(path)
    _check_cache(cache)
    pool = cache.pool
    with cache._lock:
        nodes = cache._export_nodes()
        fingerprint = cache.fingerprint
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise TypeError(
            f"cache.fingerprint: expected a str (see model_fingerprint) or None, got {type(fingerprint).__name__}"
        )
    namespaces: dict[Hashable, int] = {}
    for node in nodes:
        if node.namespace not in namespaces:
            namespaces[node.namespace] = len(namespaces)
    encoded = [_encode_namespace(ns, ns) for ns in namespaces]
    rank = {tick: r for r, tick in enumerate(sorted({node.tick for node in nodes}))}
    tokens = array("i")
    for node in nodes:
        tokens += node.tokens
    kv = torch.cat([node.rows for node in nodes]) if nodes else torch.empty(0, pool.width, dtype=pool.dtype)
    kv = kv.to("cpu", pool.dtype).contiguous()
    token_tensor = torch.frombuffer(tokens, dtype=torch.int32).clone() if tokens else torch.empty(0, dtype=torch.int32)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "fingerprint": fingerprint,
        "dtype": _dtype_name(pool.dtype),
        "width": pool.width,
        "layers": [list(spec) for spec in pool.layers],
        "tokens": len(tokens),
        "namespaces": encoded,
        "node_fields": _NODE_FIELDS,
        "nodes": [[n.parent, namespaces[n.namespace], len(n.tokens), rank[n.tick]] for n in nodes],
        "sha256": {"kv": _sha256(kv), "tokens": _sha256(token_tensor)},
    }
    del nodes
    data = _serialize({"kv": kv, "tokens": token_tensor}, metadata=_metadata(manifest))
    del kv
    _write_atomically(target, data)


def _metadata(manifest: dict[str, Any]) -> dict[str, str]:
    text = json.dumps(manifest, separators=(",", ":"))
    return {_MANIFEST_KEY: text, _SHA_KEY: hashlib.sha256(text.encode()).hexdigest()}


def _write_atomically(target: str, data: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(target))
    tmp = os.path.join(directory, f".{os.path.basename(target)}.{uuid.uuid4().hex}.tmp")
    # Mode 0o666 less the umask, as for any new file; O_EXCL: never someone else's file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


# -- loading ------------------------------------------------------------------------------


class _Node(NamedTuple):
    parent: int
    namespace: int
    length: int
    tick: int


class _Saved(NamedTuple):
    """A saved file's content, checked for integrity (not yet against a cache)."""

    fingerprint: str | None
    dtype: str
    width: int
    layers: tuple[LayerSpec, ...]
    namespaces: list[Hashable]
    nodes: list[_Node]
    kv: torch.Tensor
    tokens: array


def load(cache: PrefixCache, path: str | os.PathLike[str]) -> int:
    """Add the prefixes saved in ``path`` to ``cache``; return the tokens stored.

    The whole file is read and checked before the cache changes: that it is a
    complete safetensors file with a manifest of a known format and version, that
    every checksum matches (a changed byte anywhere is found), that the tree is well
    formed, and that it fits this cache: the same model fingerprint (a file saved
    from another model is never loaded, nor one with a fingerprint into a cache
    without one or the other way round), the same layer shapes, dtype and row width.

    Prefixes are then stored least recently used first, each access replayed in its
    order, so the recency order of the saved cache is kept, and when the budget is
    smaller the most recently used prefixes are the ones kept. Prefixes already
    cached are not stored twice; loaded prefixes count as more recent than those the
    cache held before. The import holds the cache's lock throughout.

    Raises ``TypeError`` for a ``cache`` that is not a PrefixCache or a ``path`` that
    is not a str or os.PathLike, ``FileNotFoundError`` (or another ``OSError``) when
    the file cannot be read, and ``ValueError``, naming the path and what is wrong,
    for anything about its content; in every case the cache is left as it was.
    """
    target = _check_path(path)
    _check_cache(cache)
    with open(target, "rb") as f:
        data = f.read()
    saved = _parse(target, data)
    del data
    with cache._lock:
        _check_fits(target, saved, cache)
        return _import(cache, saved)


def _bad(path: str, what: str) -> ValueError:
    return ValueError(f"path: {path!r} cannot be loaded: {what}")


def _parse(path: str, data: bytes) -> _Saved:
    if len(data) < 8:
        raise _bad(path, f"it is {len(data)} bytes long, too short to be a safetensors file")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise _bad(
            path,
            f"its header claims {size} bytes but only {len(data) - 8} follow (truncated, or not safetensors)",
        )
    header = _json(path, data[8 : 8 + size], "its safetensors header")
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    text = meta.get(_MANIFEST_KEY) if isinstance(meta, dict) else None
    if not isinstance(text, str):
        raise _bad(path, f"it is not a {FORMAT} file (no {_MANIFEST_KEY!r} in the safetensors metadata)")
    assert isinstance(meta, dict)
    if meta.get(_SHA_KEY) != hashlib.sha256(text.encode()).hexdigest():
        raise _bad(path, "its manifest does not match its checksum (the file is damaged)")
    manifest = _json(path, text.encode(), "its manifest")
    if not isinstance(manifest, dict):
        raise _bad(path, f"its manifest must be a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise _bad(path, f"its format is {manifest.get('format')!r}, expected {FORMAT!r}")
    if manifest.get("version") != VERSION:
        raise _bad(path, f"its format version is {manifest.get('version')!r}; this prefixcache reads version {VERSION}")
    try:
        tensors = _load_safetensors(data)
    except (SafetensorError, ValueError, TypeError, RuntimeError, OverflowError) as err:
        raise _bad(path, f"safetensors cannot read it ({err})") from None
    if set(tensors) != {"kv", "tokens"}:
        raise _bad(path, f"expected the tensors ['kv', 'tokens'], found {sorted(tensors)}")
    return _check_manifest(path, manifest, tensors["kv"], tensors["tokens"])


def _json(path: str, raw: bytes, what: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise _bad(path, f"{what} is not valid JSON ({err})") from None


def _check_manifest(path: str, m: dict[str, Any], kv: torch.Tensor, token_tensor: torch.Tensor) -> _Saved:
    def field(name: str, ok: Callable[[Any], bool], expected: str) -> Any:
        value = m.get(name)
        if not ok(value):
            raise _bad(path, f"manifest field {name!r} must be {expected}, got {value!r}")
        return value

    fingerprint = field("fingerprint", lambda v: v is None or isinstance(v, str), "a str or null")
    dtype = field("dtype", lambda v: isinstance(v, str), "a dtype name")
    width = field("width", lambda v: _is_int(v) and v >= 1, "an int >= 1")
    layers = field(
        "layers",
        lambda v: isinstance(v, list) and bool(v) and all(_is_int_list(s, 3) and min(s) >= 1 for s in v),
        "a non-empty list of [kv_heads, key_dim, value_dim] of positive ints",
    )
    n_tokens = field("tokens", lambda v: _is_int(v) and v >= 0, "an int >= 0")
    raw_namespaces = field("namespaces", lambda v: isinstance(v, list), "a list")
    field("node_fields", lambda v: v == _NODE_FIELDS, str(_NODE_FIELDS))
    raw_nodes = field(
        "nodes", lambda v: isinstance(v, list) and all(_is_int_list(n, 4) for n in v), "a list of 4 ints each"
    )
    sums = field(
        "sha256",
        lambda v: isinstance(v, dict) and all(isinstance(v.get(k), str) for k in ("kv", "tokens")),
        'an object {"kv": <hex>, "tokens": <hex>}',
    )
    specs = tuple(LayerSpec(*s) for s in layers)
    if sum(spec.width for spec in specs) != width:
        raise _bad(path, f"its layers {layers} make rows of {sum(s.width for s in specs)} elements, not width {width}")
    if _dtype_name(kv.dtype) != dtype:
        raise _bad(path, f"its 'kv' tensor is {_dtype_name(kv.dtype)}, but the manifest says {dtype}")
    if list(kv.shape) != [n_tokens, width]:
        raise _bad(path, f"its 'kv' tensor has shape {list(kv.shape)}, expected [{n_tokens}, {width}]")
    if token_tensor.dtype != torch.int32 or list(token_tensor.shape) != [n_tokens]:
        raise _bad(
            path,
            f"its 'tokens' tensor is {list(token_tensor.shape)} {_dtype_name(token_tensor.dtype)}, "
            f"expected [{n_tokens}] int32",
        )
    for name, tensor in (("kv", kv), ("tokens", token_tensor)):
        if _sha256(tensor) != sums[name]:
            raise _bad(path, f"its {name!r} tensor does not match its checksum (the file is damaged)")
    tokens = array("i", token_tensor.numpy().tobytes())
    if tokens and min(tokens) < 0:
        raise _bad(path, f"token ids must be >= 0, found {min(tokens)}")
    namespaces = [_decode_namespace(path, raw, f"namespaces[{i}]") for i, raw in enumerate(raw_namespaces)]
    if len(set(namespaces)) != len(namespaces):
        raise _bad(path, f"a namespace is listed twice in {namespaces!r}")
    nodes = [_Node(*raw) for raw in raw_nodes]
    _check_tree(path, nodes, len(namespaces), tokens)
    return _Saved(fingerprint, dtype, width, specs, namespaces, nodes, kv, tokens)


def _check_tree(path: str, nodes: list[_Node], n_namespaces: int, tokens: array) -> None:
    """Parents before children, in one namespace, lengths adding up, no two siblings on one first token."""
    start = 0
    first_tokens: set[tuple[int, int, int]] = set()
    for i, node in enumerate(nodes):
        if not -1 <= node.parent < i:
            raise _bad(path, f"node {i}: parent {node.parent} must be -1 or an earlier node's index")
        if not 0 <= node.namespace < n_namespaces:
            raise _bad(path, f"node {i}: namespace index {node.namespace} is not in [0, {n_namespaces})")
        if node.parent >= 0 and nodes[node.parent].namespace != node.namespace:
            raise _bad(path, f"node {i}: in namespace {node.namespace}, but its parent is in another")
        if node.length < 1 or start + node.length > len(tokens):
            raise _bad(path, f"node {i}: length {node.length} must be >= 1 and within the {len(tokens)} tokens")
        if node.tick < 0:
            raise _bad(path, f"node {i}: tick {node.tick} must be >= 0")
        key = (node.parent, node.namespace, tokens[start])
        if key in first_tokens:
            raise _bad(path, f"node {i}: a sibling's edge also starts with token {tokens[start]}")
        first_tokens.add(key)
        start += node.length
    if start != len(tokens):
        raise _bad(path, f"its nodes hold {start} tokens, but {len(tokens)} are stored")


def _check_fits(path: str, saved: _Saved, cache: PrefixCache) -> None:
    ours = cache.fingerprint
    if saved.fingerprint != ours:
        if saved.fingerprint is None or ours is None:
            has, lacks = ("the file", "this cache") if ours is None else ("this cache", "the file")
            raise _bad(
                path,
                f"{has} names the model its KV belongs to but {lacks} does not "
                f"(file: {saved.fingerprint!r}, cache: {ours!r}), so they cannot be matched",
            )
        raise _bad(
            path,
            f"it was saved from another model (fingerprint {saved.fingerprint[:16]}..., this cache's model "
            f"has {ours[:16]}...); its KV would give wrong outputs here",
        )
    pool = cache.pool
    if saved.layers != pool.layers:
        raise _bad(path, f"its KV has layers {list(saved.layers)}, but this cache's pool has {list(pool.layers)}")
    if saved.dtype != _dtype_name(pool.dtype) or saved.width != pool.width:
        raise _bad(
            path,
            f"its KV is {saved.dtype} rows of {saved.width}, but this cache's pool holds "
            f"{_dtype_name(pool.dtype)} rows of {pool.width}",
        )


def _import(cache: PrefixCache, saved: _Saved) -> int:
    nodes = saved.nodes
    starts = array("q")
    latest_child = [-1] * len(nodes)
    start = 0
    for node in nodes:
        starts.append(start)
        start += node.length
        if node.parent >= 0:
            latest_child[node.parent] = max(latest_child[node.parent], node.tick)
    # Replay the accesses: every leaf, and every inner node touched after all its children
    # (a prompt that ended there), oldest first. Each replay touches the node's whole path,
    # so afterwards every node ranks among the others as it did when saved.
    replays = sorted((node.tick, i) for i, node in enumerate(nodes) if node.tick > latest_child[i])
    stored = 0
    for _, i in replays:
        chain = list(_ancestry(nodes, i))
        path_tokens = array("i")
        for j in chain:
            path_tokens += saved.tokens[starts[j] : starts[j] + nodes[j].length]
        rows = torch.cat([saved.kv[starts[j] : starts[j] + nodes[j].length] for j in chain])
        stored += cache._import_path(path_tokens, rows, saved.namespaces[nodes[i].namespace])
    return stored


def _ancestry(nodes: list[_Node], i: int) -> Iterable[int]:
    """``i`` and its ancestors, root side first."""
    chain = []
    while i >= 0:
        chain.append(i)
        i = nodes[i].parent
    return reversed(chain)


# -- helpers ------------------------------------------------------------------------------


def _check_path(path: object) -> str:
    if isinstance(path, (str, os.PathLike)):
        name = os.fspath(path)
        if isinstance(name, str):
            return name
    raise TypeError(f"path: expected a str or os.PathLike file name, got {path!r} of type {type(path).__name__}")


def _check_cache(cache: object) -> None:
    if not isinstance(cache, PrefixCache):
        raise TypeError(f"cache: expected a PrefixCache, got {type(cache).__name__}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_int_list(value: object, n: int) -> bool:
    return isinstance(value, list) and len(value) == n and all(map(_is_int, value))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _sha256(tensor: torch.Tensor) -> str:
    raw = tensor.detach().cpu().contiguous().view(torch.uint8).numpy()
    return hashlib.sha256(raw.data).hexdigest()


def _encode_namespace(namespace: object, whole: object) -> list[Any]:
    """``namespace`` as type-tagged JSON data; ``whole`` is the namespace named in errors."""
    if namespace is None:
        return ["none"]
    if type(namespace) is bool:
        return ["bool", namespace]
    # A subclass (a namedtuple, some enums) is saved as its plain value only when that
    # value is the same namespace: equal to it and hashing alike.
    if isinstance(namespace, int) and not isinstance(namespace, bool) and _plain(namespace, int):
        return ["int", int.__int__(namespace)]
    if isinstance(namespace, str) and _plain(namespace, str):
        return ["str", str.__str__(namespace)]
    if isinstance(namespace, tuple) and _plain(namespace, tuple):
        return ["tuple", [_encode_namespace(item, whole) for item in namespace]]
    raise ValueError(
        f"namespace: {whole!r} cannot be saved: a namespace to save must be None, a str, an int, "
        f"a bool or a tuple of these, but it holds {namespace!r} of type {type(namespace).__name__}"
    )


def _plain(value: object, base: type) -> bool:
    cls = type(value)
    return cls.__eq__ is base.__eq__ and cls.__hash__ is base.__hash__


def _decode_namespace(path: str, raw: object, where: str) -> Hashable:
    try:
        return _decode(raw)
    except (ValueError, TypeError, RecursionError):
        raise _bad(
            path,
            f"{where} is {raw!r}, not a tagged namespace "
            f'(["none"], ["str", s], ["int", n], ["bool", b] or ["tuple", [...]])',
        ) from None


def _decode(raw: object) -> Hashable:
    if not isinstance(raw, list) or not raw:
        raise ValueError(raw)
    tag, *rest = raw
    if tag == "none" and not rest:
        return None
    if len(rest) == 1:
        (value,) = rest
        if tag == "bool" and isinstance(value, bool):
            return value
        if tag == "int" and _is_int(value):
            return int(value)
        if tag == "str" and isinstance(value, str):
            return value
        if tag == "tuple" and isinstance(value, list):
            return tuple(_decode(item) for item in value)
    raise ValueError(raw)
