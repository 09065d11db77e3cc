"""What each layer of a model keeps in transformers' cache, read once from a forward pass, and
the caches built from and read into the cache's stores by that map.

    transformers' cache layer                    kept by prefixcache (see prefixcache/stores.py)
    DynamicLayer                                 full: the KV of every token
    DynamicSlidingWindowLayer (sliding, chunk)   window: the KV of a node's last window - 1 tokens
    LinearAttentionLayer (linear, SSM, conv)     states: a snapshot where a hit may end
    LinearAttentionAndFullAttentionLayer         states and full
    DummyLayer (shared KV, MLP-only layers)      nothing

Any other layer class makes the model refused: an indexed attention's indexer keys, a
quantized layer, and LinearAttentionAndSlidingWindowAttentionLayer, whose window and
state share one switch for recording every position.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import UnsupportedModelError
from ..kv import LayerKV, LayerSpec
from ..kv.state import StateLayout, StateSpec
from ..stores import LayerKinds
from .kvcache import (
    Parts,
    Role,
    empty_cache,
    fill_parts,
    layer_roles,
    new_layers,
    read_parts,
    record_window,
    state_tensors,
)

__all__ = ["ModelLayers"]


class ModelLayers:
    """The map from a model's cache layers to the cache's stores. Made by :meth:`read`."""

    def __init__(self, cache: Any, roles: list[Role], kinds: LayerKinds, names: list[tuple[int, int, str]]) -> None:
        self._template = cache
        """A cache after a forward pass: the classes and parameters of the layers to make."""
        self.roles = roles
        self.kinds = kinds
        self.names = names
        """``(layer, state, "conv" or "recurrent")`` of each of ``kinds.states.specs``."""

    @classmethod
    def read(cls, model: Any, cache: Any, n: int, name: str) -> ModelLayers:
        """What ``cache`` holds after a forward pass of ``n`` tokens, by kind; raises
        :class:`UnsupportedModelError` for a layer it cannot hold, or for a cache that holds nothing."""
        roles: list[Role] = []
        for i, role in enumerate(layer_roles(cache)):
            if isinstance(role, str):
                raise UnsupportedModelError(
                    f"model type {name!r}: layer {i} keeps its cache in a {role}, which prefixcache cannot hold "
                    "(only full, sliding-window or chunked attention and linear-attention or state-space layers)"
                )
            roles.append(role)
        full: list[LayerSpec] = []
        window: list[LayerSpec] = []
        for i, (layer, role) in enumerate(zip(cache.layers, roles, strict=True)):
            if not (role.full or role.window):
                continue
            keys, values = layer.keys, layer.values
            want = n if role.full else min(n, role.window - 1)
            if keys.dim() != 4 or keys.shape[2] != want or values.shape[2] != want or keys.shape[1] != values.shape[1]:
                raise UnsupportedModelError(
                    f"model type {name!r}: layer {i} keeps keys {list(keys.shape)} and values {list(values.shape)} "
                    f"for {n} tokens, not [1, kv_heads, {want}, head_dim]"
                )
            spec = LayerSpec(int(keys.shape[1]), int(keys.shape[3]), int(values.shape[3]))
            (full if role.full else window).append(spec)
        found = state_tensors(cache, roles)
        specs = [StateSpec(layer, s, kind, tuple(t.shape[1:]), t.dtype) for layer, s, kind, t in found]
        if not full and not window and not specs:
            raise UnsupportedModelError(f"model type {name!r}: its cache holds nothing to reuse")
        kinds = LayerKinds(
            tuple(full),
            tuple(window),
            max((role.window for role in roles), default=0),
            StateLayout(specs) if specs else None,
        )
        return cls(cache, roles, kinds, [(layer, s, kind) for layer, s, kind, _ in found])

    @property
    def plain(self) -> bool:
        return self.kinds.plain

    def kv_tensors(self, cache: Any) -> list[torch.Tensor]:
        """Every KV tensor of a cache: for checking dtype and device."""
        parts = read_parts(cache, self.roles)
        return [t for kv in (*parts.full, *parts.window) for t in kv]

    def parts(self, cache: Any) -> Parts:
        """What ``cache`` holds, by kind (not copied)."""
        return read_parts(cache, self.roles)

    def recording(self, cache: Any) -> Any:
        """``cache`` with its window layers keeping every position they compute."""
        record_window(cache, self.roles)
        return cache

    def filled(self, full: list[LayerKV], window: list[LayerKV], states: list[torch.Tensor], length: int) -> Any:
        """A new DynamicCache as the model's own would be after ``length`` positions holding these."""
        cache = empty_cache(new_layers(self._template))
        return fill_parts(cache, self.roles, Parts(full, window, states), length, self.names)

    def snapshot_rows(self, cache: Any) -> torch.Tensor:
        """The states of ``cache`` as one snapshot row per batch row, ``[batch, width]``."""
        layout = self.kinds.states
        assert layout is not None
        tensors = read_parts(cache, self.roles).states
        rows = torch.empty(tensors[0].shape[0], layout.width, dtype=layout.dtype, device=tensors[0].device)
        for r in range(rows.shape[0]):
            layout.join(tensors, r, rows[r])
        return rows

    def positions(self, cache: Any) -> int:
        """Positions ``cache`` spans (padded, counting all rows alike)."""
        for layer, role in zip(cache.layers, self.roles, strict=True):
            if role.full:
                return int(layer.keys.shape[2])
            if role.window:
                return int(layer.cumulative_length)
        for layer, role in zip(cache.layers, self.roles, strict=True):
            if role.states:
                return int(layer.cumulative_length_linear)
        return 0
