"""Hugging Face integration: ``wrap(model)``, the ``CachedModel`` it returns, and the models
that can be served. The only package that imports transformers.

- :mod:`.model`: ``wrap`` and ``CachedModel``, a request's path through the cache.
- :mod:`.batch`: a request's input, checked once; when the cache steps aside.
- :mod:`.support`: which models can be served exactly, and the probe.
- :mod:`.regime`: the steps a rotary embedding that depends on the length adds to a request.
- :mod:`.verify`: ``verify=``, a seeded fraction of requests run again without the cache.
- :mod:`.kvcache`: ``DynamicCache`` to and from per-layer KV (every version-sensitive call).
- :mod:`.models`: built-in presets and ``load_model``.
"""

from .kvcache import CacheKeywords, cache_from_kv, kv_of, prompt_cache, returned_cache
from .model import CachedModel, PrefillResult, wrap
from .models import PRESETS, load_model, transformers_version
from .support import vocab_size

__all__ = [
    "PRESETS",
    "CacheKeywords",
    "CachedModel",
    "PrefillResult",
    "cache_from_kv",
    "kv_of",
    "load_model",
    "prompt_cache",
    "returned_cache",
    "transformers_version",
    "vocab_size",
    "wrap",
]
