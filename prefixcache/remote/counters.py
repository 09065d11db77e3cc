"""The remote tier's counters, and the snapshot users read."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, fields

__all__ = ["RemoteStats"]


@dataclass(frozen=True)
class RemoteStats:
    """A snapshot of a :class:`~prefixcache.remote.RemoteTier`'s counters, cumulative since it was made."""

    fetches: int = 0
    """Calls to ``fetch`` that had at least one complete chunk past what was held locally."""
    hit_tokens: int = 0
    """Tokens ``fetch`` returned past what the caller held (the remote tier's hits)."""
    hit_chunks: int = 0
    """Chunks ``fetch`` returned."""
    missing_chunks: int = 0
    """Fetches whose run ended at a chunk not in Redis (never stored, or evicted by Redis)."""
    invalid_chunks: int = 0
    """Values found but refused: truncated, damaged, of another layout or under another key."""
    bytes_fetched: int = 0
    """Bytes of values received from Redis."""
    bytes_written: int = 0
    """Bytes of values Redis stored for this tier."""
    chunks_written: int = 0
    """Chunks Redis stored for this tier."""
    chunks_present: int = 0
    """Chunks the writer did not send because Redis already had them (from another process)."""
    errors: int = 0
    """Calls to Redis that failed: refused, timed out, dropped, an error reply (out of memory, auth)."""
    timeouts: int = 0
    """Of those, the calls that timed out."""
    skipped: int = 0
    """Fetches and write batches not sent because the tier was backing off after an error."""
    queue_drops: int = 0
    """Chunks ``submit`` did not queue: the queue was full, or the tier was closed."""
    write_drops: int = 0
    """Queued chunks not written: Redis failed or was backed off, their rows were gone, or ``close`` ran out of
    time."""
    queued: int = 0
    """Chunks waiting in the queue now."""

    def as_dict(self) -> dict[str, int]:
        """Every field as a plain dict, for logging."""
        return asdict(self)


class RemoteCounters:
    """The mutable counters behind :class:`RemoteStats`, safe to bump from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys((f.name for f in fields(RemoteStats) if f.name != "queued"), 0)

    def add(self, **counts: int) -> None:
        """Add each count to its counter (a KeyError names a counter that does not exist)."""
        with self._lock:
            for name, n in counts.items():
                if name not in self._values:
                    raise KeyError(name)
                self._values[name] += n

    def snapshot(self, queued: int) -> RemoteStats:
        with self._lock:
            return RemoteStats(queued=queued, **self._values)
