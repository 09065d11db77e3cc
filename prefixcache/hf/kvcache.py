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
from transformers import DynamicCache, GenerationMixin, cache_utils
from transformers.cache_utils import DynamicLayer
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from ..kv.layout import LayerKV

__all__ = [
    "CacheBuilder",
    "CacheKeywords",
    "Parts",
    "Role",
    "cache_from_kv",
    "cache_layers",
    "empty_cache",
    "expand_rows",
    "fill_parts",
    "is_dynamic_cache",
    "kv_of",
    "layer_roles",
    "model_cache",
    "new_layers",
    "prompt_cache",
    "read_parts",
    "record_window",
    "returned_cache",
    "rope_types",
    "state_tensors",
]

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
        self._marks: tuple[str, ...] = ()
        if self._direct:
            self._direct = self._same_as_update(template)

    def _same_as_update(self, template: DynamicCache) -> bool:
        keys = torch.zeros(1, 1, 2, 1)
        template.update(keys, keys.clone(), 0)
        # What the layer's first update records beside its tensors (its device, in some
        # releases its dtype too): the direct way sets the same, or is not used.
        marks = set(vars(template.layers[0])) - {"keys", "values", "is_initialized"}
        if not marks <= {"device", "dtype"}:
            return False
        self._marks = tuple(sorted(marks))
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
                for mark in self._marks:
                    setattr(layer, mark, getattr(keys, mark))
                layer.keys, layer.values = keys, values
                layer.is_initialized = True
            elif type(layer) is DynamicLayer:
                # update() would concatenate onto an empty tensor, a full copy of the prefix.
                cache.update(keys[:, :, :0], values[:, :, :0], i)
                layer.keys, layer.values = keys, values
            else:
                cache.update(keys, values, i)
        return cache


def rope_types() -> frozenset[str]:
    """The ``rope_type`` names this transformers release initialises rotary embeddings for."""
    return frozenset(ROPE_INIT_FUNCTIONS)


def model_cache(model: Any) -> DynamicCache:
    """A new, empty DynamicCache laid out for ``model`` (one layer object per layer, of the
    kind its config names: full, sliding window, linear attention, ...)."""
    return DynamicCache(config=model.config)


def is_dynamic_cache(cache: Any) -> bool:
    """Whether ``cache`` is a DynamicCache (the only cache class the cache reads and builds)."""
    return isinstance(cache, DynamicCache)


def prompt_cache(model: Any, input_ids: torch.Tensor) -> DynamicCache:
    """The KV of ``input_ids`` in a DynamicCache, by one forward pass: the prompt-reuse
    recipe of the transformers documentation (copy it before each ``generate``)."""
    keywords = CacheKeywords.of(model)
    with torch.no_grad():
        out = model(input_ids=input_ids, use_cache=True, **keywords.to_forward(model_cache(model)))
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


# -- caches of more than full attention ------------------------------------------------------


class Role(NamedTuple):
    """What one layer of a model keeps in its cache."""

    full: bool
    """The KV of every token (full attention, or a hybrid layer's attention part)."""
    window: int
    """The KV of the last ``window - 1`` tokens (a sliding window or an attention chunk); 0: none."""
    states: int
    """Convolution and recurrent state pairs (linear attention, state space, short convolution); 0: none."""


def _cache_class(name: str) -> type | None:
    return getattr(cache_utils, name, None)


def layer_roles(cache: Any) -> list[Role | str]:
    """Each layer of a DynamicCache as a :class:`Role`, or the name of its class where the cache
    cannot hold what it keeps (an indexed attention's indexer keys, a quantized layer's, or a
    sliding window sharing one object with a recurrent state: recording the window's every
    position would record the state's history too)."""
    known: dict[Any, Any] = {
        DynamicLayer: lambda layer: Role(True, 0, 0),
        _cache_class("DynamicSlidingWindowLayer"): _window_role,
        _cache_class("LinearAttentionLayer"): lambda layer: _state_role(layer, full=False),
        _cache_class("LinearAttentionAndFullAttentionLayer"): lambda layer: _state_role(layer, full=True),
        _cache_class("DummyLayer"): lambda layer: Role(False, 0, 0),
    }
    known.pop(None, None)  # classes this transformers release does not have
    return [known[type(layer)](layer) if type(layer) in known else type(layer).__name__ for layer in cache.layers]


_UPGRADE = "as this transformers release keeps it (transformers 5.25 keeps it in a form prefixcache holds)"


def _window_role(layer: Any) -> Role | str:
    # A window layer of an older release drops what falls out of its window as it computes,
    # so the positions a request computes cannot all be stored.
    if not hasattr(layer, "record_past"):
        return f"{type(layer).__name__} that cannot record the positions it drops, {_UPGRADE}"
    return Role(False, int(layer.sliding_window), 0)


def _state_role(layer: Any, *, full: bool) -> Role | str:
    # A linear-attention layer of an older release keeps its states otherwise (5.24 counts
    # no cumulative length; earlier ones keep one state). A hybrid layer passes its
    # arguments on to the linear-attention layer's lazy_initialization.
    linear: Any = _cache_class("LinearAttentionLayer")
    takes = inspect.signature(linear.lazy_initialization).parameters
    held = all(hasattr(layer, name) for name in ("number_of_states", "has_previous_state", "cumulative_length_linear"))
    if not held or "state_idx" not in takes or "conv_kernel_size" not in takes:
        return f"{type(layer).__name__} set up otherwise than prefixcache builds one, {_UPGRADE}"
    return Role(full, 0, int(layer.number_of_states))


