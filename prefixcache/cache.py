"""PrefixCache: the radix tree, the KV pool and the budget behind one lock.

A request looks up the longest cached prefix of its tokens (``match``), which
pins it, reads its KV (``gather``), computes the rest, stores what is new
(``insert``) and releases the pin:

    with cache.match(tokens, max_length=len(tokens) - 1) as hit:
        prefix_kv = cache.gather(hit)        # tokens [0, hit.length)
        kv = model(tokens[hit.length:], prefix_kv)
        cache.insert(tokens, kv)             # stores only what is not cached yet
"""

from __future__ import annotations

import operator
import threading
from array import array
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import torch

from .pool import KVPool, LayerKV, LayerSpec
from .radix import Node, RadixTree
from .stats import CacheStats, Counters

__all__ = ["Hit", "PrefixCache"]


class _Lease:
    """The mutable part of a Hit: the pinned node, until released."""

    __slots__ = ("node", "released")

    def __init__(self, node: Node | None) -> None:
        self.node = node
        self.released = False


@dataclass(frozen=True)
class Hit:
    """A cached prefix of a request's tokens, pinned until released.

    Use it as a context manager, or call :meth:`release` once done with the KV.
    While pinned its tokens cannot be evicted.
    """

    length: int
    """How many leading tokens are cached."""
    namespace: Hashable
    """The namespace it was found in."""
    _cache: PrefixCache = field(repr=False, compare=False)
    _lease: _Lease = field(repr=False, compare=False)

    @property
    def released(self) -> bool:
        """True once :meth:`release` has run."""
        return self._lease.released

    def release(self) -> None:
        """Unpin the prefix. Safe to call more than once."""
        self._cache._release(self._lease)

    def __enter__(self) -> Hit:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


_INT32_MAX = 2**31 - 1


def as_tokens(tokens: object, name: str = "tokens") -> array:
    """Check and convert token ids to the tree's ``array('i')``.

    Takes a 1-D integer tensor, an ``array('i')`` (used as is) or a sequence of
    ints. Raises ``TypeError`` for anything else (floats, bools, strings, a 2-D
    tensor) and ``ValueError`` for ids below 0 or above 2**31 - 1.
    """
    if isinstance(tokens, torch.Tensor):
        if tokens.is_meta:
            raise ValueError(f"{name}: a tensor on the meta device holds no token ids; give one with data")
        if tokens.dim() != 1 or tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise TypeError(
                f"{name}: expected a 1-D integer tensor or a sequence of ints, "
                f"got a {tokens.dim()}-D tensor of {tokens.dtype}"
            )
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) > _INT32_MAX):
            raise ValueError(f"{name}: token ids must be in [0, {_INT32_MAX}], got {tokens.min()}..{tokens.max()}")
        return array("i", tokens.detach().to("cpu", torch.int32).contiguous().numpy().tobytes())
    if type(tokens) is array and tokens.typecode == "i":
        run = tokens
    elif isinstance(tokens, (str, bytes)) or not isinstance(tokens, Sequence):
        raise TypeError(f"{name}: expected a sequence of ints, got {type(tokens).__name__}")
    else:
        for t in tokens if set(map(type, tokens)) - {int} else ():
            if isinstance(t, bool) or not hasattr(type(t), "__index__"):
                raise TypeError(f"{name}: expected token ids as ints, got {t!r} of type {type(t).__name__}")
        try:
            run = array("i", map(operator.index, tokens))
        except OverflowError:
            bad = next(t for t in map(operator.index, tokens) if not 0 <= t <= _INT32_MAX)
            raise ValueError(f"{name}: token ids must be in [0, {_INT32_MAX}], got {bad}") from None
    if run and min(run) < 0:
        raise ValueError(f"{name}: token ids must be in [0, {_INT32_MAX}], got {min(run)}")
    return run


