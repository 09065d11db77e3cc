"""The file a saved cache is: one safetensors file (format ``prefixcache-kv``, version 1).

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

import hashlib
import json
from array import array
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple, Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load as _load_safetensors
from safetensors.torch import save as _serialize

from ..kv.layout import LayerSpec
from ..tree import namespace_key
from .namespaces import decode_namespace, encode_namespace

__all__ = ["FORMAT", "VERSION", "SavedFile", "SavedNodeLike", "encode", "parse"]

FORMAT = "prefixcache-kv"
"""The ``format`` a saved file's manifest names."""
VERSION = 1
"""The manifest version this module writes and reads."""
_MANIFEST_KEY = "prefixcache.manifest"
_SHA_KEY = "prefixcache.manifest_sha256"
_NODE_FIELDS = ["parent", "namespace", "length", "tick"]


class SavedNodeLike(Protocol):
    """One node as :meth:`PrefixCache.export` gives it."""

    @property
    def parent(self) -> int: ...
    @property
    def namespace(self) -> Hashable: ...
    @property
    def tokens(self) -> array: ...
    @property
    def rows(self) -> torch.Tensor: ...
    @property
    def tick(self) -> int: ...


class SavedFileNode(NamedTuple):
    """One node of a saved file's tree."""

    parent: int
    namespace: int
    length: int
    tick: int


class SavedFile(NamedTuple):
    """A saved file's content, checked for integrity (not yet against a cache)."""

    fingerprint: str | None
    dtype: str
    width: int
    layers: tuple[LayerSpec, ...]
    namespaces: list[Hashable]
    nodes: list[SavedFileNode]
    kv: torch.Tensor
    tokens: array


# -- writing ------------------------------------------------------------------------------


def encode(
    nodes: Sequence[SavedNodeLike],
    *,
    fingerprint: str | None,
    layers: Sequence[LayerSpec],
    dtype: torch.dtype,
    width: int,
) -> bytes:
    """The bytes of the file holding ``nodes`` (parents before children, as
    :meth:`PrefixCache.export` gives them).

    Raises ``ValueError`` for a namespace that cannot be saved and ``TypeError`` for a
    fingerprint that is neither a str nor None.
    """
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise TypeError(
            f"cache.fingerprint: expected a str (see model_fingerprint) or None, got {type(fingerprint).__name__}"
        )
    index: dict[Hashable, int] = {}  # by namespace_key: True and 1 are two namespaces
    listed: list[Hashable] = []
    for node in nodes:
        if namespace_key(node.namespace) not in index:
            index[namespace_key(node.namespace)] = len(listed)
            listed.append(node.namespace)
    encoded = [encode_namespace(ns, ns) for ns in listed]
    rank = {tick: r for r, tick in enumerate(sorted({node.tick for node in nodes}))}
    tokens = array("i")
    for node in nodes:
        tokens += node.tokens
    kv = torch.cat([node.rows for node in nodes]) if nodes else torch.empty(0, width, dtype=dtype)
    kv = kv.to("cpu", dtype).contiguous()
    token_tensor = torch.frombuffer(tokens, dtype=torch.int32).clone() if tokens else torch.empty(0, dtype=torch.int32)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "fingerprint": fingerprint,
        "dtype": dtype_name(dtype),
        "width": width,
        "layers": [list(spec) for spec in layers],
        "tokens": len(tokens),
        "namespaces": encoded,
        "node_fields": _NODE_FIELDS,
        "nodes": [[n.parent, index[namespace_key(n.namespace)], len(n.tokens), rank[n.tick]] for n in nodes],
        "sha256": {"kv": sha256_hex(kv), "tokens": sha256_hex(token_tensor)},
    }
    return bytes(_serialize({"kv": kv, "tokens": token_tensor}, metadata=manifest_metadata(manifest)))


def manifest_metadata(manifest: dict[str, Any]) -> dict[str, str]:
    """The safetensors metadata carrying ``manifest`` and its checksum."""
    text = json.dumps(manifest, separators=(",", ":"))
    return {_MANIFEST_KEY: text, _SHA_KEY: hashlib.sha256(text.encode()).hexdigest()}


# -- reading ------------------------------------------------------------------------------


def bad_file(path: str, what: str) -> ValueError:
    """The error for a file at ``path`` that cannot be loaded, and why."""
    return ValueError(f"path: {path!r} cannot be loaded: {what}")


