"""prefixcache: reuse the attention KV of prompt prefixes a model has already seen."""

from .cache import Hit, PrefixCache
from .config import CacheConfig, parse_budget
from .errors import PoolExhaustedError, PrefixCacheError, UnsupportedModelError, VerificationError
from .hf import CachedModel, PrefillResult, load_model, wrap
from .kv import KVPool, LayerSpec
from .stats import CacheStats
from .tree import RadixTree

__all__ = [
    "CacheConfig",
    "CacheStats",
    "CachedModel",
    "Hit",
    "KVPool",
    "LayerSpec",
    "PoolExhaustedError",
    "PrefillResult",
    "PrefixCache",
    "PrefixCacheError",
    "RadixTree",
    "UnsupportedModelError",
    "VerificationError",
    "load_model",
    "parse_budget",
    "wrap",
]
__version__ = "0.1.0"
