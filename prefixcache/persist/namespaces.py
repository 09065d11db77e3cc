"""Namespaces in a saved file: type-tagged JSON, so that each loads back as the same value.

``None``, ``str``, ``int``, ``bool`` and tuples of these (nested too) can be saved;
each is written with a tag: ``["none"]``, ``["str", s]``, ``["int", n]``,
``["bool", b]``, ``["tuple", [...]]``.

>>> encode_namespace(("tenant", 3), ("tenant", 3))
['tuple', [['str', 'tenant'], ['int', 3]]]
>>> decode_namespace(["tuple", [["str", "tenant"], ["int", 3]]])
('tenant', 3)
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

__all__ = ["decode_namespace", "encode_namespace"]


def encode_namespace(namespace: object, whole: object) -> list[Any]:
    """``namespace`` as type-tagged JSON data; ``whole`` is the namespace named in errors.
    Raises ``ValueError`` for a value that cannot be saved."""
    if namespace is None:
        return ["none"]
    if type(namespace) is bool:
        return ["bool", namespace]
    # A subclass (a namedtuple, some enums) is saved as its plain value only when that
    # value is the same namespace: equal to it and hashing alike.
    if isinstance(namespace, int) and not isinstance(namespace, bool) and _plain(namespace, int):
        return ["int", int.__int__(namespace)]
    if isinstance(namespace, str) and _plain(namespace, str):
        return ["str", str.__str__(namespace)]
    if isinstance(namespace, tuple) and _plain(namespace, tuple):
        return ["tuple", [encode_namespace(item, whole) for item in namespace]]
    raise ValueError(
        f"namespace: {whole!r} cannot be saved: a namespace to save must be None, a str, an int, "
        f"a bool or a tuple of these, but it holds {namespace!r} of type {type(namespace).__name__}"
    )


def _plain(value: object, base: type) -> bool:
    cls = type(value)
    return cls.__eq__ is base.__eq__ and cls.__hash__ is base.__hash__


def decode_namespace(raw: object) -> Hashable:
    """The namespace ``raw`` (as :func:`encode_namespace` writes it) stands for; ``ValueError``
    for anything else."""
    try:
        return _decode(raw)
    except (ValueError, TypeError, RecursionError):
        raise ValueError(
            f'{raw!r} is not a tagged namespace (["none"], ["str", s], ["int", n], ["bool", b] or ["tuple", [...]])'
        ) from None


def _decode(raw: object) -> Hashable:
    if not isinstance(raw, list) or not raw:
        raise ValueError(raw)
    tag, *rest = raw
    if tag == "none" and not rest:
        return None
    if len(rest) == 1:
        (value,) = rest
        if tag == "bool" and isinstance(value, bool):
            return value
        if tag == "int" and isinstance(value, int) and not isinstance(value, bool):
            return int(value)
        if tag == "str" and isinstance(value, str):
            return value
        if tag == "tuple" and isinstance(value, list):
            return tuple(_decode(item) for item in value)
    raise ValueError(raw)
