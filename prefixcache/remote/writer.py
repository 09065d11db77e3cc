"""The background writer: a bounded queue of chunks and one thread that stores them in Redis.

A request only puts chunks in the queue (``offer`` never blocks; a full queue
drops and counts). The thread takes up to ``batch_chunks`` at a time and makes
two round trips: EXISTS for all of them (a chunk another process already stored
is not sent again), then one pipeline of ``SET key value NX`` (plain SET for a
key whose value a fetch found bad, to replace it).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from .chunks import ChunkLayout
from .codec import encode
from .keys import redis_key
from .known import KnownChunks
from .link import Link

__all__ = ["ChunkWriter", "Job", "RowsProvider"]

logger = logging.getLogger("prefixcache")

RowsProvider = Callable[[int, int], "torch.Tensor | None"]
"""``provider(begin, end)``: the KV rows of tokens ``[begin, end)``, or None if they are gone."""


class Job(NamedTuple):
    """One chunk to store."""

    digest: bytes
    begin: int
    """Its first token."""
    rows: torch.Tensor | None
    """``[chunk_tokens, width]`` on the CPU, readable once ``ready`` has fired; None with a provider."""
    ready: Any
    """A ``torch.cuda.Event`` recorded after the copy into ``rows`` was queued, or None."""
    provider: RowsProvider | None
    overwrite: bool
    """Replace the value Redis holds (it was found bad) rather than SET NX."""


class ChunkWriter:
    """The queue and the writer thread. The thread holds no reference to the tier that owns this."""

    def __init__(
        self, link: Link, layout: ChunkLayout, known: KnownChunks, *, capacity: int, batch_chunks: int
    ) -> None:
        self._link = link
        self._layout = layout
        self._known = known
        self.capacity = capacity
        self._batch = batch_chunks
        self._cond = threading.Condition()
        self._jobs: deque[Job] = deque()
        self._pending: set[bytes] = set()  # queued or being written
        self._stopping = False
        self._deadline = math.inf
        self._streams: dict[torch.device, Any] = {}
        self._thread = threading.Thread(target=self._run, name="prefixcache-remote-writer", daemon=True)
        self._thread.start()

    # -- the request side -------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Chunks in the queue now."""
        return len(self._jobs)

    def wanted(self, digests: Sequence[bytes]) -> list[bool]:
        """For each digest: not known stored, not queued, and the queue not closed (a hint: ``offer`` decides)."""
        with self._cond:
            if self._stopping:
                return [False] * len(digests)
            return [d not in self._pending and not self._known.is_stored(d) for d in digests]

    def room(self) -> int:
        """Free places in the queue now."""
        return 0 if self._stopping else max(0, self.capacity - len(self._jobs))

    def offer(self, jobs: Sequence[Job]) -> int:
        """Queue ``jobs`` in order, skipping those already queued; once one does not fit, drop it and the
        rest (a chunk is useless without the ones before it). Never blocks. Returns the number queued."""
        queued = dropped = 0
        with self._cond:
            for i, job in enumerate(jobs):
                if job.digest in self._pending:
                    continue
                if self._stopping or len(self._jobs) >= self.capacity:
                    dropped = sum(1 for j in jobs[i:] if j.digest not in self._pending)
                    break
                self._jobs.append(job)
                self._pending.add(job.digest)
                queued += 1
            if queued:
                self._cond.notify()
        if dropped:
            self._link.counters.add(queue_drops=dropped)
        return queued

    @torch.no_grad()
    def stage(self, rows: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """``rows`` on the host and an event to wait on before reading them (None when already readable).

        CPU rows are kept as they are (no copy: the caller must not change them).
        CUDA rows are copied into page-locked memory on a side stream that first
        waits for the work queued so far, so the request thread only queues the
        copy and goes on; the writer thread waits for the event. Other devices
        are copied at once.
        """
        if rows.device.type == "cpu":
            return rows.contiguous(), None
        if rows.device.type != "cuda":
            return rows.to("cpu").contiguous(), None
        rows = rows.contiguous()
        stream = self._streams.get(rows.device)
        if stream is None:
            stream = self._streams.setdefault(rows.device, torch.cuda.Stream(rows.device))
        host = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
        stream.wait_stream(torch.cuda.current_stream(rows.device))
        with torch.cuda.stream(stream):
            host.copy_(rows, non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)
        rows.record_stream(stream)  # the allocator must not reuse rows' memory before the copy ran
        return host, event

    # -- closing ------------------------------------------------------------------------------

    def close(self, timeout: float) -> None:
        """Write what can be written within ``timeout`` seconds, drop the rest, stop the thread.

        Returns within about ``timeout`` (the thread may finish its last call after
        that; it is a daemon and holds nothing the caller waits for)."""
        with self._cond:
            if not self._stopping:
                self._stopping = True
                self._deadline = time.monotonic() + timeout
            self._cond.notify_all()
        self._thread.join(max(0.0, self._deadline - time.monotonic()))
        with self._cond:
            if self._jobs:
                self._link.counters.add(write_drops=len(self._jobs))
                self._jobs.clear()

    # -- the writer thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._stopping:
                    self._cond.wait()
                if not self._jobs or (self._stopping and time.monotonic() >= self._deadline):
                    return
                batch = [self._jobs.popleft() for _ in range(min(self._batch, len(self._jobs)))]
            try:
                self._write(batch)
            except Exception:  # a bug must not stop the thread, nor reach a request
                logger.exception("the remote tier's writer dropped %d chunks", len(batch))
                self._link.counters.add(write_drops=len(batch))
            finally:
                with self._cond:
                    self._pending.difference_update(job.digest for job in batch)

    def _write(self, batch: list[Job]) -> None:
        counters, known = self._link.counters, self._known
        ready = [(job, rows) for job in batch if (rows := self._rows(job)) is not None]
        if len(ready) < len(batch):
            counters.add(write_drops=len(batch) - len(ready))
        checked = [redis_key(job.digest) for job, _ in ready if not job.overwrite]
        present: set[bytes] = set()
        if checked:
            counts = self._link.call(
                lambda client: _pipeline(client, lambda p: [p.exists(key) for key in checked]),
                check=lambda reply: _list_of(reply, len(checked), int),
            )
            if counts is None:
                counters.add(write_drops=len(ready))
                return
            present = {key for key, n in zip(checked, counts, strict=True) if n}
        send = []
        for job, rows in ready:
            if redis_key(job.digest) in present:
                known.stored(job.digest)
            else:
                send.append((job, encode(rows, digest=job.digest, layout=self._layout)))
        counters.add(chunks_present=len(ready) - len(send))
        if not send:
            return
        replies = self._link.call(
            lambda client: _pipeline(
                client, lambda p: [p.set(redis_key(job.digest), value, nx=not job.overwrite) for job, value in send]
            ),
            check=lambda reply: isinstance(reply, list) and len(reply) == len(send),
        )
        if replies is None:
            counters.add(write_drops=len(send))
            return
        written = [value for (_, value), ok in zip(send, replies, strict=True) if ok]
        counters.add(
            chunks_written=len(written),
            bytes_written=sum(map(len, written)),
            chunks_present=len(send) - len(written),  # SET NX lost to another process's write
        )
        for job, _ in send:
            known.stored(job.digest)

    def _rows(self, job: Job) -> torch.Tensor | None:
        layout = self._layout
        if job.provider is None:
            if job.ready is not None:
                job.ready.synchronize()
            return job.rows
        try:
            rows = job.provider(job.begin, job.begin + layout.chunk_tokens)
        except Exception:
            logger.exception("the remote tier's rows provider failed for tokens from %d", job.begin)
            return None
        if rows is None:
            return None
        if (
            not isinstance(rows, torch.Tensor)
            or tuple(rows.shape) != (layout.chunk_tokens, layout.width)
            or rows.dtype != layout.dtype
        ):
            logger.error(
                "the remote tier's rows provider gave %r for tokens from %d, expected a tensor [%d, %d] of %s",
                rows if not isinstance(rows, torch.Tensor) else f"{list(rows.shape)} {rows.dtype}",
                job.begin,
                layout.chunk_tokens,
                layout.width,
                layout.dtype,
            )
            return None
        return rows.detach().to("cpu").contiguous()


def _pipeline(client: Any, queue: Callable[[Any], object]) -> list[Any]:
    """Run the commands ``queue`` adds to a pipeline, in one round trip, no MULTI."""
    pipe = client.pipeline(transaction=False)
    queue(pipe)
    return list(pipe.execute())


def _list_of(reply: object, n: int, kind: type) -> bool:
    return isinstance(reply, list) and len(reply) == n and all(isinstance(r, kind) for r in reply)
