"""The exceptions prefixcache raises on purpose.

Bad arguments raise the built-in ``ValueError`` or ``TypeError``; the classes here
name the conditions a caller may want to catch by themselves.
"""

from __future__ import annotations

__all__ = ["PoolExhaustedError", "PrefixCacheError", "UnsupportedModelError", "VerificationError"]


class PrefixCacheError(Exception):
    """Base class of prefixcache's own errors."""


class PoolExhaustedError(PrefixCacheError):
    """The KV pool has fewer free slots than asked for."""


class UnsupportedModelError(PrefixCacheError, ValueError):
    """The model's KV for a token may depend on more than the tokens before it,
    so reusing cached prefixes could change its outputs."""


class VerificationError(PrefixCacheError):
    """A request run again without the cache gave other outputs than with it
    (``wrap(..., verify=p, on_mismatch="raise")``): the cached KV no longer matches
    the model, whose weights may have changed, or the model is not one whose
    prefixes can be reused exactly."""