class Parts(NamedTuple):
    """What a cache holds, by kind, each in the order of the model's layers."""

    full: list[LayerKV]
    """The KV of each layer with a full part, ``[batch, kv_heads, positions, head_dim]``."""
    window: list[LayerKV]
    """The KV each window layer holds (its last ``window - 1`` positions, or every position
    while it records them), likewise."""
    states: list[torch.Tensor]
    """Each state tensor, ``[batch, *shape]``, in the order of :func:`state_tensors`."""


def state_tensors(cache: Any, roles: list[Role]) -> list[tuple[int, int, str, torch.Tensor]]:
    """``(layer, state, "conv" or "recurrent", tensor)`` for every state a forward pass left in
    ``cache``, layer by layer, conv before recurrent."""
    out = []
    for i, role in enumerate(roles):
        layer = cache.layers[i]
        for s in range(role.states):
            for kind, held in (("conv", layer.conv_states), ("recurrent", layer.recurrent_states)):
                tensor = held.get(s)
                if tensor is not None:
                    out.append((i, s, kind, tensor))
    return out


def read_parts(cache: Any, roles: list[Role]) -> Parts:
    """The tensors of ``cache`` by kind (not copied)."""
    full, window = [], []
    for layer, role in zip(cache.layers, roles, strict=True):
        if role.full:
            full.append((layer.keys, layer.values))
        elif role.window:
            window.append((layer.keys, layer.values))
    return Parts(full, window, [t for *_, t in state_tensors(cache, roles)])


def record_window(cache: Any, roles: list[Role]) -> None:
    """Make the window layers of ``cache`` keep every position they compute, not their last
    ``window - 1`` (what they give the attention is the same), so that they can be stored."""
    for layer, role in zip(cache.layers, roles, strict=True):
        if role.window:
            layer.record_past = True


def new_layers(cache: Any) -> list[Any]:
    """Fresh layers of the classes and parameters of ``cache``'s (a model may add layers to a
    cache beyond those ``DynamicCache(config=...)`` makes)."""
    out = []
    for layer in cache.layers:
        kwargs: dict[str, Any] = {}
        if hasattr(layer, "sliding_window"):
            kwargs["sliding_window"] = layer.sliding_window
        if hasattr(layer, "number_of_states"):
            kwargs["number_of_states"] = layer.number_of_states
        out.append(type(layer)(**kwargs))
    return out


def empty_cache(layers: list[Any]) -> DynamicCache:
    """A DynamicCache of ``layers`` (from :func:`new_layers`)."""
    cache = DynamicCache()
    cache.layers[:] = layers
    return cache


def fill_parts(cache: Any, roles: list[Role], parts: Parts, length: int, specs: list[tuple[int, int, str]]) -> Any:
    """Set up ``cache`` (new, from :func:`empty_cache`) as transformers' own cache would
    be after ``length`` positions: full layers hold ``parts.full`` (``length`` positions),
    window layers ``parts.window`` (the last positions, recording what follows), state
    layers ``parts.states`` (``specs[i]`` names ``parts.states[i]``: layer, state and
    ``"conv"`` or ``"recurrent"``). KV is taken as it is (the model replaces what it
    extends); states are copied into the layers' own tensors (the model writes into them)."""
    states = dict(zip(specs, parts.states, strict=True))
    fi = wi = 0
    for i, (layer, role) in enumerate(zip(cache.layers, roles, strict=True)):
        if role.states:
            device = None
            for s in range(role.states):
                conv, recurrent = states.get((i, s, "conv")), states.get((i, s, "recurrent"))
                if conv is not None:
                    layer.lazy_initialization(conv_states=conv, state_idx=s, conv_kernel_size=conv.shape[-1])
                    layer.conv_states[s].copy_(conv)
                    device = conv.device
                if recurrent is not None:
                    layer.lazy_initialization(recurrent_states=recurrent, state_idx=s)
                    layer.recurrent_states[s].copy_(recurrent)
                    device = device or recurrent.device
                layer.has_previous_state[s] = length > 0
            layer.cumulative_length_linear = torch.tensor(length, dtype=torch.long, device=device)
        if role.full:
            keys, values = parts.full[fi]
            fi += 1
            layer.lazy_initialization(keys[:, :, :0], values[:, :, :0])
            layer.keys, layer.values = keys, values
        elif role.window:
            keys, values = parts.window[wi]
            wi += 1
            layer.lazy_initialization(keys[:, :, :0], values[:, :, :0])
            layer.keys, layer.values = keys, values
            layer.cumulative_length = length
            layer.record_past = True
    return cache


def expand_rows(cache: Any, n: int) -> Any:
    """``cache`` with each batch row repeated ``n`` times, in place (row ``r`` becomes rows
    ``r * n`` to ``r * n + n - 1``), as generate expands its inputs for several sequences per
    prompt. The KV of a one-row cache becomes a view (the model's first update concatenates
    it into a new tensor: no copy of ours); states, which the model writes into, are copied."""
    for layer in cache.layers:
        keys = getattr(layer, "keys", None)
        if isinstance(keys, torch.Tensor) and keys.dim() == 4:
            if keys.shape[0] == 1:
                layer.keys = keys.expand(n, -1, -1, -1)
                layer.values = layer.values.expand(n, -1, -1, -1)
            else:
                layer.keys = keys.repeat_interleave(n, dim=0)
                layer.values = layer.values.repeat_interleave(n, dim=0)
        for held in (getattr(layer, "conv_states", None), getattr(layer, "recurrent_states", None)):
            if held is None:
                continue
            for state, tensor in held.items():
                if tensor is not None:
                    held[state] = tensor.repeat_interleave(n, dim=0)
    return cache
