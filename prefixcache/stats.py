"""Counters a user can read and log."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["CacheStats"]


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of a cache's counters, taken under its lock.

    Token counts are cumulative since the cache was made; sizes are as of now.
    """

    requests: int
    """Lookups made (one per prompt)."""
    prompt_tokens: int
    """Tokens in the prompts looked up."""
    hit_tokens: int
    """Of those, tokens found cached (not recomputed)."""
    inserted_tokens: int
    """Tokens whose KV was stored."""
    evicted_tokens: int
    """Tokens whose KV was dropped to make room (or by ``clear``/``resize``)."""
    passed_through: int
    """Requests served by the model without reuse (options the cache cannot serve exactly)."""
    cached_tokens: int
    """Tokens cached now."""
    pinned_tokens: int
    """Of those, tokens pinned by requests in flight."""
    capacity_tokens: int
    """Tokens the pool holds when full."""
    bytes_used: int
    """Bytes of the pool holding cached KV now."""
    bytes_reserved: int
    """Bytes the pool takes on its device (never above the budget)."""
    nodes: int
    """Nodes in the radix tree."""
    host_hit_tokens: int = 0
    """Of the hit tokens, those found in the host tier (copied back to the device)."""
    host_cached_tokens: int = 0
    """Tokens cached in the host tier now (``cached_tokens`` counts the device)."""
    host_capacity_tokens: int = 0
    """Tokens the host pool holds when full (0 without a host tier)."""
    host_bytes_used: int = 0
    """Bytes of the host pool holding cached KV now."""
    host_bytes_reserved: int = 0
    """Bytes the host pool takes (never above its budget)."""
    demoted_tokens: int = 0
    """Tokens whose KV moved from the device to the host tier."""
    promoted_tokens: int = 0
    """Tokens whose KV moved from the host tier back to the device."""
    bytes_to_host: int = 0
    """Bytes of KV copied to the host tier (in the device's dtype)."""
    bytes_to_device: int = 0
    """Bytes of KV copied back to the device (in the device's dtype)."""
    expired_tokens: int = 0
    """Tokens dropped because they were not used for ``ttl`` seconds."""
    user_pinned_tokens: int = 0
    """Tokens kept by ``PrefixCache.pin`` (also counted in ``pinned_tokens``)."""

    @property
    def hit_rate(self) -> float:
        """``hit_tokens / prompt_tokens`` (0.0 before any request)."""
        return self.hit_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def as_dict(self) -> dict[str, float | int]:
        """Every field and ``hit_rate`` as a plain dict, for logging."""
        out: dict[str, float | int] = asdict(self)
        out["hit_rate"] = self.hit_rate
        return out


class Counters:
    """The cumulative counters behind :class:`CacheStats` (mutated under the cache's lock)."""

    __slots__ = (
        "bytes_to_device",
        "bytes_to_host",
        "demoted_tokens",
        "evicted_tokens",
        "expired_tokens",
        "hit_tokens",
        "host_hit_tokens",
        "inserted_tokens",
        "passed_through",
        "promoted_tokens",
        "prompt_tokens",
        "requests",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.prompt_tokens = 0
        self.hit_tokens = 0
        self.inserted_tokens = 0
        self.evicted_tokens = 0
        self.passed_through = 0
        self.host_hit_tokens = 0
        self.demoted_tokens = 0
        self.promoted_tokens = 0
        self.bytes_to_host = 0
        self.bytes_to_device = 0
        self.expired_tokens = 0
