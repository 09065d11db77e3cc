"""When to call a failing Redis server again: exponential backoff, capped, jittered, one probe at a time."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

from ..arguments import check_number

__all__ = ["Backoff"]


class Backoff:
    """Thread-safe gate in front of every call to the remote.

    While healthy, :meth:`admit` always says yes. After :meth:`failed` it says no
    until a delay has passed: ``initial * 2**(failures - 1)``, capped at ``maximum``,
    times a random factor in [0.5, 1] so that many processes do not come back in
    step. Then it admits one caller (the probe) and says no to the others for
    ``probe_window`` seconds, so a server that is down costs one timeout, not one per
    thread. :meth:`succeeded` makes it healthy again.

    >>> now = [0.0]
    >>> gate = Backoff(1.0, 8.0, probe_window=0.5, clock=lambda: now[0], jitter=lambda: 1.0)
    >>> gate.admit(), gate.failed(), gate.admit()
    (True, 1.0, False)
    >>> now[0] = 1.0
    >>> gate.admit(), gate.admit()       # one probe
    (True, False)
    >>> gate.failed(), gate.failed(), gate.failed(), gate.failed()
    (2.0, 4.0, 8.0, 8.0)
    >>> gate.succeeded(), gate.admit()
    (True, True)
    """

    def __init__(
        self,
        initial: float,
        maximum: float,
        *,
        probe_window: float,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] | None = None,
    ) -> None:
        for name, value in (("initial", initial), ("maximum", maximum), ("probe_window", probe_window)):
            check_number(value, name, open_low=True)
        if maximum < initial:
            raise ValueError(f"maximum: expected at least initial ({initial}), got {maximum!r}")
        self.initial = float(initial)
        self.maximum = float(maximum)
        self.probe_window = float(probe_window)
        self._clock = clock
        self._jitter = jitter if jitter is not None else lambda: random.uniform(0.5, 1.0)
        self._lock = threading.Lock()
        self._failures = 0
        self._until = 0.0

    @property
    def failures(self) -> int:
        """Failures in a row (0 when healthy)."""
        return self._failures

    def admit(self) -> bool:
        """True if a call may be made now. O(1)."""
        with self._lock:
            if self._failures == 0:
                return True
            now = self._clock()
            if now < self._until:
                return False
            self._until = now + self.probe_window
            return True

    def failed(self) -> float:
        """Record a failed call; return the seconds until the next one is admitted."""
        with self._lock:
            self._failures += 1
            delay = min(self.maximum, self.initial * 2.0 ** min(self._failures - 1, 64)) * self._jitter()
            self._until = self._clock() + delay
            return delay

    def succeeded(self) -> bool:
        """Record a call that worked: admit everything again. True if it ends a run of failures."""
        with self._lock:
            recovered = self._failures > 0
            self._failures = 0
            self._until = 0.0
            return recovered
