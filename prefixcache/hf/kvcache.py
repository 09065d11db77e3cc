"""transformers' ``DynamicCache`` and per-layer KV, both ways, and the names a model takes
and returns its cache by: every call that depends on the transformers version is here.

A cache is built from tensors without copying them (the model's first update
concatenates them into new tensors, so views of the pool are only read), and its
tensors are read back as ``layers[i].keys`` / ``.values``.

transformers 5.25 renamed ``past_key_values`` to ``cache`` (in ``forward``, in
``generate`` and in the outputs) and warns about the old name; earlier releases know
only the old one. :class:`CacheKeywords` decides which name to use once per model.
"""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

import torch
from transformers import DynamicCache, GenerationMixin
from transformers.cache_utils import DynamicLayer

from ..kv.layout import LayerKV

__all__ = ["CacheBuilder", "CacheKeywords", "cache_from_kv", "cache_layers", "kv_of", "prompt_cache", "returned_cache"]

_NEW, _OLD = "cache", "past_key_values"


class CacheKeywords(NamedTuple):
    """The keyword a model's ``forward`` and this transformers release's ``generate`` take a
    cache by: ``"cache"`` where they know it (transformers 5.25 on), else ``"past_key_values"``."""

    forward: str
    generate: str

    @classmethod
    def of(cls, model: Any) -> CacheKeywords:
        """Read once from ``model.forward``'s signature and from ``GenerationMixin``'s (a model of
        remote code may keep the old name in ``forward`` while ``generate`` takes the new one)."""
        forward = _NEW if _NEW in inspect.signature(model.forward).parameters else _OLD
        return cls(forward, GENERATE_KEYWORD)

    def to_forward(self, cache: Any) -> dict[str, Any]:
        """``{keyword: cache}`` for ``model(...)``."""
        return {self.forward: cache}

    def to_generate(self, cache: Any) -> dict[str, Any]:
        """``{keyword: cache}`` for ``model.generate(...)``."""
        return {self.generate: cache}


GENERATE_KEYWORD = _NEW if _NEW in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters else _OLD
"""The keyword this transformers release's ``generate`` takes a cache by."""

CALLER_CACHE_KEYWORDS = (_NEW, _OLD)
"""Either name a caller may hand ``generate`` a cache of their own by."""


def returned_cache(output: Any) -> Any:
    """The cache a forward pass returned (``output.cache``, or ``output.past_key_values`` on
    releases and models that still use that name), or None; never through a deprecated alias."""
    fields = getattr(type(output), "__dataclass_fields__", None) or {}
    for name in (_NEW, _OLD):
        if name in fields:
            return getattr(output, name)
    return None


class CacheBuilder:
    """Makes DynamicCaches for one model's config, empty or holding given KV.

    ``DynamicCache(config=...)`` reads the config's layer types on every call (about a
    third of a millisecond for an 8-layer model). When that gives plain full-attention
    layers, this builder makes the same cache directly: a ``DynamicCache`` of fresh
    ``DynamicLayer``\\ s set up as their first ``update`` would set them, which it checks
    once against a real update. Otherwise it builds each cache the documented way.
    """

    def __init__(self, config: Any) -> None:
        self.config = config
        template = DynamicCache(config=config)
        self._n_layers = len(template.layers)
        self._direct = self._n_layers > 0 and all(type(layer) is DynamicLayer for layer in template.layers)
        if self._direct:
            self._direct = self._same_as_update(template)

    def _same_as_update(self, template: DynamicCache) -> bool:
        keys = torch.zeros(1, 1, 2, 1)
        template.update(keys, keys.clone(), 0)
        direct = self._fill(self.empty(), [(keys, keys.clone())] * self._n_layers)
        return set(vars(direct.layers[0])) == set(vars(template.layers[0])) and direct.get_seq_length() == 2

    def empty(self) -> DynamicCache:
        """A cache with no positions yet."""
        if not self._direct:
            return DynamicCache(config=self.config)
        cache = DynamicCache()
        cache.layers.extend(DynamicLayer() for _ in range(self._n_layers))
        return cache

    def filled(self, layers: list[LayerKV]) -> DynamicCache:
        """A cache holding ``layers`` (per layer ``(keys, values)``, ``[batch, kv_heads, n, head_dim]``),
        not copied."""
        cache = self._fill(self.empty(), layers)
        # The direct way was checked against a real update once, when the builder was made.
        if not self._direct and cache.get_seq_length() != layers[0][0].shape[2]:
            raise RuntimeError("prefixcache: a DynamicCache did not take the prefix KV; please report this")
        return cache

    def _fill(self, cache: DynamicCache, layers: list[LayerKV]) -> DynamicCache:
        for i, (keys, values) in enumerate(layers):
            layer: Any = cache.layers[i]
            if self._direct:
                layer.dtype, layer.device = keys.dtype, keys.device
                layer.keys, layer.values = keys, values
                layer.is_initialized = True
            elif type(layer) is DynamicLayer:
                # update() would concatenate onto an empty tensor, a full copy of the prefix.
                cache.update(keys[:, :, :0], values[:, :, :0], i)
                layer.keys, layer.values = keys, values
            else:
                cache.update(keys, values, i)
        return cache


def prompt_cache(model: Any, input_ids: torch.Tensor) -> DynamicCache:
    """The KV of ``input_ids`` in a DynamicCache, by one forward pass: the prompt-reuse
    recipe of the transformers documentation (copy it before each ``generate``)."""
    keywords = CacheKeywords.of(model)
    with torch.no_grad():
        out = model(input_ids=input_ids, use_cache=True, **keywords.to_forward(DynamicCache(config=model.config)))
    return returned_cache(out)


def cache_from_kv(model: Any, layers: list[LayerKV]) -> DynamicCache:
    """A DynamicCache for ``model`` holding ``layers`` (per layer ``(keys, values)``), not copied."""
    return CacheBuilder(model.config).filled(layers)


def kv_of(cache: Any) -> list[LayerKV]:
    """The per-layer ``(keys, values)`` of a plain DynamicCache; ``ValueError`` for any other cache."""
    layers = cache_layers(cache)
    if layers is None:
        raise ValueError(f"cache: expected a DynamicCache of key/value layers, got {type(cache).__name__}")
    return layers


def cache_layers(cache: Any, *, strict: bool = False) -> list[LayerKV] | None:
    """The per-layer (keys, values) of a plain DynamicCache, or None for any other cache.

    ``strict`` also refuses layers of any class but the plain full-attention one.
    """
    if not isinstance(cache, DynamicCache):
        return None
    out = []
    for layer in cache.layers:
        if strict and type(layer) is not DynamicLayer:
            return None
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor):
            return None
        out.append((keys, values))
    return out or None
