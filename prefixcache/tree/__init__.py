"""The radix tree: token runs to pool slots, pins, tiers, and the eviction order."""

from .node import (
    DEVICE,
    HOST,
    EvictResult,
    InsertResult,
    MatchResult,
    Node,
    Retired,
    Root,
    Tier,
    as_run,
    common_length,
    namespace_key,
    path_length,
    window_slots,
    window_starts,
)
from .order import EvictionOrder, is_candidate
from .radix import ALL, RadixTree

__all__ = [
    "ALL",
    "DEVICE",
    "HOST",
    "EvictResult",
    "EvictionOrder",
    "InsertResult",
    "MatchResult",
    "Node",
    "RadixTree",
    "Retired",
    "Root",
    "Tier",
    "as_run",
    "common_length",
    "is_candidate",
    "namespace_key",
    "path_length",
    "window_slots",
    "window_starts",
]
