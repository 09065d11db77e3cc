"""Classify a model's rotary embedding from its config, and the lengths to probe it at."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from ..arguments import check_int
from .kinds import LENGTH_DEPENDENT_TYPES, POSITION_ONLY_TYPES, RopeKind
from .rule import RopeRule

__all__ = ["classify", "probe_pairs", "probe_thresholds", "rope_parameters_of", "unclassified"]

# Models whose rotary class reads a "dynamic" config with an "alpha" as fixed NTK scaling.
_NTK_ALPHA_MODELS = frozenset({"hunyuan_v1_dense", "hunyuan_v1_moe", "hunyuan_vl", "hunyuan_vl_text"})


def rope_parameters_of(config: Any) -> Mapping[str, Any] | None:
    """The rotary parameters of ``config``: ``rope_parameters`` (transformers 5), else
    ``rope_scaling`` (transformers 4, where None means the default rotation), else
    None for a config with neither.

    >>> from types import SimpleNamespace
    >>> rope_parameters_of(SimpleNamespace(rope_scaling=None, rope_theta=1e4))
    {'rope_type': 'default'}
    >>> rope_parameters_of(SimpleNamespace(n_positions=1024)) is None
    True
    """
    params = getattr(config, "rope_parameters", None)
    if params is None:
        params = getattr(config, "rope_scaling", None)
        if params is None and hasattr(config, "rope_theta"):
            return {"rope_type": "default"}
    if params is not None and not isinstance(params, Mapping):
        raise TypeError(f"config.rope_parameters: expected a dict, got {type(params).__name__}")
    return params


def classify(
    config: Any, *, known_types: Collection[str] | None = None, module_types: Collection[str] | None = None
) -> RopeRule:
    """Classify the rotary embedding of a model from its (text) ``config``.

    Reads ``model_type``, ``max_position_embeddings``,
    ``original_max_position_embeddings`` and the rotary parameters (see
    :func:`rope_parameters_of`). ``known_types`` (the keys of the installed
    transformers' ``ROPE_INIT_FUNCTIONS``) only improves the message for an
    unknown type. ``module_types`` are the ``rope_type`` values the model's
    rotary modules report, where the caller has the model: a HunYuan
    ``"dynamic"`` config with an ``alpha`` is fixed NTK scaling only where they
    say ``"ntk_alpha"`` (None: assume they do, as in transformers 5). A config
    without rotary parameters (absolute positions, ALiBi, a fixed rotation) is
    position-only. Never raises for an unknown type: the rule's kind is then
    ``UNKNOWN`` and its ``why`` says what was found.

    >>> from types import SimpleNamespace
    >>> classify(SimpleNamespace(rope_parameters={"rope_type": "yarn", "factor": 4.0})).kind.value
    'position-only'
    >>> rule = classify(SimpleNamespace(max_position_embeddings=128, original_max_position_embeddings=32,
    ...                                 rope_parameters={"rope_type": "longrope"}))
    >>> rule.bounds, rule.reuse
    ((32,), (True, True))
    >>> classify(SimpleNamespace(rope_parameters={"rope_type": "spiral"})).kind.value
    'unknown'
    """
    params = rope_parameters_of(config)
    if params is None:
        return RopeRule(RopeKind.POSITION_ONLY, (), why="no rotary parameters: positions are absolute or fixed")
    nested = _nested_parts(params)
    if nested is None:
        return _classify_one(config, params, known_types, module_types, nested=False)
    rules = [_classify_one(config, part, known_types, module_types, nested=True) for part in nested]
    return _combine(rules) if rules else RopeRule(RopeKind.POSITION_ONLY, (), why="no rotary layer")


def unclassified(known_types: Collection[str]) -> list[str]:
    """The rotary types in ``known_types`` that this module has no rule for (sorted).

    >>> unclassified(["linear", "dynamic", "spiral"])
    ['spiral']
    """
    return sorted(set(known_types) - set(POSITION_ONLY_TYPES) - set(LENGTH_DEPENDENT_TYPES))


def probe_thresholds(config: Any) -> tuple[int, ...]:
    """Lengths at which ``config`` suggests a rotation might change, to probe across
    whatever its rotary type says: every ``original_max_position_embeddings`` (the
    attribute, or in the rotary parameters) and ``max_position_embeddings`` when
    some rotary parameters have a ``factor`` or a length-dependent type. Only
    those up to ``max_position_embeddings`` (when known). Sorted, without repeats.

    >>> from types import SimpleNamespace
    >>> probe_thresholds(SimpleNamespace(max_position_embeddings=128, original_max_position_embeddings=32,
    ...                                  rope_parameters={"rope_type": "default"}))
    (32,)
    >>> probe_thresholds(SimpleNamespace(max_position_embeddings=64,
    ...                                  rope_parameters={"rope_type": "linear", "factor": 2.0}))
    (64,)
    """
    params = rope_parameters_of(config)
    parts = (_nested_parts(params) or [params]) if params is not None else []
    limit = _positive_int(getattr(config, "max_position_embeddings", None))
    found: set[int] = set()
    top = _positive_int(getattr(config, "original_max_position_embeddings", None))
    if top is not None:
        found.add(top)
    for part in parts:
        inner = _positive_int(part.get("original_max_position_embeddings"))
        if inner is not None:
            found.add(inner)
        if limit is not None and ("factor" in part or _rope_type(part) in LENGTH_DEPENDENT_TYPES):
            found.add(limit)
    return tuple(sorted(t for t in found if t >= 3 and (limit is None or t <= limit)))


def probe_pairs(threshold: int) -> tuple[tuple[int, int], ...]:
    """``(prefix, whole)`` lengths that probe a model around ``threshold``: a prefix
    cached below it served to a request below it, one cached below and served
    above, and one cached above and served above. The step past the threshold is
    an eighth of it (2 to 32 tokens), so that a rotation that changes slowly with
    the length still shows.

    >>> probe_pairs(32)
    ((28, 31), (28, 36), (33, 36))
    """
    check_int(threshold, "threshold", 3)
    step = max(2, min(32, threshold // 8))
    below = max(1, threshold - step)
    return ((below, threshold - 1), (below, threshold + step), (threshold + 1, threshold + step))


# -- helpers ----------------------------------------------------------------------


def _rope_type(params: Mapping[str, Any]) -> str:
    return str(params.get("rope_type", params.get("type", "default")))


def _positive_int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return None
    return value


def _nested_parts(params: Mapping[str, Any]) -> list[Mapping[str, Any]] | None:
    """The per-layer-type parameter dicts when ``params`` holds one per layer type, else None."""
    if not params or any(key in params for key in ("rope_type", "type", "rope_theta")):
        return None
    values = list(params.values())
    if all(v is None or isinstance(v, Mapping) for v in values):
        return [v for v in values if v is not None]
    return None


def _classify_one(
    config: Any,
    params: Mapping[str, Any],
    known_types: Collection[str] | None,
    module_types: Collection[str] | None,
    *,
    nested: bool,
) -> RopeRule:
    rope_type = _rope_type(params)
    if (
        rope_type == "dynamic"
        and params.get("alpha")
        and getattr(config, "model_type", None) in _NTK_ALPHA_MODELS
        and (module_types is None or "ntk_alpha" in module_types)
    ):
        rope_type = "ntk_alpha"
    if rope_type in POSITION_ONLY_TYPES:
        return RopeRule(RopeKind.POSITION_ONLY, (rope_type,), why=f"{rope_type}: {POSITION_ONLY_TYPES[rope_type]}")
    if rope_type == "dynamic":
        m = _positive_int(getattr(config, "max_position_embeddings", None))
        if m is None or m < 2:
            return _unknown(rope_type, "without a max_position_embeddings to scale from")
        return RopeRule(
            RopeKind.LENGTH_DEPENDENT,
            (rope_type,),
            bounds=(m - 1,),
            reuse=(True, False),
            why=(
                f"dynamic NTK rotary frequencies change, and depend on earlier calls, once a sequence reaches "
                f"max_position_embeddings ({m}) tokens: prefixes are reused only in sequences of at most {m - 1}"
            ),
        )
    if rope_type == "longrope":
        bounds = _longrope_bounds(config, params, nested=nested)
        if not bounds:
            return _unknown(rope_type, "without original_max_position_embeddings or max_position_embeddings")
        named = " and ".join(str(b) for b in bounds)
        return RopeRule(
            RopeKind.LENGTH_DEPENDENT,
            (rope_type,),
            bounds=bounds,
            reuse=(True,) * (len(bounds) + 1),
            why=(
                f"LongRoPE switches from short to long factors when a sequence is longer than {named} tokens: "
                "prefixes are reused only by sequences on the same side"
            ),
        )
    installed = known_types is not None and rope_type in known_types
    return _unknown(
        rope_type, "(the installed transformers knows it, but not its effect on reuse)" if installed else ""
    )


def _longrope_bounds(config: Any, params: Mapping[str, Any], *, nested: bool) -> tuple[int, ...]:
    top = None if nested else _positive_int(getattr(config, "original_max_position_embeddings", None))
    if top is not None:  # every transformers release reads this one first
        return (top,)
    found = {
        _positive_int(params.get("original_max_position_embeddings")),
        _positive_int(getattr(config, "max_position_embeddings", None)),  # the threshold before transformers 5
    }
    return tuple(sorted(b for b in found if b is not None))


def _unknown(rope_type: str, detail: str) -> RopeRule:
    analysed = sorted({*POSITION_ONLY_TYPES, *LENGTH_DEPENDENT_TYPES})
    why = (
        f"rotary type {rope_type!r} {detail}".rstrip()
        + f" is not one prefixcache can reuse exactly (it knows {analysed})"
    )
    return RopeRule(RopeKind.UNKNOWN, (rope_type,), reuse=(False,), why=why)


def _combine(rules: list[RopeRule]) -> RopeRule:
    """One rule for layers with several: every bound, reuse only where every rule allows it."""
    types = tuple(sorted({t for r in rules for t in r.rope_types}))
    unknown = [r for r in rules if r.kind is RopeKind.UNKNOWN]
    if unknown:
        return RopeRule(RopeKind.UNKNOWN, types, reuse=(False,), why=unknown[0].why)
    bounds = tuple(sorted({b for r in rules for b in r.bounds}))
    probe = RopeRule(RopeKind.POSITION_ONLY, types, bounds=bounds, reuse=(True,) * (len(bounds) + 1))
    reuse = tuple(all(r.regime(regime.first).reuse for r in rules) for regime in probe.regimes)
    dependent = [r for r in rules if r.kind is RopeKind.LENGTH_DEPENDENT]
    if not dependent:
        return RopeRule(RopeKind.POSITION_ONLY, types, why="; ".join(dict.fromkeys(r.why for r in rules)))
    why = "; ".join(dict.fromkeys(r.why for r in dependent))
    return RopeRule(RopeKind.LENGTH_DEPENDENT, types, bounds=bounds, reuse=reuse, why=why)
