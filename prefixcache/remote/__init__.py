"""A KV tier in Redis, below the device and host pools, shared by every process that names the same server.

Importing this package does not import redis-py; making a :class:`RemoteTier` does.
"""

from .chunks import DEFAULT_CHUNK_TOKENS, ChunkLayout
from .codec import ChunkError
from .counters import RemoteStats
from .reader import RemoteRows
from .tier import RemoteTier
from .url import RedisURL, parse_redis_url
from .writer import RowsProvider

__all__ = [
    "DEFAULT_CHUNK_TOKENS",
    "ChunkError",
    "ChunkLayout",
    "RedisURL",
    "RemoteRows",
    "RemoteStats",
    "RemoteTier",
    "RowsProvider",
    "parse_redis_url",
]
