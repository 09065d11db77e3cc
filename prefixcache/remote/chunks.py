"""What one stored chunk of KV looks like: the pool's row layout, its dtype and the chunk size.

A chunk is ``chunk_tokens`` consecutive pool rows (see :mod:`prefixcache.kv.layout`):

    row t:  | K layer 0 | V layer 0 | K layer 1 | V layer 1 | ... |    width elements, in dtype

Two processes can share chunks only when their layouts are equal; the layout's
digest goes into every key's root and every value's header, so chunks of another
layout are never found, and if found, never decoded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..arguments import check_int
from ..kv.layout import KVLayout, LayerSpec

__all__ = ["DEFAULT_CHUNK_TOKENS", "ChunkLayout", "dtype_name"]

DEFAULT_CHUNK_TOKENS = 256
"""Tokens per stored chunk unless told otherwise."""

_MAX_CHUNK = 1 << 20


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``'float32'``."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class ChunkLayout:
    """The shape and dtype of a chunk's rows, checked when made.

    Raises ``TypeError``/``ValueError`` (naming the argument) for layers that are
    not (kv_heads, key_dim, value_dim) triples of positive ints, a dtype that is
    not a floating-point ``torch.dtype``, or a chunk size that is not an int in
    [1, 2**20].

    >>> layout = ChunkLayout([LayerSpec(2, 4, 4)], torch.float16, chunk_tokens=16)
    >>> layout.width, layout.row_bytes, layout.chunk_bytes
    (16, 32, 512)
    >>> layout == ChunkLayout(((2, 4, 4),), torch.float16, chunk_tokens=16), len(layout.digest)
    (True, 32)
    """

    layers: Sequence[LayerSpec]
    """Per layer (kv_heads, key_dim, value_dim); kept as a tuple of LayerSpec."""
    dtype: torch.dtype
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS
    width: int = field(init=False)
    """Elements in one row (one token, every layer's K and V)."""
    row_bytes: int = field(init=False)
    chunk_bytes: int = field(init=False)
    """Bytes of one chunk's rows: ``chunk_tokens * row_bytes``."""
    digest: bytes = field(init=False, repr=False)
    """sha256 of all of the above: equal digests, interchangeable chunks."""

    def __post_init__(self) -> None:
        specs = KVLayout(self.layers).layers
        dtype, chunk_tokens = self.dtype, self.chunk_tokens
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype: expected a floating-point torch.dtype, got {dtype!r}")
        check_int(chunk_tokens, "chunk_tokens", 1, _MAX_CHUNK)
        width = sum(spec.width for spec in specs)
        text = f"layers={[list(s) for s in specs]};dtype={dtype_name(dtype)};width={width};chunk={chunk_tokens}"
        for name, value in (
            ("layers", specs),
            ("width", width),
            ("row_bytes", width * dtype.itemsize),
            ("chunk_bytes", chunk_tokens * width * dtype.itemsize),
            ("digest", hashlib.sha256(b"prefixcache-remote-layout/1;" + text.encode()).digest()),
        ):
            object.__setattr__(self, name, value)
