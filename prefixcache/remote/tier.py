"""RemoteTier: KV chunks shared through Redis by every process that names the same server.

A request asks :meth:`RemoteTier.fetch` for what lies past its local hit, and
after it ran, hands its new complete chunks to :meth:`RemoteTier.submit`:

    # [0, have)                 held locally (device or host tier)
    # [start, start + n)        fetched: n // C whole chunks, start = (have // C) * C <= have
    # [start + n, len(tokens))  computed by the model; its complete chunks are submitted after

Redis is a cache here, never a source of truth: whatever it returns is checked
(see :mod:`prefixcache.remote.codec`), and whatever goes wrong with it (down,
slow, refusing, evicting, returning garbage) costs a request at most one call's
timeout and is counted in :attr:`RemoteTier.stats`, never raised.

The tier checks its arguments and hands the work on: reads to a
:class:`~prefixcache.remote.reader.ChunkReader`, writes to a
:class:`~prefixcache.remote.writer.ChunkWriter` and its thread.
"""

from __future__ import annotations

import weakref
from collections.abc import Hashable, Sequence

import torch

from ..arguments import as_tokens, check_int
from ..kv.layout import LayerSpec
from .backoff import Backoff
from .chunks import DEFAULT_CHUNK_TOKENS, ChunkLayout
from .counters import RemoteCounters, RemoteStats
from .keys import chunk_digests, root_digest
from .known import KnownChunks
from .link import Link
from .reader import ChunkReader, RemoteRows
from .url import RedisURL, parse_redis_url
from .writer import ChunkWriter, Job, RowsProvider

__all__ = ["RemoteRows", "RemoteTier"]


