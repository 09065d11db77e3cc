"""Chained chunk keys: one key names a whole prefix, of one model, namespace and layout.

Chunks are aligned at token 0; chunk ``i`` covers tokens ``[i*C, (i+1)*C)``:

    root     = sha256(tag, fingerprint, namespace, layout digest)
    digest 0 = sha256(root     || tokens[0:C]   as int32 little-endian)
    digest i = sha256(digest i-1 || tokens[i*C:(i+1)*C])
    Redis key of chunk i = b"prefixcache:kv:" + hex(digest i)

So two prompts share chunk ``i``'s key exactly when they share the tokens
``[0, (i+1)*C)``, the model (its fingerprint), the namespace and the layout
(layers, dtype, chunk size); any difference in any of these gives unrelated keys.
Only complete chunks have keys: a prompt's last ``len % C`` tokens are never stored.
"""

from __future__ import annotations

import hashlib
import json
import sys
from array import array
from collections.abc import Hashable

from ..persist.namespaces import encode_namespace
from .chunks import ChunkLayout

__all__ = ["KEY_PREFIX", "chunk_digests", "redis_key", "root_digest"]

KEY_PREFIX = b"prefixcache:kv:"
"""Every key the remote tier writes starts with this (``SCAN MATCH prefixcache:kv:*`` finds them)."""

_ROOT_TAG = b"prefixcache-remote-root/1"


def root_digest(fingerprint: str, namespace: Hashable, layout: ChunkLayout) -> bytes:
    """The 32-byte root of the chain of ``namespace``'s chunks for this model and layout.

    ``fingerprint`` is the model's (:func:`prefixcache.persist.model_fingerprint`).
    ``namespace`` may be None, a str, an int, a bool or a tuple of these (nested
    too), hashed with its type, so ``1``, ``"1"`` and ``True`` are three namespaces.
    Raises ``TypeError`` for an empty or non-str fingerprint and ``ValueError`` for
    a namespace of another type.

    >>> from prefixcache.kv import LayerSpec
    >>> import torch
    >>> layout = ChunkLayout([LayerSpec(1, 2, 2)], torch.float32, chunk_tokens=4)
    >>> root_digest("ab12", None, layout) == root_digest("ab12", None, layout)
    True
    >>> len({root_digest("ab12", ns, layout) for ns in (None, 1, "1", True, (1,))})
    5
    """
    if not isinstance(fingerprint, str) or not fingerprint:
        raise TypeError(
            f"fingerprint: expected the model's fingerprint as a non-empty str (see model_fingerprint), "
            f"got {fingerprint!r}"
        )
    try:
        encoded = encode_namespace(namespace, namespace)
    except ValueError:
        raise ValueError(
            f"namespace: {namespace!r} cannot be shared through a remote tier: it must be None, a str, "
            f"an int, a bool or a tuple of these, so that every process hashes it alike"
        ) from None
    digest = hashlib.sha256()
    for piece in (
        _ROOT_TAG,
        fingerprint.encode(),
        json.dumps(encoded, separators=(",", ":")).encode(),
        layout.digest,
    ):
        # Length-prefixed, so that no two different sequences of pieces hash alike.
        digest.update(len(piece).to_bytes(8, "little"))
        digest.update(piece)
    return digest.digest()


def chunk_digests(root: bytes, tokens: array, chunk_tokens: int, count: int | None = None) -> list[bytes]:
    """The digests of the first ``count`` complete chunks of ``tokens`` (all of them when None).

    ``tokens`` is an ``array('i')``. O(count * chunk_tokens).

    >>> root = bytes(32)
    >>> a = chunk_digests(root, array("i", range(10)), 4)        # chunks [0, 4), [4, 8)
    >>> b = chunk_digests(root, array("i", [0, 1, 2, 3, 9, 9, 9, 9]), 4)
    >>> len(a), a[0] == b[0], a[1] == b[1]
    (2, True, False)
    """
    if tokens.typecode != "i" or tokens.itemsize != 4:
        raise TypeError(f"tokens: expected an array('i') of 4-byte ints, got array({tokens.typecode!r})")
    complete = len(tokens) // chunk_tokens
    count = complete if count is None else min(count, complete)
    raw = tokens[: count * chunk_tokens]
    if sys.byteorder == "big":
        raw = array("i", raw)
        raw.byteswap()
    view = memoryview(raw).cast("B")
    step = chunk_tokens * 4
    out: list[bytes] = []
    parent = root
    for i in range(count):
        parent = hashlib.sha256(parent + view[i * step : (i + 1) * step]).digest()
        out.append(parent)
    return out


def redis_key(digest: bytes) -> bytes:
    """The Redis key that stores the chunk whose digest is ``digest``."""
    return KEY_PREFIX + digest.hex().encode()
