"""prefixcache: reuse the attention KV of prompt prefixes a model has already seen."""

from .budget import parse_budget
from .cache import Hit, PrefixCache
from .errors import PoolExhaustedError, PrefixCacheError, UnsupportedModelError
from .hf import CachedModel, PrefillResult, load_model, wrap
from .pool import KVPool, LayerSpec
from .radix import RadixTree
from .stats import CacheStats

__all__ = [
    "CachedModel",
    "CacheStats",
    "Hit",
    "KVPool",
    "LayerSpec",
    "PoolExhaustedError",
    "PrefillResult",
    "PrefixCache",
    "PrefixCacheError",
    "RadixTree",
    "UnsupportedModelError",
    "load_model",
    "parse_budget",
    "wrap",
]
__version__ = "0.1.0"
