"""Saving a cache to a file atomically and loading it back, through the cache's public API.

A cache is anything with ``export()``, ``restore(paths)``, ``fingerprint`` and a
``pool`` (its shape): :class:`prefixcache.cache.PrefixCache`.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from array import array
from collections.abc import Hashable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import torch

from ..kv.pool import KVPool
from .fileformat import SavedFile, SavedFileNode, SavedNodeLike, bad_file, dtype_name, encode, parse

__all__ = ["load", "save"]


class Persistable(Protocol):
    """What saving and loading need of a cache."""

    @property
    def fingerprint(self) -> str | None: ...

    @property
    def pool(self) -> KVPool: ...

    def export(self) -> Sequence[SavedNodeLike]: ...

    def restore(self, paths: Iterable[tuple[array, torch.Tensor, Hashable]]) -> int: ...


def save(cache: Persistable, path: str | os.PathLike[str]) -> None:
    """Write every prefix of ``cache`` and its KV to ``path``, one safetensors file (see
    :mod:`prefixcache.persist.fileformat`).

    The tree is copied under the cache's lock (``export``); the file is written after, to
    a temporary file in the same directory that is flushed, fsynced and then renamed onto
    ``path``, so ``path`` holds either its old content or the whole new file, never a
    part (if anything raises, the temporary file is removed). O(cached tokens) time, and
    about twice the cached KV in host memory while it runs.

    Raises ``TypeError`` for a ``cache`` that is not a PrefixCache (or whose
    ``fingerprint`` is neither a str nor None) or a ``path`` that is not a str or
    os.PathLike, ``ValueError`` for a namespace that cannot be saved (before anything is
    written), and ``OSError`` when writing fails.
    """
    target = _check_path(path)
    _check_cache(cache)
    pool = cache.pool
    nodes = cache.export()
    data = encode(nodes, fingerprint=cache.fingerprint, layers=pool.layers, dtype=pool.dtype, width=pool.width)
    del nodes
    _write_atomically(target, data)


def _write_atomically(target: str, data: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(target))
    tmp = os.path.join(directory, f".{os.path.basename(target)}.{uuid.uuid4().hex}.tmp")
    # Mode 0o666 less the umask, as for any new file; O_EXCL: never someone else's file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def load(cache: Persistable, path: str | os.PathLike[str]) -> int:
    """Add the prefixes saved in ``path`` to ``cache``; return the tokens stored.

    The whole file is read and checked before the cache changes: that it is a complete
    safetensors file with a manifest of a known format and version, that every checksum
    matches (a changed byte anywhere is found), that the tree is well formed, and that
    it fits this cache: the same model fingerprint (a file saved from another model is
    never loaded, nor one with a fingerprint into a cache without one or the other way
    round), the same layer shapes, dtype and row width.

    Prefixes are then stored least recently used first, each access replayed in its
    order, so the recency order of the saved cache is kept, and when the budget is
    smaller the most recently used prefixes are the ones kept. Prefixes already cached
    are not stored twice; loaded prefixes count as more recent than those the cache held
    before. The import holds the cache's lock throughout (``restore``).

    Raises ``TypeError`` for a ``cache`` that is not a PrefixCache or a ``path`` that is
    not a str or os.PathLike, ``FileNotFoundError`` (or another ``OSError``) when the
    file cannot be read, and ``ValueError``, naming the path and what is wrong, for
    anything about its content; in every case the cache is left as it was.
    """
    target = _check_path(path)
    _check_cache(cache)
    with open(target, "rb") as f:
        data = f.read()
    saved = parse(target, data)
    del data
    _check_fits(target, saved, cache)
    return cache.restore(_replays(saved))


def _check_fits(path: str, saved: SavedFile, cache: Persistable) -> None:
    ours = cache.fingerprint
    if saved.fingerprint != ours:
        if saved.fingerprint is None or ours is None:
            has, lacks = ("the file", "this cache") if ours is None else ("this cache", "the file")
            raise bad_file(
                path,
                f"{has} names the model its KV belongs to but {lacks} does not "
                f"(file: {saved.fingerprint!r}, cache: {ours!r}), so they cannot be matched",
            )
        raise bad_file(
            path,
            f"it was saved from another model (fingerprint {saved.fingerprint[:16]}..., this cache's model "
            f"has {ours[:16]}...); its KV would give wrong outputs here",
        )
    pool = cache.pool
    if saved.layers != pool.layers:
        raise bad_file(path, f"its KV has layers {list(saved.layers)}, but this cache's pool has {list(pool.layers)}")
    if saved.dtype != dtype_name(pool.dtype) or saved.width != pool.width:
        raise bad_file(
            path,
            f"its KV is {saved.dtype} rows of {saved.width}, but this cache's pool holds "
            f"{dtype_name(pool.dtype)} rows of {pool.width}",
        )


def _replays(saved: SavedFile) -> Iterator[tuple[array, torch.Tensor, Hashable]]:
    """The saved accesses to replay, oldest first: every leaf, and every inner node touched
    after all its children (a prompt that ended there). Each replay touches the node's
    whole path, so afterwards every node ranks among the others as it did when saved."""
    nodes = saved.nodes
    starts = array("q")
    latest_child = [-1] * len(nodes)
    start = 0
    for node in nodes:
        starts.append(start)
        start += node.length
        if node.parent >= 0:
            latest_child[node.parent] = max(latest_child[node.parent], node.tick)
    for _, i in sorted((node.tick, i) for i, node in enumerate(nodes) if node.tick > latest_child[i]):
        chain = list(_ancestry(nodes, i))
        path_tokens = array("i")
        for j in chain:
            path_tokens += saved.tokens[starts[j] : starts[j] + nodes[j].length]
        rows = torch.cat([saved.kv[starts[j] : starts[j] + nodes[j].length] for j in chain])
        yield path_tokens, rows, saved.namespaces[nodes[i].namespace]


def _ancestry(nodes: list[SavedFileNode], i: int) -> Iterable[int]:
    """``i`` and its ancestors, root side first."""
    chain = []
    while i >= 0:
        chain.append(i)
        i = nodes[i].parent
    return reversed(chain)


def _check_path(path: object) -> str:
    if isinstance(path, (str, os.PathLike)):
        name = os.fspath(path)
        if isinstance(name, str):
            return name
    raise TypeError(f"path: expected a str or os.PathLike file name, got {path!r} of type {type(path).__name__}")


def _check_cache(cache: Any) -> None:
    if not all(callable(getattr(cache, name, None)) for name in ("export", "restore")):
        raise TypeError(f"cache: expected a PrefixCache, got {type(cache).__name__}")
