"""The shape of one token's cached keys and values, and how they sit in a pool row.

A pool row holds one token's K and V of every layer side by side; for each layer
its K and its V are a block of columns (the layer's K slab and V slab):

    row s:  | K layer 0 | V layer 0 | K layer 1 | V layer 1 | ... |
              H0 * Dk0    H0 * Dv0    H1 * Dk1    H1 * Dv1

so a token costs ``2 x layers x kv_heads x head_dim x dtype size`` bytes when every
layer has the same shape, and a read of n tokens is one slice or one
``index_select`` whatever the number of layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

__all__ = ["KVLayout", "LayerKV", "LayerSpec", "check_kv", "same_device"]

LayerKV = tuple[torch.Tensor, torch.Tensor]
"""One layer's ``(key_states, value_states)``, each ``[batch, kv_heads, seq, head_dim]``."""


class LayerSpec(NamedTuple):
    """The shape of one layer's cached keys and values for one token."""

    kv_heads: int
    key_dim: int
    value_dim: int

    @property
    def width(self) -> int:
        """Elements one token takes in this layer, keys and values together."""
        return self.kv_heads * (self.key_dim + self.value_dim)


class KVLayout:
    """Where each layer's K and V sit in a row of ``width`` elements.

    Raises ``TypeError``/``ValueError`` naming ``layers`` (or ``layers[i]``) for
    anything but a non-empty sequence of three positive ints each (``empty=True``
    allows none: a model whose layers keep no KV of this kind, rows of width 0).

    >>> layout = KVLayout([(2, 4, 4), (1, 8, 8)])
    >>> layout.width, layout.blocks
    (32, ((0, 8, 16), (16, 24, 32)))
    """

    __slots__ = ("blocks", "layers", "uniform", "width")

    def __init__(self, layers: object, *, empty: bool = False) -> None:
        self.layers: tuple[LayerSpec, ...] = _layer_specs(layers, empty)
        blocks = []
        col = 0
        for spec in self.layers:
            kstart = col
            vstart = kstart + spec.kv_heads * spec.key_dim
            col = vstart + spec.kv_heads * spec.value_dim
            blocks.append((kstart, vstart, col))
        self.blocks: tuple[tuple[int, int, int], ...] = tuple(blocks)
        """Per layer (first K column, first V column, end of V)."""
        self.width = col
        """Elements in a row (0 for a model whose layers keep no KV per token of this kind)."""
        first = self.layers[0] if self.layers else None
        self.uniform = first is not None and all(s == first for s in self.layers) and first.key_dim == first.value_dim
        """Every layer's K and V have one shape: a row is ``[2 * layers, kv_heads, head_dim]``."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KVLayout) and other.layers == self.layers

    def __hash__(self) -> int:
        return hash(self.layers)

    def __repr__(self) -> str:
        return f"KVLayout({list(self.layers)})"

    def split(self, rows: torch.Tensor) -> list[LayerKV]:
        """Per-layer ``(keys, values)`` views of ``rows`` (``[n, width]``), each
        ``[1, kv_heads, n, head_dim]``. O(layers) views, no copy."""
        n = rows.shape[0]
        if self.uniform:
            spec = self.layers[0]
            parts = rows.view(n, 2 * len(self.layers), spec.kv_heads, spec.key_dim).permute(1, 2, 0, 3)
            return self.pair(parts.unsqueeze(1).unbind(0))
        out: list[LayerKV] = []
        for spec, (k0, v0, end) in zip(self.layers, self.blocks, strict=True):
            keys = rows[:, k0:v0].view(n, spec.kv_heads, spec.key_dim).transpose(0, 1).unsqueeze(0)
            values = rows[:, v0:end].view(n, spec.kv_heads, spec.value_dim).transpose(0, 1).unsqueeze(0)
            out.append((keys, values))
        return out

    def stacked(self, table: torch.Tensor) -> torch.Tensor | None:
        """For a uniform layout, ``table`` (``[capacity, width]``) seen as
        ``[2 * layers, 1, kv_heads, capacity, head_dim]`` (K and V of each layer in turn):
        a run of slots is then one slice along dim 3. None when the layers differ."""
        if not self.uniform:
            return None
        spec = self.layers[0]
        view = table.view(table.shape[0], 2 * len(self.layers), spec.kv_heads, spec.key_dim)
        return view.permute(1, 2, 0, 3).unsqueeze(1)

    @staticmethod
    def pair(parts: Sequence[torch.Tensor]) -> list[LayerKV]:
        """``[K0, V0, K1, V1, ...]`` as ``[(K0, V0), (K1, V1), ...]``."""
        return list(zip(parts[0::2], parts[1::2], strict=True))

    def rows_of(self, kv: Sequence[LayerKV], start: int, n: int, row: int, out: torch.Tensor) -> None:
        """Write the KV of positions ``start .. start + n - 1`` of batch row ``row`` of ``kv``
        (per layer ``[batch, kv_heads, seq, head_dim]``) into ``out`` (``[n, width]``)."""
        for spec, (k0, v0, end), layer in zip(self.layers, self.blocks, kv, strict=True):
            keys, values = layer[0][row, :, start : start + n], layer[1][row, :, start : start + n]
            out[:, k0:v0].view(n, spec.kv_heads, spec.key_dim).copy_(keys.transpose(0, 1))
            out[:, v0:end].view(n, spec.kv_heads, spec.value_dim).copy_(values.transpose(0, 1))


def _layer_specs(layers: object, empty: bool = False) -> tuple[LayerSpec, ...]:
    """``layers`` as LayerSpecs, each three positive ints, or a clear error naming the bad one;
    none only with ``empty``."""
    if isinstance(layers, KVLayout):
        return layers.layers
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise TypeError(f"layers: expected a sequence of (kv_heads, key_dim, value_dim), got {layers!r}")
    if not layers and not empty:
        raise ValueError("layers: expected at least one LayerSpec, got none")
    specs = []
    for i, spec in enumerate(layers):
        if isinstance(spec, (str, bytes)) or not isinstance(spec, Sequence):
            raise TypeError(f"layers[{i}]: expected (kv_heads, key_dim, value_dim), got {spec!r}")
        if len(spec) != 3:
            raise ValueError(f"layers[{i}]: expected three sizes (kv_heads, key_dim, value_dim), got {spec!r}")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in spec):
            raise ValueError(f"layers[{i}]: every size must be a positive int, got {tuple(spec)!r}")
        specs.append(LayerSpec(*spec))
    return tuple(specs)


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether ``a`` and ``b`` are one device (``"cuda"`` names the current one: any index matches)."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def check_kv(kv: Any, layers: Sequence[LayerSpec], device: torch.device, *, positions: int, row: int) -> None:
    """Raise unless ``kv`` is one ``(key_states, value_states)`` pair per layer of ``layers``,
    each ``[batch > row, kv_heads, >= positions, head_dim]``, floating point and on ``device``.

    ``TypeError`` for the wrong kinds of objects or dtypes, ``ValueError`` for wrong
    shapes or another device; each names the offending layer. O(layers).
    """
    if isinstance(kv, (str, bytes)) or not (hasattr(kv, "__len__") and hasattr(kv, "__getitem__")):
        raise TypeError(f"kv: expected one (key_states, value_states) pair per layer, got {type(kv).__name__}")
    if len(kv) != len(layers):
        raise ValueError(f"kv: expected {len(layers)} layers, got {len(kv)}")
    for i, spec in enumerate(layers):
        layer = kv[i]
        if type(layer) is not tuple and (
            isinstance(layer, (str, bytes)) or not (hasattr(layer, "__len__") and hasattr(layer, "__getitem__"))
        ):
            raise TypeError(f"kv[{i}]: expected a (key_states, value_states) pair, got {type(layer).__name__}")
        if len(layer) < 2:
            raise ValueError(f"kv[{i}]: expected (key_states, value_states), got {len(layer)} items")
        for part, tensor, dim in (("key", layer[0], spec.key_dim), ("value", layer[1], spec.value_dim)):
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"kv[{i}] {part}_states: expected a tensor, got {type(tensor).__name__}")
            shape = tensor.shape
            if (
                len(shape) != 4
                or shape[1] != spec.kv_heads
                or shape[3] != dim
                or shape[2] < positions
                or shape[0] <= row
            ):
                raise ValueError(
                    f"kv[{i}] {part}_states: expected [batch > {row}, {spec.kv_heads}, >= {positions}, {dim}], "
                    f"got {list(shape)}"
                )
            if not tensor.dtype.is_floating_point:
                raise TypeError(f"kv[{i}] {part}_states: expected a floating-point tensor, got {tensor.dtype}")
            where = tensor.device
            if where != device and not same_device(where, device):
                raise ValueError(f"kv[{i}] {part}_states: on {where}, but the pool is on {device}; move it there first")
