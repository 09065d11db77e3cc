"""Hugging Face integration: ``wrap(model)``, the ``CachedModel`` it returns, and the models
that can be served. The only package that imports transformers.

- :mod:`.model`: ``wrap`` and ``CachedModel``; :mod:`.serving`, what serving one model takes.
- :mod:`.request`: one request, in order: :mod:`.batch` (its input, checked once),
  :mod:`.passthrough` (when the cache steps aside, and the model run as it is),
  :mod:`.reuse` (the rows' hits and the cache handed to the model), the model run
  (:mod:`.segments` for recurrent layers), :mod:`.store` (what it leaves), :mod:`.verify`.
- :mod:`.support`: which models can be served exactly, and the probe; :mod:`.layers`,
  what each layer keeps; :mod:`.positions`, how the model numbers positions;
  :mod:`.regime`, a rotary embedding that depends on the length; :mod:`.weights`,
  whether the weights changed.
- :mod:`.kvcache`: ``DynamicCache`` to and from per-layer KV (every version-sensitive call).
- :mod:`.models`: built-in presets and ``load_model``.
"""

from .batch import left_pad
from .kvcache import CacheKeywords, cache_from_kv, kv_of, prompt_cache, returned_cache
from .model import CachedModel, PrefillResult, wrap
from .presets import PRESETS, load_model, transformers_version
from .support import vocab_size

__all__ = [
    "PRESETS",
    "CacheKeywords",
    "CachedModel",
    "PrefillResult",
    "cache_from_kv",
    "kv_of",
    "left_pad",
    "load_model",
    "prompt_cache",
    "returned_cache",
    "transformers_version",
    "vocab_size",
    "wrap",
]
