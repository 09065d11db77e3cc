"""The KV pool: a fixed number of token slots on one device, and a free list.

The pool is one token-major table: row ``s`` (a *slot*) holds one token's keys and
values for every layer (see :mod:`prefixcache.kv.layout`). The capacity is the
budget divided by the bytes of a row, and the table is reserved whole when the pool
is made. A codec (:class:`prefixcache.kv.int8.Int8Codec`) may pack rows into fewer
bytes; rows still go in and come out as ``[n, width]`` floats.

Copies between a GPU and host memory: rows that reach a host pool from a GPU are
copied asynchronously into page-locked memory and the stream is synchronised before
the host side reads them; rows that go from host memory to a GPU come from
page-locked or pageable buffers that CUDA keeps until the copy is done.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Sequence

import numpy as np
import torch

from ..arguments import parse_budget
from ..errors import PoolExhaustedError
from .int8 import Int8Codec
from .layout import KVLayout, LayerKV, LayerSpec

__all__ = ["TOKEN_BOOKKEEPING", "KVPool", "run_start"]

TOKEN_BOOKKEEPING = 16
"""Bytes a token costs a pool whose rows are empty (a model with no layer of its kind): its
id and slot in the tree, so that such a pool still bounds the tokens the tree holds."""


def _as_device(device: object) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, (str, int)) or isinstance(device, bool):
        raise TypeError(f"device: expected a torch.device or a str such as 'cpu' or 'cuda:0', got {device!r}")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device: {device!r} is not a device torch knows ({err})") from None


class KVPool:
    """A fixed number of token slots of KV for every layer, and a free list.

    Not thread-safe: :class:`prefixcache.cache.PrefixCache` holds the lock. Raises
    ``ValueError`` for no layers, a non-positive shape, or a budget below one token;
    ``TypeError`` for a budget that is neither an int nor a str, or a dtype that is
    not a floating-point torch.dtype.

    >>> pool = KVPool([LayerSpec(2, 4, 4)], budget=1024, dtype=torch.float32)
    >>> pool.bytes_per_token, pool.capacity
    (64, 16)
    >>> slots = pool.alloc(3)
    >>> list(slots), pool.n_free
    ([0, 1, 2], 13)
    """

    def __init__(
        self,
        layers: Sequence[LayerSpec] | KVLayout,
        budget: int | str,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        pin_memory: bool = False,
        codec: Int8Codec | None = None,
        name: str = "budget",
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
        self.bytes_per_slot = self.bytes_per_token or TOKEN_BOOKKEEPING
        """What a slot costs against the budget: its KV, or for rows of width 0 (layers that
        keep no KV of this kind) the tree's own bookkeeping of a token."""
        self.name = name
        """The option the budget came from, named in errors (``budget``, ``host_budget``)."""
        self.budget = parse_budget(budget, name)
        capacity = self.budget // self.bytes_per_slot
        if capacity < 1:
            raise ValueError(
                f"{name}: {budget!r} ({self.budget} bytes) is smaller than one token of KV "
                f"({self.bytes_per_slot} bytes); give at least {self.bytes_per_slot} bytes"
            )
        self._set_table(self._new_table(capacity, budget))
        self._free = array("q", range(capacity - 1, -1, -1))  # a stack: alloc pops from the end

    def _new_table(self, capacity: int, budget: int | str) -> torch.Tensor:
        # Zeroed, not just reserved: the memory is taken now rather than page by page
        # inside requests, and reserved bytes are bytes really held.
        if self.codec is not None:
            cols, dtype = self.codec.columns, self.codec.storage_dtype
        else:
            cols, dtype = self.width, self.dtype
        size = capacity * cols * dtype.itemsize
        room = _memory_of(self.device)
        if room is not None and size > room:
            raise ValueError(
                f"{self.name}: {budget!r} ({size} bytes) is more than the {room} bytes {self.device} has "
                f"{'free' if self.device.type == 'cuda' else 'in all'}; give a smaller budget"
            )
        try:
            return torch.zeros(capacity, cols, device=self.device, dtype=dtype, pin_memory=self.pin_memory)
        except RuntimeError as err:  # torch.OutOfMemoryError is one
            raise ValueError(
                f"{self.name}: {budget!r} ({size} bytes) could not be allocated on {self.device}: {err}"
            ) from err

    def _set_table(self, table: torch.Tensor) -> None:
        self._table = table
        # [2 * layers, 1, kv_heads, capacity, head_dim]: a run of slots is one slice of it.
        self._stacked = self.layout.stacked(table) if self.codec is None else None

    # -- sizes --------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Slots in the pool."""
        return self._table.shape[0]

    @property
    def n_free(self) -> int:
        """Slots not handed out."""
        return len(self._free)

    @property
    def n_used(self) -> int:
        """Slots handed out and not freed."""
        return self.capacity - len(self._free)

    @property
    def reserved_bytes(self) -> int:
        """Bytes the table takes on its device (never above the budget)."""
        return self.capacity * self.bytes_per_slot

    def capacity_for(self, budget: int | str, name: str = "budget") -> int:
        """How many tokens a pool of this shape holds within ``budget``."""
        return parse_budget(budget, name) // self.bytes_per_slot

    # -- slots --------------------------------------------------------------

    def alloc(self, n: int) -> array:
        """Hand out ``n`` free slots. O(n).

        Raises ``PoolExhaustedError`` when fewer than ``n`` are free and ``ValueError``
        for a negative ``n``.
        """
        if n < 0:
            raise ValueError(f"n: expected an int >= 0, got {n}")
        free = self._free
        if n > len(free):
            raise PoolExhaustedError(f"n: asked for {n} slots, {len(free)} of {self.capacity} are free")
        if n == 0:
            return array("q")
        taken = free[-n:]
        del free[-n:]
        taken.reverse()
        return taken

    def free(self, slots: array) -> None:
        """Take back ``slots`` (handed out by :meth:`alloc`). O(len(slots))."""
        back = array("q", slots)
        back.reverse()
        self._free += back

    def free_slots(self) -> array:
        """A copy of the free list (for checks)."""
        return array("q", self._free)

    def clear(self) -> None:
        """Mark every slot free (the data stays until overwritten)."""
        self._free = array("q", range(self.capacity - 1, -1, -1))

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

    @torch.no_grad()
    def resize(self, budget: int | str, keep: array) -> list[int]:
        """Rebuild the table to fit ``budget``, keeping the data of the slots in ``keep``.

        Kept slots are renumbered ``0 .. len(keep) - 1`` in order; every other slot
        becomes free. Returns the table of new numbers (``-1`` for a slot not kept),
        indexed by old slot. Old and new tables exist together while the data moves.
        Raises ``ValueError`` (pool unchanged) when the budget is below one token or
        cannot hold ``keep``.
        """
        capacity = self.capacity_for(budget, self.name)
        if capacity < max(1, len(keep)):
            raise ValueError(
                f"{self.name}: {budget!r} holds {capacity} tokens of {self.bytes_per_token} bytes; "
                f"at least {max(1, len(keep))} are needed"
            )
        table = self._new_table(capacity, budget)
        if keep:
            table[: len(keep)] = self._table.index_select(0, self.index(keep))
        numbers = [-1] * self.capacity
        for new, old in enumerate(keep):
            numbers[old] = new
        self._set_table(table)
        self.budget = parse_budget(budget, self.name)
        self._free = array("q", range(capacity - 1, len(keep) - 1, -1))
        return numbers

    def table_copy(self) -> torch.Tensor:
        """A copy of the whole table as stored (for checks)."""
        return self._table.clone()


def _memory_of(device: torch.device) -> int | None:
    """Bytes a table on ``device`` could take at most: the GPU's free memory, the host's
    physical memory; None where that is not known."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu" and hasattr(os, "sysconf"):
        try:
            return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            return None
    return None


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
