"""prefixcache: reuse the attention KV of prompt prefixes a model has already seen."""

from .budget import parse_budget
from .cache import Hit, PrefixCache
from .errors import PoolExhaustedError, PrefixCacheError, UnsupportedModelError
from .pool import KVPool, LayerSpec
from .radix import RadixTree
from .stats import CacheStats

__all__ = [
    "CacheStats",
    "Hit",
    "KVPool",
    "LayerSpec",
    "PoolExhaustedError",
    "PrefixCache",
    "PrefixCacheError",
    "RadixTree",
    "UnsupportedModelError",
    "parse_budget",
]
__version__ = "0.1.0"
