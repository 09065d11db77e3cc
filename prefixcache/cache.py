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
import os
import threading
from array import array
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NamedTuple

import torch

from .pool import KVPool, LayerKV, LayerSpec
from .radix import DEVICE, HOST, Node, RadixTree
from .stats import CacheStats, Counters

__all__ = ["Hit", "PrefixCache", "SavedNode"]


class SavedNode(NamedTuple):
    """One node of the tree as :meth:`PrefixCache.save` writes it."""

    parent: int
    """Index of the parent node in the exported list; -1 under the namespace's root."""
    namespace: Hashable
    tokens: array
    """The edge's token ids (``array('i')``)."""
    rows: torch.Tensor
    """``[len(tokens), pool.width]`` KV rows on the CPU, in the pool's dtype."""
    tick: int
    """Last access; larger is more recent."""


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
    pool on ``device`` may take (``"4GiB"``, ``"512MB"``, an int). All methods take
    one lock; none of them runs a model.

    ``host_budget`` adds a second tier: KV evicted from the device pool moves to a
    pool in host memory (page-locked when the device is a GPU) instead of being
    dropped, and moves back when a request reaches it; that pool drops its least
    recently used nodes in turn. ``host_dtype`` stores the host tier in another
    dtype (``torch.int8``: quantized with a scale per token, head and layer, about
    a quarter of float32's bytes; it changes outputs slightly). ``ttl`` (seconds)
    drops entries not used for that long, checked on each request.
    """

    def __init__(
        self,
        layers: Sequence[LayerSpec],
        budget: int | str,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        host_budget: int | str | None = None,
        host_dtype: torch.dtype | None = None,
        ttl: float | None = None,
    ) -> None:
        self._pool = KVPool(layers, budget, device=device, dtype=dtype)
        self._host: KVPool | None = None
        if host_budget is not None:
            self._host = _host_pool(self._pool, host_budget, host_dtype)
        elif host_dtype is not None:
            raise ValueError(f"host_dtype: {host_dtype!r} given without a host_budget; give one to use a host tier")
        self._ttl_ns = _ttl_ns(ttl)
        self._tree = RadixTree()
        self._lock = threading.RLock()
        self._counters = Counters()
        self._user_pins: dict[tuple[Hashable, bytes], list[Node]] = {}
        self.fingerprint: str | None = None
        """Identifies the model whose KV this is (``wrap`` sets it); saved files carry it."""

    # -- properties ---------------------------------------------------------

    @property
    def pool(self) -> KVPool:
        """The KV pool on the device (read its shape; do not alloc or free behind the cache)."""
        return self._pool

    @property
    def host_pool(self) -> KVPool | None:
        """The host tier's pool, or None without one."""
        return self._host

    @property
    def tree(self) -> RadixTree:
        """The radix tree (for inspection only)."""
        return self._tree

    @property
    def stats(self) -> CacheStats:
        """A snapshot of the counters."""
        with self._lock:
            c, tree, pool, host = self._counters, self._tree, self._pool, self._host
            return CacheStats(
                requests=c.requests,
                prompt_tokens=c.prompt_tokens,
                hit_tokens=c.hit_tokens,
                inserted_tokens=c.inserted_tokens,
                evicted_tokens=c.evicted_tokens,
                passed_through=c.passed_through,
                cached_tokens=tree.tier_size(DEVICE),
                pinned_tokens=tree.pinned_size,
                capacity_tokens=pool.capacity,
                bytes_used=pool.n_used * pool.bytes_per_token,
                bytes_reserved=pool.reserved_bytes,
                nodes=tree.n_nodes,
                host_hit_tokens=c.host_hit_tokens,
                host_cached_tokens=tree.tier_size(HOST),
                host_capacity_tokens=host.capacity if host is not None else 0,
                host_bytes_used=host.n_used * host.bytes_per_token if host is not None else 0,
                host_bytes_reserved=host.reserved_bytes if host is not None else 0,
                demoted_tokens=c.demoted_tokens,
                promoted_tokens=c.promoted_tokens,
                bytes_to_host=c.bytes_to_host,
                bytes_to_device=c.bytes_to_device,
                expired_tokens=c.expired_tokens,
                user_pinned_tokens=self._user_pinned_tokens(),
            )

    def cached_length(self, tokens: Sequence[int] | torch.Tensor, *, namespace: Hashable = None) -> int:
        """How many leading ``tokens`` are cached (in either tier), without counting a
        request or touching anything. O(len(tokens))."""
        toks = as_tokens(tokens)
        check_namespace(namespace)
        with self._lock:
            return self._tree.peek(toks, namespace)

    # -- a request ----------------------------------------------------------

    def match(
        self, tokens: Sequence[int] | torch.Tensor, *, namespace: Hashable = None, max_length: int | None = None
    ) -> Hit:
        """Find and pin the longest cached prefix of ``tokens`` (at most ``max_length`` long).

        KV of the prefix found in the host tier is first copied back to the device
        (moving other device KV out as needed); if the device cannot take all of
        it, the hit ends where the device part ends. Counts one request of
        ``len(tokens)`` prompt tokens. The result must be released (``with`` or
        :meth:`Hit.release`). O(len(tokens) + log n) plus the copies.
        Raises ``TypeError``/``ValueError`` for bad tokens, namespace or max_length.
        """
        toks = as_tokens(tokens)
        check_namespace(namespace)
        if max_length is not None:
            check_count(max_length, "max_length")
        look = toks if max_length is None or max_length >= len(toks) else toks[:max_length]
        with self._lock:
            self._expire_locked()
            tree = self._tree
            found = tree.match(look, namespace)
            node, length, from_host = found.node, found.length, 0
            tree.pin(node)
            if node is not None and node.tier == HOST:
                try:
                    top, from_host = self._promote(node)
                    if top is not node:  # the device could not take it all: serve what is there
                        tree.pin(top)
                        tree.unpin(node)
                        node, length = top, _path_length(top)
                        from_host = min(from_host, length)
                except BaseException:
                    tree.unpin(node)
                    raise
            c = self._counters
            c.requests += 1
            c.prompt_tokens += len(toks)
            c.hit_tokens += length
            c.host_hit_tokens += from_host
        return Hit(length, namespace, self, _Lease(node))

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

        def write(slots: array, first: int) -> None:
            self._pool.write(slots, kv, start=offset + first, row=row)

        with self._lock:
            self._expire_locked()
            return self._store(toks, namespace, write)

    def _store(self, toks: array, namespace: Hashable, write: Callable[[array, int], None]) -> int:
        """Store the uncached rest of ``toks``: ``write(slots, first)`` fills ``slots`` with the
        KV of tokens ``first, first + 1, ...``. Holds the lock. Returns tokens stored."""
        tree, pool = self._tree, self._pool
        found = tree.match(toks, namespace)
        new = len(toks) - found.length
        if new == 0:
            return 0
        tree.pin(found.node)  # keep the path while making room
        try:
            if found.node is not None and found.node.tier == HOST and self._promote(found.node)[0] is not found.node:
                return 0  # the cached part could not come back to the device: nothing to attach to
            if new > pool.n_free:
                self._free_device(new - pool.n_free)
            fits = min(new, pool.n_free)
            if fits == 0:
                return 0
            slots = pool.alloc(fits)
            try:
                write(slots, found.length)
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

    # -- pinning and expiry -------------------------------------------------

    def pin(self, tokens: Sequence[int] | torch.Tensor, *, namespace: Hashable = None) -> None:
        """Keep the cached ``tokens`` (a system prompt, say) on the device until :meth:`unpin`.

        Pins nest. The tokens must all be cached (``warm`` or a request stores them);
        pinned KV is never evicted, moved to the host tier or expired. Raises
        ``ValueError`` (cache unchanged) when they are not cached, and when they
        would not fit on the device beside what is pinned already: pinned bytes never
        exceed the budget.
        """
        toks = as_tokens(tokens)
        check_namespace(namespace)
        if not toks:
            raise ValueError("tokens: empty; give the token ids of a cached prefix")
        with self._lock:
            tree = self._tree
            cached = tree.peek(toks, namespace)
            if cached < len(toks):
                raise ValueError(
                    f"tokens: only {cached} of their {len(toks)} tokens are cached in namespace {namespace!r}; "
                    "store them first (CachedModel.warm, or a request)"
                )
            found = tree.match(toks, namespace)
            node = found.node
            assert node is not None
            tree.pin(node)
            if node.tier == HOST and self._promote(node)[0] is not node:
                tree.unpin(node)
                raise ValueError(
                    f"tokens: {len(toks)} tokens do not fit on the device beside the {tree.pinned_size} pinned "
                    f"there (the pool holds {self._pool.capacity}); pinned bytes cannot exceed the budget"
                )
            self._user_pins.setdefault((namespace, toks.tobytes()), []).append(node)

    def unpin(self, tokens: Sequence[int] | torch.Tensor, *, namespace: Hashable = None) -> None:
        """Undo one :meth:`pin` of the same ``tokens`` and ``namespace``.

        Raises ``ValueError`` when they are not pinned."""
        toks = as_tokens(tokens)
        check_namespace(namespace)
        with self._lock:
            key = (namespace, toks.tobytes())
            nodes = self._user_pins.get(key)
            if not nodes:
                raise ValueError(f"tokens: these {len(toks)} tokens are not pinned in namespace {namespace!r}")
            self._tree.unpin(nodes.pop())
            if not nodes:
                del self._user_pins[key]

    def _user_pinned_tokens(self) -> int:
        seen: set[int] = set()
        total = 0
        for nodes in self._user_pins.values():
            for node in nodes[:1]:
                cur: Node | None = node
                while cur is not None and cur.parent is not None and id(cur) not in seen:
                    seen.add(id(cur))
                    total += len(cur.key)
                    cur = cur.parent
        return total

    def expire(self) -> int:
        """Drop what has not been used for ``ttl`` seconds now (requests do this too). Returns tokens dropped."""
        with self._lock:
            return self._expire_locked()

    def _expire_locked(self) -> int:
        if self._ttl_ns is None:
            return 0
        tree = self._tree
        cutoff = tree.now() - self._ttl_ns
        dropped = 0
        for tier in (HOST, DEVICE):  # host nodes are older than the device node above them
            victim = tree.victim(tier)
            while victim is not None and victim.tick < cutoff:
                dropped += self._drop(victim)
                victim = tree.victim(tier)
        self._counters.expired_tokens += dropped
        return dropped

    # -- memory -------------------------------------------------------------

    def evict(self, n_tokens: int) -> int:
        """Free at least ``n_tokens`` device slots, least recently used first, or all that can be.

        With a host tier the KV moves there; without one it is dropped. Returns the
        device tokens freed; ``evict(0)`` does nothing."""
        check_count(n_tokens, "n_tokens")
        with self._lock:
            return self._free_device(n_tokens)

    def _free_device(self, n_tokens: int) -> int:
        """Move least recently used device nodes to the host tier (or drop them) until
        ``n_tokens`` device slots are freed or nothing more can go."""
        tree, host = self._tree, self._host
        freed = 0
        while freed < n_tokens:
            victim = tree.victim(DEVICE)
            if victim is None:
                break
            n = len(victim.key)
            if host is not None and self._host_room(n):
                self._move(victim, HOST)
            else:
                self._drop(victim)
            freed += n
        return freed

    def _host_room(self, n: int) -> bool:
        """Drop least recently used host leaves until ``n`` host slots are free; False if they cannot be."""
        host, tree = self._host, self._tree
        assert host is not None
        if n > host.capacity:
            return False
        while host.n_free < n:
            victim = tree.victim(HOST)
            if victim is None:
                return False
            self._drop(victim)
        return True

    def _promote(self, node: Node) -> tuple[Node | None, int]:
        """Copy the host part of ``node``'s (pinned) path back to the device, top down, while
        the device can take it. Returns the deepest node of the path now on the device
        (None: not even the first) and the tokens moved."""
        pool = self._pool
        on_host: list[Node] = []
        cur = node
        while cur.tier == HOST:
            on_host.append(cur)
            assert cur.parent is not None
            cur = cur.parent
        top: Node | None = cur if cur.parent is not None else None
        moved = 0
        for up in reversed(on_host):
            n = len(up.key)
            if pool.n_free < n:
                self._free_device(n - pool.n_free)  # the path is pinned: none of it goes
            if pool.n_free < n:
                break
            self._move(up, DEVICE)
            top = up
            moved += n
        return top, moved

    def _move(self, node: Node, tier: int) -> None:
        """Copy ``node``'s KV into free slots of the other tier's pool (the caller made room),
        record the move in the tree and free the old slots; count tokens and bytes moved."""
        host, c = self._host, self._counters
        assert host is not None
        source, target = (self._pool, host) if tier == HOST else (host, self._pool)
        n = len(node.key)
        slots = target.alloc(n)
        try:
            target.write_rows(slots, source.read_rows(node.slots))
        except BaseException:
            target.free(slots)
            raise
        old = node.slots
        self._tree.move(node, tier, slots)
        source.free(old)
        moved_bytes = n * self._pool.bytes_per_token
        if tier == HOST:
            c.demoted_tokens += n
            c.bytes_to_host += moved_bytes
        else:
            c.promoted_tokens += n
            c.bytes_to_device += moved_bytes

    def _drop(self, node: Node) -> int:
        """Remove ``node`` and its subtree from the cache, freeing their slots in both tiers."""
        out = self._tree.drop(node)
        self._pool.free(out.slots)
        if self._host is not None:
            self._host.free(out.host_slots)
        self._counters.evicted_tokens += out.n_tokens
        return out.n_tokens

    def clear(self) -> int:
        """Drop every unpinned token in both tiers (pinned prefixes stay). Returns the tokens dropped."""
        with self._lock:
            dropped = 0
            for tier in (HOST, DEVICE):
                victim = self._tree.victim(tier)
                while victim is not None:
                    dropped += self._drop(victim)
                    victim = self._tree.victim(tier)
            return dropped

    def resize(self, budget: int | str, host_budget: int | str | None = None) -> None:
        """Give the device pool (and, with ``host_budget``, the host pool) a new byte budget.

        Shrinking moves least recently used KV to the host tier, or drops it, until
        the rest fits; it never drops pinned tokens, and raises ``ValueError`` (cache
        unchanged) when they alone exceed the new budget. Kept KV is moved into the
        new pool. ``host_budget`` on a cache without a host tier adds one.
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
                    f"but {tree.pinned_size} tokens are pinned; give at least "
                    f"{max(1, tree.pinned_size) * pool.bytes_per_token} bytes"
                )
            host = self._host
            if host_budget is not None:
                if host is None:
                    self._host = _host_pool(pool, host_budget, None)
                else:
                    host_capacity = host.capacity_for(host_budget)
                    if host_capacity < 1:
                        raise ValueError(
                            f"host_budget: {host_budget!r} is smaller than one token of KV "
                            f"({host.bytes_per_token} bytes)"
                        )
                    victim = tree.victim(HOST)
                    while tree.tier_size(HOST) > host_capacity and victim is not None:
                        self._drop(victim)
                        victim = tree.victim(HOST)
                    tree.relabel_slots(host.resize(host_budget, array("q", tree.owned_slots(HOST))), HOST)
            if tree.tier_size(DEVICE) > capacity:
                self._free_device(tree.tier_size(DEVICE) - capacity)
            keep = array("q", tree.owned_slots(DEVICE))
            numbers = pool.resize(budget, keep)
            tree.relabel_slots(numbers, DEVICE)

    # -- saving and loading -------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write every cached prefix and its KV to ``path`` (one safetensors file), atomically.

        The file records :attr:`fingerprint` (set by ``wrap`` from the model) so that
        :meth:`load` can refuse a file made with another model. See ``prefixcache.persist``.
        """
        from .persist import save

        save(self, path)

    def load(self, path: str | os.PathLike[str]) -> int:
        """Add the prefixes saved in ``path`` to this cache; returns the tokens stored.

        The whole file is read and checked (format, checksums, the model's fingerprint,
        layer shapes) before anything changes: a file that fails any check raises
        ``ValueError`` and leaves the cache as it was.
        """
        from .persist import load

        return load(self, path)

    def _export_nodes(self) -> list[SavedNode]:
        """Every node, parents before children, with its KV rows copied to the CPU."""
        with self._lock:
            index: dict[int, int] = {}
            out: list[SavedNode] = []
            for node in self._tree.iter_nodes():
                parent = node.parent
                assert parent is not None
                index[id(node)] = len(out)
                pool = self._pool if node.tier == DEVICE else self._host
                assert pool is not None
                rows = pool.read_rows(node.slots).to("cpu", self._pool.dtype)
                out.append(
                    SavedNode(index.get(id(parent), -1), self._tree.namespace_of(node), node.key, rows, node.tick)
                )
            return out

    def _import_path(self, tokens: array, rows: torch.Tensor, namespace: Hashable = None) -> int:
        """Store ``rows`` (``rows[i]`` the KV row of ``tokens[i]``) for the part of ``tokens``
        not cached yet, making room as :meth:`insert` does. Returns the tokens stored."""
        if rows.shape != (len(tokens), self._pool.width):
            raise ValueError(f"rows: expected shape [{len(tokens)}, {self._pool.width}], got {list(rows.shape)}")

        def write(slots: array, first: int) -> None:
            self._pool.write_rows(slots, rows[first : first + len(slots)])

        with self._lock:
            return self._store(tokens, namespace, write)

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
        """Assert every invariant of the tree, both pools and their bookkeeping. O(n)."""
        with self._lock:
            tree = self._tree
            tree._check()
            for tier, pool in ((DEVICE, self._pool), (HOST, self._host)):
                if pool is None:
                    assert tree.tier_size(tier) == 0, "KV on the host tier of a cache without one"
                    continue
                owned = list(tree.owned_slots(tier))
                free = list(pool.free_slots())
                where = "device" if tier == DEVICE else "host"
                assert len(set(owned)) == len(owned), f"a {where} slot is owned twice"
                assert len(set(free)) == len(free), f"a {where} slot is free twice"
                assert not set(owned) & set(free), f"a {where} slot is both owned and free"
                assert len(owned) + len(free) == pool.capacity, (
                    f"{len(owned)} owned + {len(free)} free {where} slots != capacity {pool.capacity}: a slot leaked"
                )
                assert set(owned) | set(free) == set(range(pool.capacity)), f"a {where} slot number is out of range"
                assert pool.n_used == tree.tier_size(tier), f"{where} pool use and tree size disagree"
                assert pool.reserved_bytes <= pool.budget, f"the {where} pool reserves more than its budget"
            for nodes in self._user_pins.values():
                assert nodes and all(node.pins > 0 and node.tier == DEVICE for node in nodes), "a user pin was lost"


def _path_length(node: Node | None) -> int:
    n = 0
    while node is not None and node.parent is not None:
        n += len(node.key)
        node = node.parent
    return n


def _ttl_ns(ttl: object) -> int | None:
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0 or ttl == float("inf"):
        raise ValueError(f"ttl: expected a number of seconds > 0 (or None for no expiry), got {ttl!r}")
    return max(1, int(ttl * 1e9))


def _host_pool(pool: KVPool, host_budget: int | str, host_dtype: torch.dtype | None) -> KVPool:
    """The host tier's pool for ``pool``: same layers, in host memory."""
    pin = pool.device.type == "cuda"
    if host_dtype == torch.int8:
        from .quant import QuantizedKVPool

        return QuantizedKVPool(pool.layers, host_budget, pin_memory=pin)
    if host_dtype is not None and (not isinstance(host_dtype, torch.dtype) or not host_dtype.is_floating_point):
        raise TypeError(f"host_dtype: expected None, torch.int8 or a floating-point torch.dtype, got {host_dtype!r}")
    return KVPool(pool.layers, host_budget, device="cpu", dtype=host_dtype or pool.dtype, pin_memory=pin)
