"""The one way the remote tier talks to Redis: through a gate that counts failures and backs off.

redis-py is imported here, when a tier is made, and nowhere else: importing
prefixcache never needs it.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from typing import Any, TypeVar

from .backoff import Backoff
from .counters import RemoteCounters
from .url import RedisURL

__all__ = ["Link"]

T = TypeVar("T")


class Link:
    """A redis-py client with a timeout on every socket operation and no retries of its own.

    :meth:`call` runs one operation (a command or a pipeline) if the backoff
    admits it, and returns its result, or None when it was skipped or failed.
    It never raises for a Redis problem: a refused or dropped connection, a
    timeout, an error reply, a reply of the wrong shape. Each failure is counted
    and starts (or lengthens) the backoff; the next admitted call reconnects, and
    when it works, ``on_recover`` runs.
    """

    def __init__(
        self,
        url: RedisURL,
        *,
        timeout: float,
        backoff: Backoff,
        counters: RemoteCounters,
        on_recover: Callable[[], None] | None = None,
    ) -> None:
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError:
            raise ImportError(
                "a remote tier needs redis-py: pip install 'prefixcache[remote]' (or pip install 'redis>=5')"
            ) from None
        self.url = url
        self.backoff = backoff
        self.counters = counters
        self._on_recover = on_recover
        # One try per call: the backoff decides when to try again, not the client.
        self.client: Any = redis.Redis(
            host=url.host,
            port=url.port,
            db=url.db,
            username=url.username,
            password=url.password,
            ssl=url.tls,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._timeouts: tuple[type[BaseException], ...] = (redis.TimeoutError, socket.timeout, TimeoutError)

    def call(self, operation: Callable[[Any], T], check: Callable[[T], bool] | None = None) -> T | None:
        """``operation(client)``, or None if the backoff said no or it failed.

        ``check`` tells whether the reply has the expected shape; one that does
        not counts as a failure (a server that answers garbage is not healthy).
        """
        if not self.backoff.admit():
            self.counters.add(skipped=1)
            return None
        try:
            result = operation(self.client)
        except self._errors as err:
            self.failed(err)
            return None
        if check is not None and not check(result):
            self.failed(None)
            return None
        if self.backoff.succeeded() and self._on_recover is not None:
            self._on_recover()
        return result

    def failed(self, err: BaseException | None) -> None:
        """Count a failed call and back off."""
        self.counters.add(errors=1, timeouts=int(isinstance(err, self._timeouts)))
        self.backoff.failed()

    def close(self) -> None:
        """Close every connection, those in use by other threads too (their calls then fail at once)."""
        pool = self.client.connection_pool
        with contextlib.suppress(*self._errors):
            pool.disconnect(inuse_connections=True)
