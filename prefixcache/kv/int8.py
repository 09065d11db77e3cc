"""The int8 codec of a host tier: about a quarter of float32's bytes per token.

Each token's K and V are stored per layer and per head as int8 values with one
float32 scale (the head's largest magnitude / 127), the symmetric absmax scheme of
LLM.int8 and KIVI's per-token keys. The scales sit in the same row as the values,
so one table and one ``index_select`` serve a read. Rounding changes the KV a
little, so outputs served from this tier may differ slightly from the model's: it
is off unless a cache is made with ``host_dtype=torch.int8``.

A packed row (``columns`` bytes):

    | int8 values, in the layout's column order | pad to 4 | float32 scales, one per (layer, K or V, head) |
      width bytes                                            4 x 2 x sum(kv_heads) bytes
"""

from __future__ import annotations

import torch

from .layout import KVLayout

__all__ = ["Int8Codec"]

_QMAX = 127.0


class Int8Codec:
    """Packs ``[n, width]`` float rows of ``layout`` into ``[n, columns]`` int8 rows and back.

    >>> codec = Int8Codec(KVLayout([(2, 4, 4)]))
    >>> codec.columns   # 16 values + 4 scales of 4 bytes
    32
    >>> rows = torch.randn(3, 16)
    >>> back = codec.decode(codec.encode(rows))
    >>> bool(((back - rows).abs() <= rows.abs().amax() / 254 + 1e-6).all())
    True
    """

    storage_dtype = torch.int8

    def __init__(self, layout: KVLayout) -> None:
        self.layout = layout
        # Groups of columns sharing a scale: (first column, heads, head_dim), K then V per layer.
        self._groups: list[tuple[int, int, int]] = []
        for spec, (k0, v0, _) in zip(layout.layers, layout.blocks, strict=True):
            self._groups.append((k0, spec.kv_heads, spec.key_dim))
            self._groups.append((v0, spec.kv_heads, spec.value_dim))
        self._n_scales = sum(heads for _, heads, _ in self._groups)
        self._data_cols = -(-layout.width // 4) * 4  # scales start 4-byte aligned
        self.columns = self._data_cols + 4 * self._n_scales
        """Bytes of one packed row."""

    @torch.no_grad()
    def encode(self, rows: torch.Tensor) -> torch.Tensor:
        """Quantize ``rows`` (``[n, width]``, any float dtype) into packed int8 rows on their device."""
        n = rows.shape[0]
        rows = rows.to(torch.float32)
        packed = torch.zeros(n, self.columns, device=rows.device, dtype=torch.int8)
        scales = torch.empty(n, self._n_scales, device=rows.device, dtype=torch.float32)
        s = 0
        for col, heads, dim in self._groups:
            block = rows[:, col : col + heads * dim].reshape(n, heads, dim)
            scale = block.abs().amax(dim=2).clamp_min(torch.finfo(torch.float32).tiny) / _QMAX
            q = torch.round(block / scale.unsqueeze(2)).clamp_(-_QMAX, _QMAX).to(torch.int8)
            packed[:, col : col + heads * dim] = q.reshape(n, heads * dim)
            scales[:, s : s + heads] = scale
            s += heads
        packed[:, self._data_cols :] = scales.view(torch.int8)
        return packed

    @torch.no_grad()
    def decode(self, packed: torch.Tensor) -> torch.Tensor:
        """The float32 rows (``[n, width]``) of packed rows (``[n, columns]``), on their device."""
        n = packed.shape[0]
        scales = packed[:, self._data_cols :].contiguous().view(torch.float32)
        out = torch.empty(n, self.layout.width, device=packed.device, dtype=torch.float32)
        s = 0
        for col, heads, dim in self._groups:
            q = packed[:, col : col + heads * dim].reshape(n, heads, dim).to(torch.float32)
            out[:, col : col + heads * dim] = (q * scales[:, s : s + heads].unsqueeze(2)).reshape(n, heads * dim)
            s += heads
        return out
