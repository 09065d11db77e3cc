"""Where the remote tier's Redis server is: ``redis://`` and ``rediss://`` URLs, checked.

    redis://[[user]:password@]host[:port][/db]      plain TCP
    rediss://[[user]:password@]host[:port][/db]     TLS

The port defaults to 6379 and the database to 0. User and password are
percent-decoded (write ``%40`` for an ``@`` in a password). Query strings and
fragments are refused rather than ignored: an option the tier does not act on
should not look as if it did.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

__all__ = ["RedisURL", "parse_redis_url"]

_ACCEPTED = "redis://[[user]:password@]host[:port][/db] or rediss://... (TLS), e.g. redis://localhost:6379/0"
_DEFAULT_PORT = 6379


class RedisURL(NamedTuple):
    """A parsed Redis URL. Its ``repr`` and :meth:`masked` never show the password."""

    tls: bool
    host: str
    port: int
    db: int
    username: str | None
    password: str | None

    def masked(self) -> str:
        """The URL with the password written as ``***``."""
        scheme = "rediss" if self.tls else "redis"
        auth = ""
        if self.username is not None or self.password is not None:
            auth = (self.username or "") + (":***" if self.password is not None else "") + "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{auth}{host}:{self.port}/{self.db}"

    def __repr__(self) -> str:
        return f"RedisURL({self.masked()!r})"


def parse_redis_url(url: object, name: str = "url") -> RedisURL:
    """Check ``url`` and split it into its parts.

    ``name`` is the argument named in errors (``wrap`` passes ``"remote"``).
    Raises ``TypeError`` for a non-str and ``ValueError`` for anything else
    wrong; the message names the argument, shows the URL with its password
    masked, says what is wrong and what is accepted.

    >>> parse_redis_url("redis://localhost")
    RedisURL('redis://localhost:6379/0')
    >>> u = parse_redis_url("rediss://app:s%40cret@10.0.0.7:6380/2")
    >>> u.tls, u.host, u.port, u.db, u.username, u.password
    (True, '10.0.0.7', 6380, 2, 'app', 's@cret')
    >>> u
    RedisURL('rediss://app:***@10.0.0.7:6380/2')
    >>> parse_redis_url("http://localhost")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: url: 'http://localhost' is not a Redis URL: the scheme must be redis or rediss, got 'http'; expected ...
    """
    if not isinstance(url, str):
        raise TypeError(f"{name}: expected a Redis URL as a str ({_ACCEPTED}), got {type(url).__name__}")

    def bad(what: str) -> ValueError:
        return ValueError(f"{name}: {_mask(url)!r} is not a Redis URL: {what}; expected {_ACCEPTED}")

    if any(c.isspace() or not c.isprintable() for c in url):
        raise bad("it holds whitespace or control characters")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss"):
        raise bad(f"the scheme must be redis or rediss, got {parts.scheme!r}" if parts.scheme else "it has no scheme")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise bad("options after '?' or '#' are not accepted")
    try:
        port = parts.port
    except ValueError:
        raise bad("the port must be a number in [1, 65535]") from None
    if port == 0:
        raise bad("the port must be a number in [1, 65535]")
    host = parts.hostname
    if not host:
        raise bad("it names no host")
    path = parts.path
    if path in ("", "/"):
        db = 0
    elif re.fullmatch(r"/[0-9]{1,5}", path):
        db = int(path[1:])
    else:
        raise bad(f"the path must be /db with db a number >= 0, got {path!r}")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    return RedisURL(scheme == "rediss", host, port or _DEFAULT_PORT, db, username, password)


def _mask(url: str) -> str:
    """``url`` with everything between the user name and the last ``@`` hidden.

    Conservative: even a URL too broken to parse never shows its password."""
    head, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    auth, _, tail = rest.rpartition("@")
    user, colon, _ = auth.partition(":")
    return f"{head}://{user}{':***' if colon else ''}@{tail}"