def parse(path: str, data: bytes) -> SavedFile:
    """Check ``data`` (the bytes of the file at ``path``) as a whole: a complete safetensors file
    with a manifest of a known format and version, every checksum matching, a well-formed
    tree. Raises ``ValueError`` naming the path and what is wrong."""
    if len(data) < 8:
        raise bad_file(path, f"it is {len(data)} bytes long, too short to be a safetensors file")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise bad_file(
            path,
            f"its header claims {size} bytes but only {len(data) - 8} follow (truncated, or not safetensors)",
        )
    header = _json(path, data[8 : 8 + size], "its safetensors header")
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    text = meta.get(_MANIFEST_KEY) if isinstance(meta, dict) else None
    if not isinstance(text, str):
        raise bad_file(path, f"it is not a {FORMAT} file (no {_MANIFEST_KEY!r} in the safetensors metadata)")
    assert isinstance(meta, dict)
    if meta.get(_SHA_KEY) != hashlib.sha256(text.encode()).hexdigest():
        raise bad_file(path, "its manifest does not match its checksum (the file is damaged)")
    manifest = _json(path, text.encode(), "its manifest")
    if not isinstance(manifest, dict):
        raise bad_file(path, f"its manifest must be a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise bad_file(path, f"its format is {manifest.get('format')!r}, expected {FORMAT!r}")
    if manifest.get("version") != VERSION:
        raise bad_file(
            path, f"its format version is {manifest.get('version')!r}; this prefixcache reads version {VERSION}"
        )
    try:
        tensors = _load_safetensors(data)
    except (SafetensorError, ValueError, TypeError, RuntimeError, OverflowError) as err:
        raise bad_file(path, f"safetensors cannot read it ({err})") from None
    if set(tensors) != {"kv", "tokens"}:
        raise bad_file(path, f"expected the tensors ['kv', 'tokens'], found {sorted(tensors)}")
    return _check_manifest(path, manifest, tensors["kv"], tensors["tokens"])


def _json(path: str, raw: bytes, what: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise bad_file(path, f"{what} is not valid JSON ({err})") from None


def _check_manifest(path: str, m: dict[str, Any], kv: torch.Tensor, token_tensor: torch.Tensor) -> SavedFile:
    def field(name: str, ok: Callable[[Any], bool], expected: str) -> Any:
        value = m.get(name)
        if not ok(value):
            raise bad_file(path, f"manifest field {name!r} must be {expected}, got {value!r}")
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
        raise bad_file(
            path, f"its layers {layers} make rows of {sum(s.width for s in specs)} elements, not width {width}"
        )
    if dtype_name(kv.dtype) != dtype:
        raise bad_file(path, f"its 'kv' tensor is {dtype_name(kv.dtype)}, but the manifest says {dtype}")
    if list(kv.shape) != [n_tokens, width]:
        raise bad_file(path, f"its 'kv' tensor has shape {list(kv.shape)}, expected [{n_tokens}, {width}]")
    if token_tensor.dtype != torch.int32 or list(token_tensor.shape) != [n_tokens]:
        raise bad_file(
            path,
            f"its 'tokens' tensor is {list(token_tensor.shape)} {dtype_name(token_tensor.dtype)}, "
            f"expected [{n_tokens}] int32",
        )
    for name, tensor in (("kv", kv), ("tokens", token_tensor)):
        if sha256_hex(tensor) != sums[name]:
            raise bad_file(path, f"its {name!r} tensor does not match its checksum (the file is damaged)")
    tokens = array("i", token_tensor.numpy().tobytes())
    if tokens and min(tokens) < 0:
        raise bad_file(path, f"token ids must be >= 0, found {min(tokens)}")
    namespaces = []
    for i, raw in enumerate(raw_namespaces):
        try:
            namespaces.append(decode_namespace(raw))
        except ValueError as err:
            raise bad_file(path, f"namespaces[{i}]: {err}") from None
    if len({namespace_key(ns) for ns in namespaces}) != len(namespaces):
        raise bad_file(path, f"a namespace is listed twice in {namespaces!r}")
    nodes = [SavedFileNode(*raw) for raw in raw_nodes]
    _check_tree(path, nodes, len(namespaces), tokens)
    return SavedFile(fingerprint, dtype, width, specs, namespaces, nodes, kv, tokens)


def _check_tree(path: str, nodes: list[SavedFileNode], n_namespaces: int, tokens: array) -> None:
    """Parents before children, in one namespace, lengths adding up, no two siblings on one first token."""
    start = 0
    first_tokens: set[tuple[int, int, int]] = set()
    for i, node in enumerate(nodes):
        if not -1 <= node.parent < i:
            raise bad_file(path, f"node {i}: parent {node.parent} must be -1 or an earlier node's index")
        if not 0 <= node.namespace < n_namespaces:
            raise bad_file(path, f"node {i}: namespace index {node.namespace} is not in [0, {n_namespaces})")
        if node.parent >= 0 and nodes[node.parent].namespace != node.namespace:
            raise bad_file(path, f"node {i}: in namespace {node.namespace}, but its parent is in another")
        if node.length < 1 or start + node.length > len(tokens):
            raise bad_file(path, f"node {i}: length {node.length} must be >= 1 and within the {len(tokens)} tokens")
        if node.tick < 0:
            raise bad_file(path, f"node {i}: tick {node.tick} must be >= 0")
        key = (node.parent, node.namespace, tokens[start])
        if key in first_tokens:
            raise bad_file(path, f"node {i}: a sibling's edge also starts with token {tokens[start]}")
        first_tokens.add(key)
        start += node.length
    if start != len(tokens):
        raise bad_file(path, f"its nodes hold {start} tokens, but {len(tokens)} are stored")


# -- helpers ------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_int_list(value: object, n: int) -> bool:
    return isinstance(value, list) and len(value) == n and all(map(_is_int, value))


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def sha256_hex(tensor: torch.Tensor) -> str:
    raw = tensor.detach().cpu().contiguous().view(torch.uint8).numpy()
    return hashlib.sha256(raw.data).hexdigest()
