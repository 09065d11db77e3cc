"""An int8 pool for the host tier: about a quarter of float32's bytes per token.

Each token's K and V are stored per layer and per head as int8 values with one
float32 scale (the head's largest magnitude / 127), the symmetric absmax scheme
of LLM.int8 and KIVI's per-token keys. The scales sit in the same row as the
values, so one table and one ``index_select`` serve a read, as in
:class:`prefixcache.pool.KVPool`. Rounding changes the KV a little, so outputs
served from this tier may differ slightly from the model's: it is off unless a
cache is made with ``host_dtype=torch.int8``.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import torch

from .pool import KVPool, LayerKV, LayerSpec, _layer_specs

__all__ = ["QuantizedKVPool"]

_QMAX = 127.0


class QuantizedKVPool(KVPool):
    """A :class:`KVPool` of int8 rows with a float32 scale per token, layer, K or V, and head.

    Rows go in and out through :meth:`write_rows` and :meth:`read_rows` in float32
    (``dtype`` is the dtype rows are read back in). A row takes
    ``width + 4 * 2 * sum(kv_heads)`` bytes (rounded up to 4) instead of
    ``width * dtype.itemsize``.
    """

    def __init__(
        self,
        layers: Sequence[LayerSpec],
        budget: int | str,
        *,
        device: torch.device | str = "cpu",
        pin_memory: bool = False,
    ) -> None:
        specs = _layer_specs(layers)
        # Groups of columns sharing a scale: (first column, heads, head_dim), K then V per layer.
        self._groups: list[tuple[int, int, int]] = []
        col = 0
        for spec in specs:
            for dim in (spec.key_dim, spec.value_dim):
                self._groups.append((col, spec.kv_heads, dim))
                col += spec.kv_heads * dim
        self._n_scales = sum(heads for _, heads, _ in self._groups)
        self._data_cols = -(-col // 4) * 4  # scales start 4-byte aligned
        super().__init__(specs, budget, device=device, dtype=torch.float32, pin_memory=pin_memory)

    def _bytes_per_token(self) -> int:
        return self._data_cols + 4 * self._n_scales

    def _new_table(self, capacity: int) -> torch.Tensor:
        return torch.zeros(
            capacity, self._bytes_per_token(), device=self.device, dtype=torch.int8, pin_memory=self.pin_memory
        )

    @torch.no_grad()
    def write_rows(self, slots: array, rows: torch.Tensor) -> None:
        """Quantize ``rows`` (``[len(slots), width]``, any float dtype and device) into ``slots``."""
        if rows.shape != (len(slots), self.width):
            raise ValueError(f"rows: expected shape [{len(slots)}, {self.width}], got {list(rows.shape)}")
        if not slots:
            return
        n = len(slots)
        rows = rows.to(self.device, torch.float32)
        packed = torch.zeros(n, self._bytes_per_token(), device=self.device, dtype=torch.int8)
        scales = torch.empty(n, self._n_scales, device=self.device, dtype=torch.float32)
        s = 0
        for col, heads, dim in self._groups:
            block = rows[:, col : col + heads * dim].reshape(n, heads, dim)
            scale = block.abs().amax(dim=2).clamp_min(torch.finfo(torch.float32).tiny) / _QMAX
            q = torch.round(block / scale.unsqueeze(2)).clamp_(-_QMAX, _QMAX).to(torch.int8)
            packed[:, col : col + heads * dim] = q.reshape(n, heads * dim)
            scales[:, s : s + heads] = scale
            s += heads
        packed[:, self._data_cols :] = scales.view(torch.int8)
        self._table.index_copy_(0, self.index(slots), packed)

    @torch.no_grad()
    def read_rows(self, slots: array) -> torch.Tensor:
        """The rows of ``slots`` dequantized: ``[len(slots), width]`` float32 on the pool's device."""
        packed = self._table.index_select(0, self.index(slots))
        n = packed.shape[0]
        scales = packed[:, self._data_cols :].contiguous().view(torch.float32)
        out = torch.empty(n, self.width, device=self.device, dtype=torch.float32)
        s = 0
        for col, heads, dim in self._groups:
            q = packed[:, col : col + heads * dim].reshape(n, heads, dim).to(torch.float32)
            out[:, col : col + heads * dim] = (q * scales[:, s : s + heads].unsqueeze(2)).reshape(n, heads * dim)
            s += heads
        return out

    def gather(self, slots: array, *, copy: bool = True) -> list[LayerKV]:
        """The KV of ``slots`` dequantized, shaped as :meth:`KVPool.gather` gives it (always a copy)."""
        return self._split_rows(self.read_rows(slots))

    def write(self, slots: array, kv: Sequence[LayerKV], *, start: int = 0, row: int = 0) -> None:
        """Quantize and store KV given per layer, as :meth:`KVPool.write` takes it."""
        n = len(slots)
        parts = []
        for layer in kv:
            for tensor in (layer[0], layer[1]):
                part = tensor[row, :, start : start + n].transpose(0, 1)
                parts.append(part.reshape(n, -1))
        self.write_rows(slots, torch.cat(parts, dim=1) if parts else torch.empty(n, 0))
