"""The KV pool: a fixed number of token slots on one device, and a free list.

The pool is one token-major table: row ``s`` (a *slot*) holds one token's keys and
values for every layer (see :mod:`prefixcache.kv.layout`). The capacity is the
budget divided by the bytes of a row, and the table is reserved whole when the pool
is made. A codec (:class:`prefixcache.kv.int8.Int8Codec`) may pack rows into fewer
bytes; rows still go in and come out as ``[n, width]`` floats.

:class:`KVPool` holds the budget, the table's size and the free list; reading and
writing rows of the table is its base, :class:`prefixcache.kv.rows.RowTable`.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Sequence

import torch

from ..arguments import parse_budget
from ..errors import PoolExhaustedError
from .int8 import Int8Codec
from .layout import KVLayout, LayerSpec
from .rows import RowTable, run_start

__all__ = ["TOKEN_BOOKKEEPING", "KVPool", "run_start"]

TOKEN_BOOKKEEPING = 16
"""Bytes a token costs a pool whose rows are empty (a model with no layer of its kind): its
id and slot in the tree, so that such a pool still bounds the tokens the tree holds."""


class KVPool(RowTable):
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
        super().__init__(layers, device=device, dtype=dtype, pin_memory=pin_memory, codec=codec)
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
