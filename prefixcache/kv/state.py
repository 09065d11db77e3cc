"""Snapshots of recurrent state: what linear-attention, state-space and short-convolution
layers keep instead of a key and value per token.

Such a layer's cache holds, for each of its states, a convolution state (the last few
inputs of a causal convolution) and a recurrent state (a fixed-size summary of every
token so far). Neither can be cut at an arbitrary token: a prefix can be reused only
where a snapshot of all of them was taken. A snapshot is one row of a
:class:`SnapshotPool`: every state tensor of every layer, flattened, side by side:

    row s:  | conv (layer a, state 0) | recurrent (layer a, state 0) | conv (layer b, 0) | ...

in one dtype, the widest of the states' (float32 recurrent states beside bfloat16
convolution states are kept as float32; a cast up and back down is exact).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from typing import NamedTuple

import torch

from ..arguments import parse_budget

__all__ = ["SnapshotPool", "StateLayout", "StateSpec"]


class StateSpec(NamedTuple):
    """One state tensor of one layer, for one sequence (the batch dimension left out)."""

    layer: int
    state: int
    """Which of the layer's states (most layers have one)."""
    kind: str
    """``"conv"`` or ``"recurrent"``."""
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def size(self) -> int:
        """Elements in it."""
        return math.prod(self.shape)


def _widest(dtypes: Sequence[torch.dtype]) -> torch.dtype:
    if torch.float64 in dtypes:
        return torch.float64
    if len(set(dtypes)) == 1:
        return dtypes[0]
    return torch.float32  # float32 holds float16 and bfloat16 exactly


class StateLayout:
    """Where each state tensor sits in a snapshot row, and the row's dtype.

    >>> conv = StateSpec(0, 0, "conv", (4, 3), torch.bfloat16)
    >>> layout = StateLayout([conv, StateSpec(0, 0, "recurrent", (2, 2), torch.float32)])
    >>> layout.width, layout.dtype
    (16, torch.float32)
    """

    __slots__ = ("dtype", "offsets", "specs", "width")

    def __init__(self, specs: Sequence[StateSpec]) -> None:
        if not specs:
            raise ValueError("specs: a state layout needs at least one state tensor")
        self.specs: tuple[StateSpec, ...] = tuple(specs)
        offsets, col = [], 0
        for spec in self.specs:
            offsets.append(col)
            col += spec.size
        self.offsets = tuple(offsets)
        self.width = col
        self.dtype = _widest([spec.dtype for spec in self.specs])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StateLayout) and other.specs == self.specs

    def __hash__(self) -> int:
        return hash(self.specs)

    def __repr__(self) -> str:
        return f"StateLayout({len(self.specs)} states, width {self.width}, {self.dtype})"

    def join(self, tensors: Sequence[torch.Tensor], row: int, out: torch.Tensor) -> None:
        """Write batch row ``row`` of each state tensor (``tensors[i]`` for ``specs[i]``, each
        ``[batch, *shape]``) into ``out`` (``[width]``)."""
        for spec, offset, tensor in zip(self.specs, self.offsets, tensors, strict=True):
            out[offset : offset + spec.size].copy_(tensor[row].reshape(-1))

    def split(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """``rows`` (``[batch, width]``) as each state tensor, ``[batch, *shape]`` in its own dtype (copies)."""
        batch = rows.shape[0]
        return [
            rows[:, offset : offset + spec.size].reshape(batch, *spec.shape).to(spec.dtype)
            for spec, offset in zip(self.specs, self.offsets, strict=True)
        ]


class SnapshotPool:
    """A fixed number of snapshot rows on one device, and a free list. Not thread-safe (the
    cache's lock covers it). Raises ``ValueError`` for a budget below one snapshot.

    >>> pool = SnapshotPool(StateLayout([StateSpec(0, 0, "recurrent", (2, 2), torch.float32)]), 64)
    >>> pool.bytes_per_snapshot, pool.capacity
    (16, 4)
    """

    def __init__(
        self, layout: StateLayout, budget: int | str, *, device: torch.device | str = "cpu", name: str = "budget"
    ) -> None:
        self.layout = layout
        self.device = torch.device(device)
        self.name = name
        self.bytes_per_snapshot = layout.width * layout.dtype.itemsize
        self.budget = parse_budget(budget, name)
        capacity = self.budget // self.bytes_per_snapshot
        if capacity < 1:
            raise ValueError(
                f"{name}: {budget!r} leaves {self.budget} bytes for recurrent-state snapshots, less than one "
                f"({self.bytes_per_snapshot} bytes); give a larger budget"
            )
        self._table = torch.zeros(capacity, layout.width, dtype=layout.dtype, device=self.device)
        self._free = array("q", range(capacity - 1, -1, -1))

    @property
    def capacity(self) -> int:
        return self._table.shape[0]

    @property
    def n_free(self) -> int:
        return len(self._free)

    @property
    def n_used(self) -> int:
        return self.capacity - len(self._free)

    @property
    def reserved_bytes(self) -> int:
        return self.capacity * self.bytes_per_snapshot

    def alloc(self) -> int:
        """A free slot; ``IndexError`` when none is free (the caller makes room first)."""
        return self._free.pop()

    def free(self, slots: array) -> None:
        self._free.extend(slots)

    def free_slots(self) -> array:
        return array("q", self._free)

    @torch.no_grad()
    def write(self, slot: int, row: torch.Tensor) -> None:
        """Store ``row`` (``[width]``, any device and floating dtype) in ``slot``."""
        self._table[slot].copy_(row)

    @torch.no_grad()
    def read(self, slots: Sequence[int]) -> torch.Tensor:
        """The rows of ``slots``, ``[len(slots), width]`` (a copy)."""
        index = torch.tensor(list(slots), dtype=torch.int64, device=self.device)
        return self._table.index_select(0, index)

    @torch.no_grad()
    def resize(self, budget: int | str, keep: array) -> list[int]:
        """Rebuild the table for ``budget``, keeping the rows of ``keep`` (renumbered in order);
        returns the new number of each old slot (-1: not kept). ``ValueError`` (unchanged) when
        it cannot hold ``keep``."""
        capacity = parse_budget(budget, self.name) // self.bytes_per_snapshot
        if capacity < max(1, len(keep)):
            raise ValueError(
                f"{self.name}: {budget!r} holds {capacity} snapshots of {self.bytes_per_snapshot} bytes; "
                f"at least {max(1, len(keep))} are needed"
            )
        table = torch.zeros(capacity, self.layout.width, dtype=self.layout.dtype, device=self.device)
        if keep:
            table[: len(keep)] = self.read(keep)
        numbers = [-1] * self.capacity
        for new, old in enumerate(keep):
            numbers[old] = new
        self._table = table
        self.budget = parse_budget(budget, self.name)
        self._free = array("q", range(capacity - 1, len(keep) - 1, -1))
        return numbers
