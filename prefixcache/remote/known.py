"""What this process knows about chunks in Redis: stored (skip writing them again) or found bad (overwrite)."""

from __future__ import annotations

import threading
from collections import OrderedDict

from ..arguments import check_int

__all__ = ["KnownChunks"]


class KnownChunks:
    """A bounded, thread-safe memory of chunk digests: the ``capacity`` most recently seen are kept.

    A digest is *stored* once this process wrote it or read it back valid, and
    *bad* once a fetch found a value under it that :func:`~prefixcache.remote.codec.decode`
    refused; forgetting one (Redis evicted it, or it fell out of this memory) only
    means it may be written again, which is always safe.

    >>> known = KnownChunks(2)
    >>> known.stored(b"a"); known.stored(b"b"); known.bad(b"c")
    >>> known.is_stored(b"a"), known.is_stored(b"b"), known.is_bad(b"c")
    (False, True, True)
    """

    def __init__(self, capacity: int) -> None:
        check_int(capacity, "capacity", 1)
        self.capacity = capacity
        self._lock = threading.Lock()
        self._seen: OrderedDict[bytes, bool] = OrderedDict()  # digest -> stored (True) or bad (False)

    def _set(self, digest: bytes, stored: bool) -> None:
        with self._lock:
            self._seen[digest] = stored
            self._seen.move_to_end(digest)
            while len(self._seen) > self.capacity:
                self._seen.popitem(last=False)

    def stored(self, digest: bytes) -> None:
        """Redis holds a valid value for ``digest``."""
        self._set(digest, True)

    def bad(self, digest: bytes) -> None:
        """Redis holds a value for ``digest`` that must be replaced."""
        self._set(digest, False)

    def forget(self, digest: bytes) -> None:
        """Nothing is known about ``digest`` (Redis no longer has it)."""
        with self._lock:
            self._seen.pop(digest, None)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._seen.clear()

    def is_stored(self, digest: bytes) -> bool:
        with self._lock:
            return self._seen.get(digest) is True

    def is_bad(self, digest: bytes) -> bool:
        with self._lock:
            return self._seen.get(digest) is False