def check_count(value: object, name: str) -> int:
    """Return ``value`` if it is an int >= 0 (not a bool), else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}: expected an int >= 0, got {value!r}")
    return value


def check_kv(kv: Any, pool: KVPool, *, positions: int, row: int) -> None:
    """Raise unless ``kv`` is one ``(key_states, value_states)`` pair per layer of ``pool``,
    of its shapes (see :meth:`KVPool.check_kv`), floating point and on its device.

    ``TypeError`` for the wrong kinds of objects or dtypes, ``ValueError`` for wrong
    shapes or another device; each names the offending layer.
    """
    if isinstance(kv, (str, bytes)) or not (hasattr(kv, "__len__") and hasattr(kv, "__getitem__")):
        raise TypeError(f"kv: expected one (key_states, value_states) pair per layer, got {type(kv).__name__}")
    layers: list[Any] = [kv[i] for i in range(len(kv))]
    for i, layer in enumerate(layers):
        if isinstance(layer, (str, bytes)) or not (hasattr(layer, "__len__") and hasattr(layer, "__getitem__")):
            raise TypeError(f"kv[{i}]: expected a (key_states, value_states) pair, got {type(layer).__name__}")
    pool.check_kv(kv, positions=positions, row=row)
    for i, layer in enumerate(layers):
        for part, tensor in (("key", layer[0]), ("value", layer[1])):
            if not tensor.dtype.is_floating_point:
                raise TypeError(f"kv[{i}] {part}_states: expected a floating-point tensor, got {tensor.dtype}")
            if not _same_device(tensor.device, pool.device):
                raise ValueError(
                    f"kv[{i}] {part}_states: on {tensor.device}, but the pool is on {pool.device}; move it there first"
                )


def _same_device(a: torch.device, b: torch.device) -> bool:
    # "cuda" names the current device of its type: it matches any index.
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def check_namespace(namespace: object) -> Hashable:
    """Return ``namespace`` if it is hashable, else raise ``TypeError``."""
    try:
        hash(namespace)
    except TypeError:
        raise TypeError(
            f"namespace: expected a hashable value (a str, an int, a tuple, None), "
            f"got {namespace!r} of type {type(namespace).__name__}"
        ) from None
    return namespace


class PrefixCache:
    """Cached KV of token prefixes, bounded by a byte budget, safe to share between threads.

    ``layers`` gives each layer's KV shape for one token, ``budget`` the bytes the
    pool may take (``"4GiB"``, ``"512MB"``, an int). All methods take one lock;
    none of them runs a model.
    """

    def __init__(
        self,
        layers: Sequence[LayerSpec],
        budget: int | str,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self._pool = KVPool(layers, budget, device=device, dtype=dtype)
        self._tree = RadixTree()
        self._lock = threading.RLock()
        self._counters = Counters()

    # -- properties ---------------------------------------------------------

    @property
    def pool(self) -> KVPool:
        """The KV pool (read its shape; do not alloc or free behind the cache)."""
        return self._pool

    @property
    def tree(self) -> RadixTree:
        """The radix tree (for inspection only)."""
        return self._tree

    @property
    def stats(self) -> CacheStats:
        """A snapshot of the counters."""
        with self._lock:
            c, tree, pool = self._counters, self._tree, self._pool
            return CacheStats(
                requests=c.requests,
                prompt_tokens=c.prompt_tokens,
                hit_tokens=c.hit_tokens,
                inserted_tokens=c.inserted_tokens,
                evicted_tokens=c.evicted_tokens,
                passed_through=c.passed_through,
                cached_tokens=tree.size,
                pinned_tokens=tree.pinned_size,
                capacity_tokens=pool.capacity,
                bytes_used=pool.n_used * pool.bytes_per_token,
                bytes_reserved=pool.reserved_bytes,
                nodes=tree.n_nodes,
            )

    # -- a request ----------------------------------------------------------

    def match(
        self, tokens: Sequence[int] | torch.Tensor, *, namespace: Hashable = None, max_length: int | None = None
    ) -> Hit:
        """Find and pin the longest cached prefix of ``tokens`` (at most ``max_length`` long).

        Counts one request of ``len(tokens)`` prompt tokens. The result must be
        released (``with`` or :meth:`Hit.release`). O(len(tokens) + log n).
        Raises ``TypeError``/``ValueError`` for bad tokens, namespace or max_length.
        """
        toks = as_tokens(tokens)
        check_namespace(namespace)
        if max_length is not None:
            check_count(max_length, "max_length")
        look = toks if max_length is None or max_length >= len(toks) else toks[:max_length]
        with self._lock:
            found = self._tree.match(look, namespace)
            self._tree.pin(found.node)
            c = self._counters
            c.requests += 1
            c.prompt_tokens += len(toks)
            c.hit_tokens += found.length
        return Hit(found.length, namespace, self, _Lease(found.node))

    def gather(self, hit: Hit, length: int | None = None, *, copy: bool = True) -> list[LayerKV]:
        """The KV of ``hit``'s first ``length`` tokens (all of them by default): per layer
        ``(keys, values)``, each ``[1, kv_heads, length, head_dim]``.

        ``copy=False`` may return views of the pool instead of copies (see
        :meth:`KVPool.gather`): read them only, and only until the hit is released.
        Raises ``TypeError`` for something that is not a Hit, and ``ValueError`` if the
        hit was released, comes from another cache, or is shorter than ``length``.
        """
        if not isinstance(hit, Hit):
            raise TypeError(f"hit: expected a Hit returned by PrefixCache.match, got {type(hit).__name__}")
        if hit._cache is not self:
            raise ValueError("hit: it comes from another PrefixCache")
        if length is None:
            length = hit.length
        elif isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= hit.length:
            raise ValueError(f"length: expected an int in [0, {hit.length}], got {length!r}")
        with self._lock:
            if hit._lease.released:
                raise ValueError("hit: already released; match again")
            slots = self._path_slots(hit._lease.node)
            assert len(slots) == hit.length
            return self._pool.gather(slots[:length], copy=copy)

    def record_pass_through(self, prompt_tokens: int, requests: int = 1) -> None:
        """Count requests served by the model without the cache (they hit nothing)."""
        with self._lock:
            c = self._counters
            c.requests += requests
            c.prompt_tokens += prompt_tokens
            c.passed_through += requests

    def insert(
        self,
        tokens: Sequence[int] | torch.Tensor,
        kv: Sequence[LayerKV],
        *,
        namespace: Hashable = None,
        offset: int = 0,
        row: int = 0,
    ) -> int:
        """Store the KV of whatever part of ``tokens`` is not cached yet.

        Token ``i``'s KV is read at ``kv[layer][k or v][row, :, offset + i, :]``.
        Evicts least recently used leaves to make room; when even that is not
        enough (the rest is pinned), stores the longest prefix that fits. Returns
        how many tokens were stored. Raises ``TypeError``/``ValueError`` for bad
        arguments, leaving the cache as it was.
        """
        toks = as_tokens(tokens)
        check_namespace(namespace)
        check_count(offset, "offset")
        check_count(row, "row")
        check_kv(kv, self._pool, positions=offset + len(toks), row=row)
        with self._lock:
            tree, pool = self._tree, self._pool
            found = tree.match(toks, namespace)
            new = len(toks) - found.length
            if new == 0:
                return 0
            tree.pin(found.node)  # keep the path while making room
            try:
                if new > pool.n_free:
                    self._evict_locked(new - pool.n_free)
                fits = min(new, pool.n_free)
                if fits == 0:
                    return 0
                slots = pool.alloc(fits)
                try:
                    pool.write(slots, kv, start=offset + found.length, row=row)
                    done = tree.insert(toks[: found.length + fits], found.slots + slots, namespace)
                except BaseException:
                    pool.free(slots)
                    raise
                assert done.prefix_length == found.length
            finally:
                tree.unpin(found.node)
            self._counters.inserted_tokens += fits
            return fits

    def _release(self, lease: _Lease) -> None:
        with self._lock:
            if not lease.released:
                lease.released = True
                self._tree.unpin(lease.node)

    # -- memory -------------------------------------------------------------

    def evict(self, n_tokens: int) -> int:
        """Drop at least ``n_tokens`` tokens of unpinned KV, least recently used leaves first,
        or everything unpinned if there is less. Returns the tokens dropped; ``evict(0)`` does nothing."""
        check_count(n_tokens, "n_tokens")
        with self._lock:
            return self._evict_locked(n_tokens)

    def _evict_locked(self, n_tokens: int) -> int:
        out = self._tree.evict(n_tokens)
        self._pool.free(out.slots)
        self._counters.evicted_tokens += out.n_tokens
        return out.n_tokens

    def clear(self) -> int:
        """Drop every unpinned token (pinned prefixes stay until released). Returns the tokens dropped."""
        with self._lock:
            return self._evict_locked(self._tree.evictable_size)

    def resize(self, budget: int | str) -> None:
        """Give the pool a new byte budget.

        Shrinking evicts least recently used leaves until the rest fits; it never
        drops pinned tokens, and raises ``ValueError`` (cache unchanged) when they
        alone exceed the new budget. Kept KV is moved into the new pool.
        """
        with self._lock:
            pool, tree = self._pool, self._tree
            capacity = pool.capacity_for(budget)
            if capacity < 1:
                raise ValueError(
                    f"budget: {budget!r} is smaller than one token of KV ({pool.bytes_per_token} bytes); "
                    f"give at least {max(1, tree.pinned_size) * pool.bytes_per_token} bytes"
                )
            if capacity < tree.pinned_size:
                raise ValueError(
                    f"budget: {budget!r} holds {capacity} tokens of {pool.bytes_per_token} bytes, "
                    f"but {tree.pinned_size} tokens are pinned by requests in flight; give at least "
                    f"{max(1, tree.pinned_size) * pool.bytes_per_token} bytes"
                )
            if tree.size > capacity:
                self._evict_locked(tree.size - capacity)
            keep = array("q", tree.owned_slots())
            numbers = pool.resize(budget, keep)
            tree.relabel_slots(numbers)

    # -- helpers ------------------------------------------------------------

    @staticmethod
    def _path_slots(node: Node | None) -> array:
        parts: list[array] = []
        while node is not None and node.parent is not None:
            parts.append(node.slots)
            node = node.parent
        slots = array("q")
        for part in reversed(parts):
            slots += part
        return slots

    def _check(self) -> None:
        """Assert every invariant of the tree, the pool and their bookkeeping. O(n)."""
        with self._lock:
            tree, pool = self._tree, self._pool
            tree._check()
            owned = list(tree.owned_slots())
            free = list(pool.free_slots())
            assert len(set(owned)) == len(owned), "a slot is owned twice"
            assert len(set(free)) == len(free), "a slot is free twice"
            assert not set(owned) & set(free), "a slot is both owned and free"
            assert len(owned) + len(free) == pool.capacity, (
                f"{len(owned)} owned + {len(free)} free slots != capacity {pool.capacity}: a slot leaked"
            )
            assert set(owned) | set(free) == set(range(pool.capacity)), "a slot number is out of range"
            assert pool.n_used == tree.size, "pool use and tree size disagree"
            assert pool.reserved_bytes <= pool.budget, "the pool reserves more than its budget"
