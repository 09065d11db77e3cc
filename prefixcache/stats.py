"""Counters a user can read and log.

:class:`CacheStats` is the one list of fields: those marked as counters are kept,
cumulatively, in a :class:`Counters` made from that list; the others are read from
the tree and the pools when a snapshot is taken.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

__all__ = ["CacheStats", "Counters"]


def _counter() -> Any:
    return field(default=0, metadata={"counter": True})


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of a cache's counters, taken under its lock.

    Token counts are cumulative since the cache was made; sizes are as of now.
    """

    requests: int = _counter()
    """Lookups made (one per prompt)."""
    prompt_tokens: int = _counter()
    """Tokens in the prompts looked up."""
    hit_tokens: int = _counter()
    """Of those, tokens served from the cache (not recomputed): a row of a padded batch counts
    only what the whole batch reused (see :meth:`PrefixCache.reused`)."""
    inserted_tokens: int = _counter()
    """Tokens whose KV was stored."""
    evicted_tokens: int = _counter()
    """Tokens whose KV was dropped to make room (or by ``clear``/``resize``)."""
    passed_through: int = _counter()
    """Requests served by the model without reuse (options the cache cannot serve exactly)."""
    verified: int = _counter()
    """Requests served with reuse that were run again without the cache and compared (``wrap(verify=)``)."""
    mismatches: int = _counter()
    """Of those, the ones whose outputs differed beyond rounding."""
    cached_tokens: int = 0
    """Tokens cached on the device now."""
    pinned_tokens: int = 0
    """Of those, tokens pinned by requests in flight or by ``pin``."""
    capacity_tokens: int = 0
    """Tokens the pool holds when full."""
    bytes_used: int = 0
    """Bytes of the pools holding cached KV (and window rows and snapshots) now."""
    bytes_reserved: int = 0
    """Bytes the pools take on their device (never above the budget)."""
    nodes: int = 0
    """Nodes in the radix tree."""
    window_tokens: int = 0
    """Tokens whose sliding-window or chunked layers' KV is held now (see :mod:`prefixcache.stores`)."""
    snapshots: int = 0
    """Snapshots of recurrent state held now."""
    snapshot_capacity: int = 0
    """Snapshots the snapshot pool holds when full (0 for a model without recurrent layers)."""
    host_hit_tokens: int = _counter()
    """Of the hit tokens, those found in the host tier (copied back to the device)."""
    host_cached_tokens: int = 0
    """Tokens cached in the host tier now (``cached_tokens`` counts the device)."""
    host_capacity_tokens: int = 0
    """Tokens the host pool holds when full (0 without a host tier)."""
    host_bytes_used: int = 0
    """Bytes of the host pool holding cached KV now."""
    host_bytes_reserved: int = 0
    """Bytes the host pool takes (never above its budget)."""
    demoted_tokens: int = _counter()
    """Tokens whose KV moved from the device to the host tier."""
    promoted_tokens: int = _counter()
    """Tokens whose KV moved from the host tier back to the device."""
    bytes_to_host: int = _counter()
    """Bytes of KV copied to the host tier (in the device's dtype)."""
    bytes_to_device: int = _counter()
    """Bytes of KV copied back to the device (in the device's dtype)."""
    expired_tokens: int = _counter()
    """Tokens dropped because they were not used for ``ttl`` seconds."""
    user_pinned_tokens: int = 0
    """Tokens kept by ``PrefixCache.pin`` (also counted in ``pinned_tokens``)."""
    shared_waits: int = _counter()
    """Requests that waited for another request of this process computing the same prefix."""
    remote_hit_tokens: int = _counter()
    """Of the hit tokens, those fetched from the remote tier."""
    remote_bytes_fetched: int = 0
    """Bytes received from the remote tier."""
    remote_bytes_written: int = 0
    """Bytes the remote tier stored for this cache."""
    remote_errors: int = 0
    """Calls to the remote tier that failed or timed out (requests went on without it)."""
    remote_invalid_chunks: int = 0
    """Chunks found in the remote tier but refused: truncated, damaged, or of another layout."""
    remote_queue_drops: int = 0
    """Chunks not written to the remote tier: its queue was full, it failed, or it closed."""

    @property
    def hit_rate(self) -> float:
        """``hit_tokens / prompt_tokens`` (0.0 before any request)."""
        return self.hit_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def as_dict(self) -> dict[str, float | int]:
        """Every field and ``hit_rate`` as a plain dict, for logging."""
        out: dict[str, float | int] = asdict(self)
        out["hit_rate"] = self.hit_rate
        return out


COUNTER_FIELDS = tuple(f.name for f in fields(CacheStats) if f.metadata.get("counter"))


class Counters:
    """The cumulative counters of :class:`CacheStats`, all 0 at first (mutated under the cache's lock)."""

    __slots__ = COUNTER_FIELDS

    def __init__(self) -> None:
        for name in COUNTER_FIELDS:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        """Every counter by name."""
        return {name: getattr(self, name) for name in COUNTER_FIELDS}

    if TYPE_CHECKING:  # the attributes are the names in COUNTER_FIELDS, all ints

        def __getattr__(self, name: str) -> int: ...

        def __setattr__(self, name: str, value: int) -> None: ...
