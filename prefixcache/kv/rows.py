"""The table behind a KV pool and the copies in and out of it.

A pool keeps one token-major table: row ``s`` (a *slot*) holds one token's keys and
values for every layer (see :mod:`prefixcache.kv.layout`). :class:`RowTable` knows
the format of a row (layers, dtype, device, an optional codec that packs rows into
fewer bytes) and moves rows between the table and the caller: as one
``(key_states, value_states)`` pair per layer, or as ``[n, width]`` float rows.
How many rows there are and which are free is :class:`prefixcache.kv.pool.KVPool`'s.

Copies between a GPU and host memory: rows that reach a host pool from a GPU are
copied asynchronously into page-locked memory and the stream is synchronised before
the host side reads them; rows that go from host memory to a GPU come from
page-locked or pageable buffers that CUDA keeps until the copy is done.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import numpy as np
import torch

from .int8 import Int8Codec
from .layout import KVLayout, LayerKV, LayerSpec

__all__ = ["RowTable", "run_start"]


def _as_device(device: object) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, (str, int)) or isinstance(device, bool):
        raise TypeError(f"device: expected a torch.device or a str such as 'cpu' or 'cuda:0', got {device!r}")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device: {device!r} is not a device torch knows ({err})") from None


class RowTable:
    """A table of rows of KV, one per slot, and reading and writing them: the base of
    :class:`prefixcache.kv.pool.KVPool`, which reserves the table (:meth:`_set_table`).

    Raises ``ValueError`` for no layers or a non-positive shape; ``TypeError`` for a
    dtype that is not a floating-point torch.dtype.
    """

    def __init__(
        self,
        layers: Sequence[LayerSpec] | KVLayout,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        pin_memory: bool = False,
        codec: Int8Codec | None = None,
    ) -> None:
        self.layout = layers if isinstance(layers, KVLayout) else KVLayout(layers)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype: expected a floating-point torch.dtype, got {dtype!r}")
        self.layers: tuple[LayerSpec, ...] = self.layout.layers
        self.device = _as_device(device)
        self.dtype = dtype
        """The dtype rows are written and read in."""
        self.codec = codec
        # Page-locked host memory makes copies to and from a GPU asynchronous and faster.
        self.pin_memory = bool(pin_memory) and self.device.type == "cpu" and torch.cuda.is_available()
        self.width = self.layout.width
        self.bytes_per_token = codec.columns if codec is not None else self.width * dtype.itemsize

    def _set_table(self, table: torch.Tensor) -> None:
        self._table = table
        # [2 * layers, 1, kv_heads, capacity, head_dim]: a run of slots is one slice of it.
        self._stacked = self.layout.stacked(table) if self.codec is None else None

    # -- data ---------------------------------------------------------------

    def index(self, slots: array) -> torch.Tensor:
        """``slots`` as an int64 tensor on the pool's device (staged in page-locked memory
        for a GPU, so the upload does not wait for the stream)."""
        if not slots:
            return torch.empty(0, dtype=torch.int64, device=self.device)
        idx = torch.frombuffer(slots, dtype=torch.int64)
        if self.device.type == "cpu":
            return idx
        if torch.cuda.is_available():
            staged = torch.empty(len(slots), dtype=torch.int64, pin_memory=True)
            staged.copy_(idx)
            idx = staged
        return idx.to(self.device, non_blocking=True)

    @torch.no_grad()
    def gather(self, slots: array, *, copy: bool = True) -> list[LayerKV]:
        """Read the KV of ``slots``, one ``(key_states, value_states)`` per layer.

        Each tensor is ``[1, kv_heads, len(slots), head_dim]``. With ``copy=False`` and
        slots that are consecutive numbers (a run allocated together), they are views of
        the pool itself and nothing is copied: the caller must only read them, and only
        while the slots stay allocated. O(layers) views, or one ``index_select``.
        """
        stacked = self._stacked
        start = run_start(slots) if not copy and self.codec is None else None
        if start is not None:
            n = len(slots)
            if stacked is not None:
                return self.layout.pair(stacked[:, :, :, start : start + n].unbind(0))
            return self.layout.split(self._table[start : start + n])
        return self.layout.split(self.read_rows(slots))

    @torch.no_grad()
    def write(self, slots: array, kv: Sequence[LayerKV], *, start: int = 0, row: int = 0) -> None:
        """Store the KV of ``len(slots)`` tokens into ``slots``.

        For every layer, token ``i`` is read at ``kv[layer][k or v][row, :, start + i, :]``,
        so ``kv`` may be a whole batch's cache of which one row and a range of positions
        are kept. Shapes must be those :func:`prefixcache.arguments.check_kv` accepts (the
        caller checks first, before it changes anything).
        """
        n = len(slots)
        if n == 0:
            return
        first = run_start(slots) if self.codec is None else None
        if first is not None:  # in place
            self.layout.rows_of(kv, start, n, row, self._table[first : first + n])
            return
        rows = torch.empty(n, self.width, device=self.device, dtype=self.dtype if self.codec is None else torch.float32)
        self.layout.rows_of(kv, start, n, row, rows)
        self._put(slots, rows)

    @torch.no_grad()
    def read_rows(self, slots: array) -> torch.Tensor:
        """A copy of the rows of ``slots``: ``[len(slots), width]`` in :attr:`dtype`, on the
        pool's device (page-locked when the pool is)."""
        idx = self.index(slots)
        if self.pin_memory:
            rows = torch.empty(len(slots), self._table.shape[1], dtype=self._table.dtype, pin_memory=True)
            torch.index_select(self._table, 0, idx, out=rows)
        else:
            rows = self._table.index_select(0, idx)
        return self.codec.decode(rows) if self.codec is not None else rows

    @torch.no_grad()
    def write_rows(self, slots: array, rows: torch.Tensor) -> None:
        """Store ``rows`` (``[len(slots), width]``, as :meth:`read_rows` gives them, from any
        pool of the same layers, on any device) into ``slots``, converting device and dtype.

        Rows from a GPU into a host pool are copied asynchronously into page-locked
        memory and the stream is synchronised before anything reads them.
        """
        if rows.shape != (len(slots), self.width):
            raise ValueError(f"rows: expected shape [{len(slots)}, {self.width}], got {list(rows.shape)}")
        if not slots:
            return
        if rows.device.type == "cuda" and self.device.type == "cpu":
            first = run_start(slots) if self.codec is None and rows.dtype == self.dtype else None
            if first is not None:  # straight into the (page-locked) table
                self._table[first : first + len(slots)].copy_(rows, non_blocking=self.pin_memory)
                torch.cuda.current_stream(rows.device).synchronize()
                return
            staged = rows.to("cpu", non_blocking=True)  # into page-locked memory, asynchronously
            torch.cuda.current_stream(rows.device).synchronize()  # before the host reads it
            rows = staged
        elif rows.device != self.device:
            rows = rows.to(self.device, non_blocking=True)  # CUDA keeps the host buffer until it is read
        self._put(slots, rows)

    def _put(self, slots: array, rows: torch.Tensor) -> None:
        """Store float rows already on the pool's device into ``slots``."""
        stored = self.codec.encode(rows) if self.codec is not None else rows.to(self.dtype)
        first = run_start(slots)
        if first is not None:
            self._table[first : first + len(slots)].copy_(stored)
        else:
            self._table.index_copy_(0, self.index(slots), stored)

    def table_copy(self) -> torch.Tensor:
        """A copy of the whole table as stored (for checks)."""
        return self._table.clone()


def run_start(slots: array) -> int | None:
    """``a`` if ``slots`` are ``a, a + 1, ..., a + n - 1`` (n >= 1), else None. O(n) in C.

    >>> run_start(array("q", [4, 5, 6])), run_start(array("q", [4, 6]))
    (4, None)
    """
    n = len(slots)
    if n == 0:
        return None
    first = slots[0]
    if slots[-1] - first != n - 1:
        return None
    if n > 2 and not (np.diff(np.frombuffer(slots, dtype=np.int64)) == 1).all():
        return None
    return first
