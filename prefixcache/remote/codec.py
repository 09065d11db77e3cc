"""One stored chunk as bytes: a header, the rows' raw bytes, a checksum. Nothing else is trusted.

    offset  size          field
    0       4             magic b"PCKV"
    4       2             format version (1), little-endian like every number here
    6       2             header size (96)
    8       16            dtype name, ASCII, NUL-padded ("float32")
    24      4             width: elements per row
    28      4             tokens: rows in the chunk
    32      32            layout digest (ChunkLayout.digest)
    64      32            the chunk's own digest: the key it was stored under
    96      tokens*width*itemsize   the rows, row-major, in the dtype's native little-endian bytes
    end-32  32            sha256 of everything before it

:func:`decode` accepts a value only if every field is what this reader expects
for this key and layout and the checksum matches; otherwise it raises
:class:`ChunkError` with one of :data:`REASONS`. So a truncated, damaged or
foreign value, or one copied under another key, is never served.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from typing import Any

import torch

from .chunks import ChunkLayout, dtype_name

__all__ = ["CHECKSUM_SIZE", "HEADER_SIZE", "MAGIC", "REASONS", "VERSION", "ChunkError", "decode", "encode"]

MAGIC = b"PCKV"
VERSION = 1
_HEADER = struct.Struct("<4sHH16sII32s32s")
HEADER_SIZE = _HEADER.size
"""Bytes before the rows (96)."""
CHECKSUM_SIZE = 32
"""Bytes after the rows (a sha256)."""
REASONS = ("truncated", "header", "layout", "key", "checksum")
"""Why :func:`decode` refuses a value: too short or too long for its header, not a chunk of this format
and version, another layout or dtype, stored under another key, damaged bytes."""

if sys.byteorder != "little":  # pragma: no cover - every platform torch ships for is little-endian
    raise ImportError("prefixcache.remote stores KV as little-endian bytes and runs on little-endian machines only")


class ChunkError(ValueError):
    """A stored value that must not be served; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def encode(rows: torch.Tensor, *, digest: bytes, layout: ChunkLayout) -> bytes:
    """The stored value of one chunk: ``rows`` (``[chunk_tokens, width]`` on the CPU in the
    layout's dtype) under the chunk digest ``digest``. Raises ``ValueError`` for other rows.

    >>> from prefixcache.kv import LayerSpec
    >>> layout = ChunkLayout([LayerSpec(1, 1, 1)], torch.float32, chunk_tokens=2)
    >>> rows = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    >>> value = encode(rows, digest=bytes(32), layout=layout)
    >>> len(value) == HEADER_SIZE + 16 + CHECKSUM_SIZE
    True
    >>> torch.equal(decode(value, digest=bytes(32), layout=layout), rows)
    True
    """
    shape = (layout.chunk_tokens, layout.width)
    if tuple(rows.shape) != shape or rows.dtype != layout.dtype or rows.device.type != "cpu":
        raise ValueError(
            f"rows: expected a CPU tensor {list(shape)} of {layout.dtype}, "
            f"got {list(rows.shape)} of {rows.dtype} on {rows.device}"
        )
    if len(digest) != 32:
        raise ValueError(f"digest: expected 32 bytes, got {len(digest)}")
    header = _HEADER.pack(
        MAGIC,
        VERSION,
        HEADER_SIZE,
        dtype_name(layout.dtype).encode(),
        layout.width,
        layout.chunk_tokens,
        layout.digest,
        digest,
    )
    payload = _bytes_of(rows.contiguous())
    check = hashlib.sha256(header)
    check.update(payload)
    return b"".join((header, payload, check.digest()))


def decode(value: bytes, *, digest: bytes, layout: ChunkLayout, out: torch.Tensor | None = None) -> torch.Tensor:
    """The rows stored in ``value``, checked to be exactly the chunk ``digest`` of ``layout``.

    Returns ``out`` (a contiguous CPU tensor ``[chunk_tokens, width]`` of the layout's
    dtype, filled) or a new such tensor. Raises :class:`ChunkError` when the value
    is anything else; ``out`` may then hold part of it. O(len(value)).
    """
    n = len(value)
    if n < HEADER_SIZE:
        raise ChunkError("truncated", f"{n} bytes, shorter than the {HEADER_SIZE}-byte header")
    magic, version, header_size, dtype, width, tokens, layout_digest, key = _HEADER.unpack_from(value)
    if magic != MAGIC or version != VERSION or header_size != HEADER_SIZE:
        raise ChunkError("header", f"magic {magic!r} version {version} header {header_size}, not a v{VERSION} chunk")
    stored_dtype = dtype.rstrip(b"\0").decode(errors="replace")
    if (
        layout_digest != layout.digest
        or stored_dtype != dtype_name(layout.dtype)
        or width != layout.width
        or tokens != layout.chunk_tokens
    ):
        raise ChunkError(
            "layout",
            f"stored as {tokens} rows of {width} {stored_dtype}, "
            f"expected {layout.chunk_tokens} rows of {layout.width} {dtype_name(layout.dtype)} "
            f"(or another layer layout)",
        )
    size = layout.chunk_bytes
    if n != HEADER_SIZE + size + CHECKSUM_SIZE:
        raise ChunkError("truncated", f"{n} bytes, expected {HEADER_SIZE + size + CHECKSUM_SIZE}")
    if key != digest:
        raise ChunkError("key", f"stored for chunk {key.hex()[:16]}..., read as {digest.hex()[:16]}...")
    view = memoryview(value)
    check = hashlib.sha256(view[: HEADER_SIZE + size]).digest()
    if check != view[HEADER_SIZE + size :]:
        raise ChunkError("checksum", "the bytes do not match their sha256 (damaged in store or transit)")
    if out is None:
        out = torch.empty(layout.chunk_tokens, layout.width, dtype=layout.dtype)
    elif (
        tuple(out.shape) != (layout.chunk_tokens, layout.width)
        or out.dtype != layout.dtype
        or out.device.type != "cpu"
        or not out.is_contiguous()
    ):
        raise ValueError(
            f"out: expected a contiguous CPU tensor [{layout.chunk_tokens}, {layout.width}] of {layout.dtype}, "
            f"got {list(out.shape)} of {out.dtype} on {out.device}"
        )
    _bytes_of(out)[:] = view[HEADER_SIZE : HEADER_SIZE + size]
    return out


def _bytes_of(rows: torch.Tensor) -> memoryview:
    """A writable flat byte view of a contiguous CPU tensor (no copy)."""
    assert rows.is_contiguous() and rows.device.type == "cpu"
    array: Any = rows.view(torch.uint8).numpy()
    return memoryview(array).cast("B")
