"""A cache's tree and KV as plain data and back: what saving and loading
(:mod:`prefixcache.persist`) go through, and the methods of :class:`PrefixCache` that
save and load (:class:`Saving`, which it inherits)."""

from __future__ import annotations

import os
from array import array
from collections.abc import Hashable, Iterable
from typing import NamedTuple

import torch

from .. import persist
from ..arguments import as_tokens
from ..persist.io import Persistable
from .core import CacheCore

__all__ = ["SavedNode", "Saving", "export", "restore"]


class SavedNode(NamedTuple):
    """One node of the tree as :meth:`PrefixCache.export` gives it."""

    parent: int
    """Index of the parent node in the exported list; -1 under the namespace's root."""
    namespace: Hashable
    tokens: array
    """The edge's token ids (``array('i')``)."""
    rows: torch.Tensor
    """``[len(tokens), width]`` KV rows on the CPU, in the device pool's dtype."""
    tick: int
    """Last access; larger is more recent."""


def export(core: CacheCore) -> list[SavedNode]:
    """Every node, parents before children, with its KV rows copied to the CPU (under the lock)."""
    if core.stores is not None:
        raise ValueError(
            "cache: saving is not available for a model with sliding-window, chunked or recurrent layers "
            "(the file format holds full-attention KV only)"
        )
    with core.lock:
        index: dict[int, int] = {}
        out: list[SavedNode] = []
        dtype = core.pools.device.dtype
        for node in core.tree.iter_nodes(retired=False):
            parent = node.parent
            assert parent is not None
            index[id(node)] = len(out)
            rows = core.pools.pool(node.tier).read_rows(node.slots).to("cpu", dtype)
            out.append(SavedNode(index.get(id(parent), -1), core.tree.namespace_of(node), node.key, rows, node.tick))
        return out


def restore(core: CacheCore, paths: Iterable[tuple[array, torch.Tensor, Hashable]]) -> int:
    """Store each ``(tokens, rows, namespace)`` in turn (see :meth:`PrefixCache.restore`)."""
    pool = core.pools.device
    stored = 0
    with core.lock:
        for tokens, rows, namespace in paths:
            if rows.shape != (len(tokens), pool.width):
                raise ValueError(f"rows: expected shape [{len(tokens)}, {pool.width}], got {list(rows.shape)}")

            def write(slots: array, first: int, rows: torch.Tensor = rows) -> None:
                pool.write_rows(slots, rows[first : first + len(slots)])

            stored += core.store_locked(as_tokens(tokens), None, 0, namespace, write).stored
    return stored


class Saving:
    """Saving a cache to a file and loading it back (a part of :class:`PrefixCache`)."""

    _core: CacheCore

    def save(self: Persistable, path: str | os.PathLike[str]) -> None:
        """Write every cached prefix and its KV to ``path`` (one safetensors file), atomically.

        The file records :attr:`fingerprint` (set by ``wrap`` from the model) so that
        :meth:`load` can refuse a file made with another model. See :mod:`prefixcache.persist`.
        """
        persist.save(self, path)

    def load(self: Persistable, path: str | os.PathLike[str]) -> int:
        """Add the prefixes saved in ``path`` to this cache; returns the tokens stored.

        The whole file is read and checked (format, checksums, the model's fingerprint,
        layer shapes) before anything changes: a file that fails any check raises
        ``ValueError`` and leaves the cache as it was.
        """
        return persist.load(self, path)

    def export(self) -> list[SavedNode]:
        """Every node, parents before children, with its KV rows copied to the CPU (under the lock).

        Raises ``ValueError`` for a model with window or recurrent layers: their window rows
        and snapshots have no place in the file format yet."""
        return export(self._core)

    def restore(self, paths: Iterable[tuple[array, torch.Tensor, Hashable]]) -> int:
        """Store each ``(tokens, rows, namespace)`` in turn, ``rows[i]`` the KV row of ``tokens[i]``
        (``[len(tokens), width]``), for the part not cached yet, making room as :meth:`insert`
        does; the lock is held throughout. Returns the tokens stored."""
        return restore(self._core, paths)
