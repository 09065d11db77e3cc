"""The KV pool: cached keys and values, one slot per token, on the model's device.

The pool is one token-major table. Row ``s`` (a *slot*) holds one token's keys and
values for every layer side by side; for each layer its K and its V are a block of
columns (the layer's K slab and V slab):

    row s:  | K layer 0 | V layer 0 | K layer 1 | V layer 1 | ... |
              H0 * Dk0    H0 * Dv0    H1 * Dk1    H1 * Dv1

So a gather of n tokens is one ``index_select`` whatever the number of layers,
and a token costs ``2 x layers x kv_heads x head_dim x dtype size`` bytes when
every layer has the same shape. The capacity is the budget divided by that, and
the table is reserved whole when the pool is made.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import NamedTuple

import torch

from .budget import parse_budget
from .errors import PoolExhaustedError

__all__ = ["KVPool", "LayerKV", "LayerSpec"]

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


def _layer_specs(layers: object) -> list[LayerSpec]:
    """``layers`` as LayerSpecs, each three positive ints, or a clear error naming the bad one."""
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise TypeError(f"layers: expected a sequence of (kv_heads, key_dim, value_dim), got {layers!r}")
    if not layers:
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
    return specs


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

    Not thread-safe: :class:`prefixcache.cache.PrefixCache` holds the lock.

    Raises ``ValueError`` for no layers, a non-positive shape, or a budget below one
    token; ``TypeError`` for a budget that is neither an int nor a str.

    >>> pool = KVPool([LayerSpec(2, 4, 4)], budget=1024, dtype=torch.float32)
    >>> pool.bytes_per_token, pool.capacity
    (64, 16)
    >>> slots = pool.alloc(3)
    >>> list(slots), pool.n_free
    ([0, 1, 2], 13)
    """

    def __init__(
        self,
        layers: Sequence[LayerSpec],
        budget: int | str,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        pin_memory: bool = False,
    ) -> None:
        specs = _layer_specs(layers)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype: expected a floating-point torch.dtype, got {dtype!r}")
        self.layers: tuple[LayerSpec, ...] = tuple(specs)
        self.device = _as_device(device)
        self.dtype = dtype
        # Page-locked host memory makes copies to and from a GPU asynchronous and faster.
        self.pin_memory = bool(pin_memory) and self.device.type == "cpu" and torch.cuda.is_available()
        self.width = sum(spec.width for spec in specs)
        self.bytes_per_token = self._bytes_per_token()
        self.budget = parse_budget(budget)
        capacity = self.budget // self.bytes_per_token
        if capacity < 1:
            raise ValueError(
                f"budget: {budget!r} ({self.budget} bytes) is smaller than one token of KV "
                f"({self.bytes_per_token} bytes); give at least {self.bytes_per_token} bytes"
            )
        # Column blocks of each layer's K and V inside a row.
        self._blocks: list[tuple[int, int, int]] = []  # (key start, value start, value end)
        col = 0
        for spec in specs:
            kstart = col
            vstart = kstart + spec.kv_heads * spec.key_dim
            col = vstart + spec.kv_heads * spec.value_dim
            self._blocks.append((kstart, vstart, col))
        # Zeroed, not just reserved: the memory is taken now rather than page by page
        # inside requests, and reserved bytes are bytes really held.
        self._table = self._new_table(capacity)
        self._free = array("q", range(capacity - 1, -1, -1))  # a stack: alloc pops from the end

    def _bytes_per_token(self) -> int:
        return self.width * self.dtype.itemsize

    def _new_table(self, capacity: int) -> torch.Tensor:
        return torch.zeros(capacity, self.width, device=self.device, dtype=self.dtype, pin_memory=self.pin_memory)

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
        """Bytes the table takes on the device (never above the budget)."""
        return self.capacity * self.bytes_per_token

    def capacity_for(self, budget: int | str) -> int:
        """How many tokens a pool of this shape holds within ``budget``."""
        return parse_budget(budget) // self.bytes_per_token

    # -- slots --------------------------------------------------------------

    def alloc(self, n: int) -> array:
        """Hand out ``n`` free slots. O(n).

        Raises ``PoolExhaustedError`` when fewer than ``n`` are free and
        ``ValueError`` for a negative ``n``.
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

    # -- data ---------------------------------------------------------------

    def index(self, slots: array) -> torch.Tensor:
        """``slots`` as an int64 tensor on the pool's device."""
        if not slots:
            return torch.empty(0, dtype=torch.int64, device=self.device)
        idx = torch.frombuffer(slots, dtype=torch.int64)
        return idx.to(self.device, non_blocking=True) if self.device.type != "cpu" else idx

    @torch.no_grad()
    def gather(self, slots: array, *, copy: bool = True) -> list[LayerKV]:
        """Read the KV of ``slots``, one ``(key_states, value_states)`` per layer.

        Each tensor is ``[1, kv_heads, len(slots), head_dim]``: per-layer views of
        one ``index_select`` of all layers' rows. With ``copy=False`` and slots that
        are consecutive numbers (a run allocated together), they are views of the
        pool itself and nothing is copied: the caller must only read them, and only
        while the slots stay allocated.
        """
        start = _run_start(slots) if not copy else None
        rows = (
            self._table[start : start + len(slots)]
            if start is not None
            else self._table.index_select(0, self.index(slots))
        )
        return self._split_rows(rows)

    def _split_rows(self, rows: torch.Tensor) -> list[LayerKV]:
        n = rows.shape[0]
        out: list[LayerKV] = []
        for spec, (k0, v0, end) in zip(self.layers, self._blocks, strict=True):
            keys = rows[:, k0:v0].view(n, spec.kv_heads, spec.key_dim).transpose(0, 1).unsqueeze(0)
            values = rows[:, v0:end].view(n, spec.kv_heads, spec.value_dim).transpose(0, 1).unsqueeze(0)
            out.append((keys, values))
        return out

    def check_kv(self, kv: Sequence[LayerKV], *, positions: int, row: int = 0) -> None:
        """Raise ``ValueError`` unless ``kv`` has this pool's layers and shapes,
        a batch row ``row`` and at least ``positions`` positions."""
        if len(kv) != len(self.layers):
            raise ValueError(f"kv: expected {len(self.layers)} layers, got {len(kv)}")
        for i, (spec, layer) in enumerate(zip(self.layers, kv, strict=False)):
            if len(layer) < 2:
                raise ValueError(f"kv[{i}]: expected (key_states, value_states), got {len(layer)} items")
            for name, src, dim in (("key", layer[0], spec.key_dim), ("value", layer[1], spec.value_dim)):
                if not isinstance(src, torch.Tensor):
                    raise TypeError(f"kv[{i}] {name}_states: expected a tensor, got {type(src).__name__}")
                shape = list(src.shape)
                if (
                    src.dim() != 4
                    or shape[1] != spec.kv_heads
                    or shape[3] != dim
                    or shape[2] < positions
                    or shape[0] <= row
                ):
                    raise ValueError(
                        f"kv[{i}] {name}_states: expected [batch > {row}, {spec.kv_heads}, >= {positions}, {dim}], "
                        f"got {shape}"
                    )

    @torch.no_grad()
    def write(self, slots: array, kv: Sequence[LayerKV], *, start: int = 0, row: int = 0) -> None:
        """Store the KV of ``len(slots)`` tokens into ``slots``.

        For every layer, token ``i`` is read at ``kv[layer][k or v][row, :, start + i, :]``,
        so ``kv`` may be a whole batch's cache of which one row and a range of
        positions are kept. Shapes are those :meth:`check_kv` accepts (the caller
        checks first, before it changes anything). Consecutive slots are written in
        place; others through one ``index_copy_``.
        """
        n = len(slots)
        if n == 0:
            return
        first = _run_start(slots)
        if first is not None:
            rows = self._table[first : first + n]
        else:
            rows = torch.empty(n, self.width, device=self.device, dtype=self.dtype)
        for spec, (k0, v0, end), layer in zip(self.layers, self._blocks, kv, strict=True):
            keys, values = layer[0][row, :, start : start + n], layer[1][row, :, start : start + n]
            rows[:, k0:v0].view(n, spec.kv_heads, spec.key_dim).copy_(keys.transpose(0, 1))
            rows[:, v0:end].view(n, spec.kv_heads, spec.value_dim).copy_(values.transpose(0, 1))
        if first is None:
            self._table.index_copy_(0, self.index(slots), rows)

    @torch.no_grad()
    def resize(self, budget: int | str, keep: array) -> list[int]:
        """Rebuild the table to fit ``budget``, keeping the data of the slots in ``keep``.

        Kept slots are renumbered ``0 .. len(keep) - 1`` in order; every other slot
        becomes free. Returns the table of new numbers (``-1`` for a slot not kept),
        indexed by old slot. Old and new tables exist together while the data moves.
        Raises ``ValueError`` (pool unchanged) when the budget is below one token or
        cannot hold ``keep``.
        """
        capacity = self.capacity_for(budget)
        if capacity < max(1, len(keep)):
            raise ValueError(
                f"budget: {budget!r} holds {capacity} tokens of {self.bytes_per_token} bytes; "
                f"at least {max(1, len(keep))} are needed"
            )
        table = self._new_table(capacity)
        if keep:
            table[: len(keep)] = self._table.index_select(0, self.index(keep))
        numbers = [-1] * self.capacity
        for new, old in enumerate(keep):
            numbers[old] = new
        self._table = table
        self.budget = parse_budget(budget)
        self._free = array("q", range(capacity - 1, len(keep) - 1, -1))
        return numbers

    @torch.no_grad()
    def read_rows(self, slots: array) -> torch.Tensor:
        """A copy of the rows of ``slots``: ``[len(slots), width]`` in the pool's dtype, on its device.

        A row holds one token's K and V of every layer (see :meth:`write_rows`)."""
        return self._table.index_select(0, self.index(slots))

    @torch.no_grad()
    def write_rows(self, slots: array, rows: torch.Tensor) -> None:
        """Store ``rows`` (``[len(slots), width]``, as :meth:`read_rows` gives them, from any
        pool of the same layers) into ``slots``, converting device and dtype."""
        if rows.shape != (len(slots), self.width):
            raise ValueError(f"rows: expected shape [{len(slots)}, {self.width}], got {list(rows.shape)}")
        if not slots:
            return
        rows = rows.to(self.device, self.dtype, non_blocking=True)
        first = _run_start(slots)
        if first is not None:
            self._table[first : first + len(slots)].copy_(rows)
        else:
            self._table.index_copy_(0, self.index(slots), rows)

    def clear(self) -> None:
        """Mark every slot free (the data stays until overwritten)."""
        self._free = array("q", range(self.capacity - 1, -1, -1))


def _run_start(slots: array) -> int | None:
    """``a`` if ``slots`` are ``a, a + 1, ..., a + n - 1`` (n >= 1), else None. O(n) in C."""
    n = len(slots)
    if n == 0:
        return None
    first = slots[0]
    if slots[-1] - first != n - 1 or slots != array("q", range(first, first + n)):
        return None
    return first