class RemoteTier:
    """KV chunks of one model's layout in a Redis server, shared with every process using the same one.

    ``url`` is ``redis://[[user]:password@]host[:port][/db]`` or ``rediss://...``
    (TLS). ``fingerprint`` identifies the model (``model_fingerprint``); with
    ``layers``, ``dtype`` and ``chunk_tokens`` it decides which chunks this tier
    can see: another model, dtype, layout or chunk size never reads these.

    ``timeout`` (seconds) bounds every socket operation: connecting, and each
    send and receive of a call. A call that fails starts a backoff of
    ``backoff_initial`` seconds, doubling on each failure in a row up to
    ``backoff_max`` (times a random factor in [0.5, 1]); meanwhile the tier does
    not contact Redis, so requests get nothing from it at once; then one call
    probes (and reconnects) while the others still skip.

    ``queue_chunks`` bounds the chunks waiting to be written (each holds
    ``chunk_tokens * width * dtype size`` bytes of host memory until written,
    page-locked when its rows came from a GPU). ``batch_chunks`` chunks are
    fetched or written per round trip. ``pin_memory`` returns fetched rows in
    page-locked memory when CUDA is available (for a fast, asynchronous copy to a
    GPU). ``close_timeout`` is the time :meth:`close` gets at interpreter exit.
    ``known_chunks`` bounds the memory of chunks known to be stored (32 bytes and
    some overhead each), which spares their writes.

    Thread-safe: any number of threads may call :meth:`fetch` and :meth:`submit`
    at once. Making a tier does not contact Redis. Raises ``ImportError`` when
    redis-py is missing, ``TypeError``/``ValueError`` (naming the argument) for bad
    arguments.
    """

    def __init__(
        self,
        url: str | RedisURL,
        *,
        fingerprint: str,
        layers: Sequence[LayerSpec],
        dtype: torch.dtype,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        timeout: float = 0.5,
        queue_chunks: int = 32,
        batch_chunks: int = 8,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        pin_memory: bool = False,
        close_timeout: float = 2.0,
        known_chunks: int = 1 << 16,
    ) -> None:
        self.url = url if isinstance(url, RedisURL) else parse_redis_url(url)
        self.layout = ChunkLayout(layers, dtype, chunk_tokens)
        root_digest(fingerprint, None, self.layout)  # checks the fingerprint
        self.fingerprint = fingerprint
        self.timeout = _seconds(timeout, "timeout")
        _seconds(close_timeout, "close_timeout")
        for name, value in (
            ("queue_chunks", queue_chunks),
            ("batch_chunks", batch_chunks),
            ("known_chunks", known_chunks),
        ):
            check_int(value, name, 1)
        self.batch_chunks = batch_chunks
        self.pin_memory = bool(pin_memory) and torch.cuda.is_available()
        self._counters = RemoteCounters()
        self._known = KnownChunks(known_chunks)
        initial, maximum = _seconds(backoff_initial, "backoff_initial"), _seconds(backoff_max, "backoff_max")
        if maximum < initial:
            raise ValueError(f"backoff_max: expected at least backoff_initial ({initial}), got {backoff_max!r}")
        backoff = Backoff(initial, maximum, probe_window=self.timeout * 2)
        # After an outage the server may have lost everything: forget what it was known to hold.
        self._link = Link(
            self.url, timeout=self.timeout, backoff=backoff, counters=self._counters, on_recover=self._known.clear
        )
        self._reader = ChunkReader(
            self._link, self.layout, self._known, self._counters, batch_chunks=batch_chunks, pin_memory=self.pin_memory
        )
        self._writer = ChunkWriter(
            self._link, self.layout, self._known, capacity=queue_chunks, batch_chunks=batch_chunks
        )
        self._closed = False
        # Closes at interpreter exit too, without keeping the tier alive: the
        # finalizer holds the writer and the link, never the tier.
        self._finalizer = weakref.finalize(self, _shut, self._writer, self._link, close_timeout)

    def __repr__(self) -> str:
        return f"RemoteTier({self.url.masked()!r}, {self.layout!r}, closed={self._closed})"

    def rebind(self, fingerprint: str) -> None:
        """Read and write the chunks of the model ``fingerprint`` names from now on (its weights
        changed); chunks already queued keep the keys of the KV they hold."""
        root_digest(fingerprint, None, self.layout)  # checks the fingerprint
        self.fingerprint = fingerprint

    # -- reading --------------------------------------------------------------------------

    def fetch(self, namespace: Hashable, tokens: Sequence[int] | torch.Tensor, have: int) -> RemoteRows:
        """The longest run of valid chunks in Redis that continues the ``have`` tokens held locally.

        Looks up chunks ``have // C, have // C + 1, ...`` (C = ``chunk_tokens``),
        complete chunks of ``tokens`` only, ``batch_chunks`` keys per round trip
        (MGET), and stops at the first chunk that is missing or not valid (wrong
        length, header, layout, dtype, key, or checksum), or at a failed call.
        Returns the rows of the chunks before it, for tokens
        ``[start, start + n)`` with ``start = (have // C) * C``: the first
        ``have - start`` of them repeat what is held. Empty rows (``n == 0``) when
        nothing useful was found, while backing off, or after :meth:`close`.

        Never raises for Redis problems (they are counted); takes at most about
        ``timeout`` per round trip. Raises ``TypeError``/``ValueError`` for bad
        ``tokens`` or ``have`` (not in ``[0, len(tokens)]``) and ``ValueError`` for a
        namespace that is not None, a str, an int, a bool or a tuple of these.
        O(len(tokens)) hashing plus the bytes fetched.
        """
        tokens = as_tokens(tokens)
        check_int(have, "have", 0, len(tokens))
        root = root_digest(self.fingerprint, namespace, self.layout)
        if self._closed:
            return self._reader.nothing(have)
        return self._reader.read(root, tokens, have)

    # -- writing --------------------------------------------------------------------------

    def pending(self, namespace: Hashable, tokens: Sequence[int] | torch.Tensor) -> tuple[int, int]:
        """The tokens ``[lo, hi)`` whose complete chunks :meth:`submit` would queue now: from the
        first chunk not known to be stored or queued to the last complete chunk; ``(0, 0)``
        when none. A caller builds rows for that range only. Raises as :meth:`submit` does."""
        tokens = as_tokens(tokens)
        chunk = self.layout.chunk_tokens
        last = len(tokens) // chunk
        if last == 0 or self._closed:
            return 0, 0
        root = root_digest(self.fingerprint, namespace, self.layout)
        wanted = self._writer.wanted(chunk_digests(root, tokens, chunk, last))
        first = next((i for i, ok in enumerate(wanted) if ok), last)
        return (first * chunk, last * chunk) if first < last else (0, 0)

    def submit(
        self,
        namespace: Hashable,
        tokens: Sequence[int] | torch.Tensor,
        rows: torch.Tensor | RowsProvider,
        *,
        start: int = 0,
    ) -> int:
        """Queue the complete chunks of ``tokens`` that ``rows`` covers, for the writer thread.

        ``rows`` is either a tensor ``[m, width]`` in the tier's dtype holding the KV
        of tokens ``[start, start + m)``, or a callable ``rows(begin, end)`` that the
        writer thread calls for each chunk and that returns the rows of tokens
        ``[begin, end)`` (a tensor ``[end - begin, width]`` in the tier's dtype, on
        any device) or None when it no longer has them (the chunk is then dropped).

        Where the rows come from decides what the request pays. A CPU tensor is
        kept as it is, not copied: do not change it afterwards. A CUDA tensor is
        copied to page-locked host memory on a side stream: the request only
        queues the copy; the writer waits for it. A callable costs the request
        nothing: it is for a caller that can read the rows later (say, from its
        pool, if they are still cached) rather than hold a copy until written.

        Chunks known to be stored already (written or read by this tier) or
        already queued are skipped, so each is written once; the others are
        queued in order until the queue is full, and the rest dropped and counted
        (``queue_drops``). Never blocks on Redis. Returns the chunks queued.
        Raises ``TypeError``/``ValueError`` for bad tokens, rows, ``start`` or
        namespace.
        """
        tokens = as_tokens(tokens)
        layout, chunk = self.layout, self.layout.chunk_tokens
        check_int(start, "start", 0, len(tokens))
        tensor = None if callable(rows) else self._check_rows(rows, start, len(tokens))
        end = len(tokens) if tensor is None else start + tensor.shape[0]
        first, last = -(-start // chunk), end // chunk
        root = root_digest(self.fingerprint, namespace, layout)
        if last <= first:
            return 0
        if self._closed:
            self._counters.add(queue_drops=last - first)
            return 0
        digests = chunk_digests(root, tokens, chunk, last)
        wanted = [i for i, ok in zip(range(first, last), self._writer.wanted(digests[first:last]), strict=True) if ok]
        if not wanted:
            return 0
        take = wanted[: self._writer.room()]
        if len(take) < len(wanted):
            self._counters.add(queue_drops=len(wanted) - len(take))
        if not take:
            return 0
        jobs = []
        if tensor is None:
            provider = rows if callable(rows) else None
            jobs = [Job(digests[i], i * chunk, None, None, provider, self._known.is_bad(digests[i])) for i in take]
        else:
            lo, hi = take[0] * chunk, (take[-1] + 1) * chunk
            host, ready = self._writer.stage(tensor[lo - start : hi - start])
            for i in take:
                part = host[i * chunk - lo : (i + 1) * chunk - lo]
                jobs.append(Job(digests[i], i * chunk, part, ready, None, self._known.is_bad(digests[i])))
        return self._writer.offer(jobs)

    def _check_rows(self, rows: object, start: int, n_tokens: int) -> torch.Tensor:
        layout = self.layout
        if not isinstance(rows, torch.Tensor):
            raise TypeError(f"rows: expected a tensor [n, {layout.width}] or a callable, got {type(rows).__name__}")
        if rows.dim() != 2 or rows.shape[1] != layout.width or start + rows.shape[0] > n_tokens:
            raise ValueError(
                f"rows: expected [n, {layout.width}] with start + n <= len(tokens) = {n_tokens} "
                f"(start = {start}), got {list(rows.shape)}"
            )
        if rows.dtype != layout.dtype:
            raise TypeError(f"rows: expected {layout.dtype} (the tier's dtype), got {rows.dtype}")
        return rows.detach()

    # -- state ----------------------------------------------------------------------------

    @property
    def stats(self) -> RemoteStats:
        """A snapshot of the counters."""
        return self._counters.snapshot(queued=self._writer.queued)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued within ``timeout`` seconds, drop the rest (counted), close the connections.

        Returns within about ``timeout`` whatever Redis does; safe to call more
        than once. Afterwards ``fetch`` finds nothing and ``submit`` queues nothing.
        Also runs at interpreter exit (with ``close_timeout``) if not called.
        """
        timeout = _seconds(timeout, "timeout", zero=True)
        self._closed = True
        if self._finalizer.detach() is not None:
            _shut(self._writer, self._link, timeout)

    def __enter__(self) -> RemoteTier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _shut(writer: ChunkWriter, link: Link, timeout: float) -> None:
    writer.close(timeout)
    link.close()


def _seconds(value: object, name: str, *, zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value < float("inf")
    if not ok or not (value >= 0 if zero else value > 0):  # type: ignore[operator]
        raise ValueError(f"{name}: expected a number of seconds {'>=' if zero else '>'} 0, got {value!r}")
    return float(value)  # type: ignore[arg-type]
