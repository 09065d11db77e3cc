"""The cache's options, in one frozen object checked when made, and byte budgets.

Every entry point that builds a cache (``wrap``, ``CachedModel``, ``PrefixCache``)
takes these options as keyword arguments or as a ready ``CacheConfig``; the list
of options and their checks live here alone.

>>> CacheConfig(budget="2GiB", ttl=60).budget_bytes
2147483648
>>> CacheConfig.of(hots_budget="1GiB")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
TypeError: hots_budget: no such option; the options are budget, host_budget, host_dtype, ttl, ...
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any

import torch

from .arguments import check_int, check_number, check_seconds, parse_budget

__all__ = ["DEFAULT_BUDGET", "UNSET", "CacheConfig", "Unset", "parse_budget"]

DEFAULT_BUDGET = "1GiB"


class Unset(enum.Enum):
    """The type of :data:`UNSET`."""

    UNSET = "unset"


UNSET = Unset.UNSET
"""An argument not given (``None`` may be a value someone passed by mistake)."""


@dataclass(frozen=True)
class CacheConfig:
    """What a prefix cache may hold and for how long. Checked when made; unknown options
    are an error.

    Raises ``TypeError`` or ``ValueError`` naming the option, the value and what is
    accepted. Whether a budget holds at least one token depends on the model, so that
    is checked when the pool is made.
    """

    budget: int | str = DEFAULT_BUDGET
    """Bytes the KV pool on the model's device may take (``"4GiB"``, ``"512MB"``, an int)."""
    host_budget: int | str | None = None
    """Bytes of a second tier in host memory that KV evicted from the device moves to
    (page-locked when the model is on a GPU); ``None``: no host tier."""
    host_dtype: torch.dtype | None = None
    """The host tier's dtype: ``None`` (the model's), another floating dtype, or
    ``torch.int8`` (quantized with a scale per token, layer, K or V, and head; it
    changes outputs slightly)."""
    ttl: float | None = None
    """Seconds after which an entry nobody used is dropped (checked on each request);
    ``None``: never."""
    remote: str | None = dataclasses.field(default=None, repr=False)  # its password stays out of logs
    """``redis://[[user]:password@]host[:port][/db]`` (or ``rediss://``): a tier below the others,
    in a Redis server shared by every process that names it (see :mod:`prefixcache.remote`).
    ``None``: none."""
    remote_chunk_tokens: int = 256
    """Tokens per chunk stored in the remote tier (processes sharing KV must agree)."""
    shared_wait: float = 30.0
    """Seconds a request may wait for another request of this process that is computing the
    same uncached prefix, rather than compute it too (see :mod:`prefixcache.claims`); 0: never wait."""
    window_ratio: float = 0.5
    """For a model with sliding-window or chunked layers: window rows the window pool holds, per
    token the pool holds (see :mod:`prefixcache.stores`). 1 holds every cached token's window
    (as much as storing all layers for all tokens); less holds more tokens in the same budget,
    since a node keeps window rows only for its last window's worth of tokens."""
    state_share: float = 0.25
    """For a model with recurrent layers beside attention: the share of the budget for state
    snapshots (a model with recurrent layers only gives them nearly all of it)."""
    snapshot_interval: int = 512
    """For a model with recurrent layers: tokens between the snapshots left along a computed
    prompt (besides those at its end and where it left a cached path); 0: none between."""

    def __post_init__(self) -> None:
        parse_budget(self.budget, "budget")
        if self.host_budget is not None:
            parse_budget(self.host_budget, "host_budget")
        elif self.host_dtype is not None:
            raise ValueError(
                f"host_dtype: {self.host_dtype!r} given without a host_budget; give one to use a host tier"
            )
        host_dtype = self.host_dtype
        if host_dtype is not None and not (
            isinstance(host_dtype, torch.dtype) and (host_dtype == torch.int8 or host_dtype.is_floating_point)
        ):
            raise TypeError(
                f"host_dtype: expected None, torch.int8 or a floating-point torch.dtype, got {host_dtype!r}"
            )
        if self.remote is not None:
            from .remote.url import parse_redis_url  # checks the URL; no connection is made

            parse_redis_url(self.remote, name="remote")
        check_int(self.remote_chunk_tokens, "remote_chunk_tokens", 1, 1 << 20)
        check_seconds(self.shared_wait, "shared_wait")
        for name in ("window_ratio", "state_share"):
            check_number(getattr(self, name), name, low=0.0, high=1.0, open_low=True)
        check_int(self.snapshot_interval, "snapshot_interval", 0)
        if self.ttl is not None:
            check_number(self.ttl, "ttl", low=0.0, open_low=True)

    @classmethod
    def of(cls, config: CacheConfig | None = None, budget: Any = UNSET, **options: Any) -> CacheConfig:
        """``config`` (or the defaults) with ``budget`` (when given) and ``options`` replaced;
        ``TypeError`` for an option that does not exist or a ``config`` that is not a
        CacheConfig."""
        if budget is not UNSET:
            options["budget"] = budget
        names = [f.name for f in dataclasses.fields(cls)]
        for key in options:
            if key not in names:
                raise TypeError(f"{key}: no such option; the options are {', '.join(names)}")
        if config is None:
            return cls(**options)
        if not isinstance(config, cls):
            raise TypeError(f"config: expected a CacheConfig, got {type(config).__name__}")
        return dataclasses.replace(config, **options) if options else config

    @property
    def budget_bytes(self) -> int:
        """``budget`` in bytes."""
        return parse_budget(self.budget)

    @property
    def ttl_ns(self) -> int | None:
        """``ttl`` in nanoseconds (at least 1), or None."""
        return None if self.ttl is None else max(1, int(self.ttl * 1e9))
