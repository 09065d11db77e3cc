"""The read path: a run of chunks fetched from Redis, ``batch_chunks`` keys per MGET, each checked before use.

A run starts at the chunk that holds token ``have`` and ends at the first chunk
that is missing or not valid (see :func:`~prefixcache.remote.codec.decode`), or
at a failed call:

    # [start, start + got * C)                    valid: decoded into one tensor of rows, known stored
    # [start + got * C, start + (got + 1) * C)    missing (forgotten) or bad (marked to be overwritten)
    # [start + (got + 1) * C, ...)                unreachable: forgotten, so that a submit rewrites them

A failed call ends the run where it stands and forgets nothing.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import NamedTuple

import torch

from .chunks import ChunkLayout
from .codec import ChunkError, decode
from .counters import RemoteCounters
from .keys import chunk_digests, redis_key
from .known import KnownChunks
from .link import Link

__all__ = ["ChunkReader", "RemoteRows"]


class RemoteRows(NamedTuple):
    """What :meth:`RemoteTier.fetch` found: the KV rows of tokens ``[start, start + len(rows))``."""

    start: int
    """The first token the rows hold: a multiple of the chunk size, at or before ``have``."""
    rows: torch.Tensor
    """``[n, width]`` on the CPU in the tier's dtype; ``n`` a multiple of the chunk size (0: nothing found)."""

    @property
    def stop(self) -> int:
        """One past the last token the rows hold."""
        return self.start + self.rows.shape[0]


class ChunkReader:
    """Reads runs of chunks through ``link`` and checks them; records what it learns in ``known``
    and ``counters``. Thread-safe as its parts are; holds no reference to the tier that owns it."""

    def __init__(
        self,
        link: Link,
        layout: ChunkLayout,
        known: KnownChunks,
        counters: RemoteCounters,
        *,
        batch_chunks: int,
        pin_memory: bool,
    ) -> None:
        self._link = link
        self._layout = layout
        self._known = known
        self._counters = counters
        self._batch = batch_chunks
        self._pin_memory = pin_memory

    def nothing(self, have: int) -> RemoteRows:
        """No rows, starting at the chunk that holds token ``have``."""
        layout = self._layout
        return RemoteRows(
            (have // layout.chunk_tokens) * layout.chunk_tokens, torch.empty(0, layout.width, dtype=layout.dtype)
        )

    def read(self, root: bytes, tokens: array, have: int) -> RemoteRows:
        """The longest run of valid chunks under ``root`` that continues the ``have`` tokens of
        ``tokens`` held locally (see :meth:`RemoteTier.fetch`, which checks the arguments)."""
        layout, chunk = self._layout, self._layout.chunk_tokens
        first, last = have // chunk, len(tokens) // chunk
        if last <= first:
            return self.nothing(have)
        self._counters.add(fetches=1)
        digests = chunk_digests(root, tokens, chunk, last)[first:]
        out: torch.Tensor | None = None

        def rows_of(i: int) -> torch.Tensor:  # chunk i of the run, allocated once a value arrives
            nonlocal out
            if out is None:
                out = torch.empty(len(digests) * chunk, layout.width, dtype=layout.dtype, pin_memory=self._pin_memory)
            return out[i * chunk : (i + 1) * chunk]

        got = 0
        for at in range(0, len(digests), self._batch):
            batch = digests[at : at + self._batch]
            values = self._mget(batch)
            if values is None:
                break
            valid = self._decode_run(batch, values, rows_of, at)
            got += valid
            if valid < len(batch):
                # What follows a missing or bad chunk is unreachable: forget it all, so that
                # the next submit checks and rewrites it (after a flush or a restart, say).
                for digest in digests[got + 1 :]:
                    self._known.forget(digest)
                break
        if got == 0 or out is None:
            return self.nothing(have)
        self._counters.add(hit_chunks=got, hit_tokens=(first + got) * chunk - have)
        return RemoteRows(first * chunk, out[: got * chunk])

    def _mget(self, digests: list[bytes]) -> list[object] | None:
        """The values of ``digests`` in one round trip, or None if the call was skipped or failed."""
        keys = [redis_key(d) for d in digests]
        values = self._link.call(
            lambda client: client.mget(keys), check=lambda reply: isinstance(reply, list) and len(reply) == len(keys)
        )
        if values is not None:
            self._counters.add(bytes_fetched=sum(len(v) for v in values if isinstance(v, bytes)))
        return values

    def _decode_run(
        self, digests: list[bytes], values: list[object], rows_of: Callable[[int], torch.Tensor], at: int
    ) -> int:
        """Decode ``values`` into ``rows_of(at)``, ``rows_of(at + 1)``, ... up to the first missing or
        invalid one; return how many were valid."""
        for i, (digest, value) in enumerate(zip(digests, values, strict=True)):
            if value is None:
                self._known.forget(digest)  # evicted, or never stored: it may be written again
                self._counters.add(missing_chunks=1)
                return i
            try:
                if not isinstance(value, bytes):
                    raise ChunkError("header", f"a reply of type {type(value).__name__}, not bytes")
                decode(value, digest=digest, layout=self._layout, out=rows_of(at + i))
            except ChunkError:
                self._known.bad(digest)  # the next write of this chunk replaces it
                self._counters.add(invalid_chunks=1)
                return i
            self._known.stored(digest)
        return len(digests)
