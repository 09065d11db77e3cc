"""Which models a prefix cache can serve exactly, and the probe that reads their KV shape.

A cached prefix may be reused only if what each layer keeps for a token depends on
nothing but the tokens before it. The config rules refuse what is known not to
(encoder-decoder models, attention that keeps the top keys of a whole sequence);
the rotary rule (:mod:`prefixcache.rope`) says where a rotation that also depends on
the sequence's length still allows reuse, and refuses an unknown rotary type; the
probe runs a short prompt, reads what each layer keeps (:mod:`.layers`: full
attention, sliding window or chunk, recurrent state; other cache layers are refused),
how the model numbers positions (:mod:`.positions`), and (unless told not to) checks
that the logits computed on a cached first part equal those of the whole prompt:
across each length where the config suggests a rotation might change, then for a
short prompt.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from ..errors import UnsupportedModelError
from ..rope import RopeKind, RopeRule, classify, probe_pairs, probe_thresholds
from .kvcache import CacheKeywords, is_dynamic_cache, model_cache, returned_cache, rope_types
from .layers import ModelLayers
from .positions import NOISE_CEILING, Positions, probe_positions

__all__ = ["SPLIT_TOLERANCE", "Probed", "input_device", "probe", "refuse_by_config", "rope_rule", "vocab_size"]

logger = logging.getLogger("prefixcache")


def refuse_by_config(config: Any) -> None:
    """Refuse, from the config alone, models whose KV is not a function of the tokens before it.
    (What each layer keeps is read from the model's cache: :mod:`.layers`.)"""
    name = getattr(config, "model_type", type(config).__name__)
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModelError(f"model type {name!r}: encoder-decoder models are not supported")
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    if getattr(text, "keep_window_size", None) is not None:
        raise UnsupportedModelError(
            f"model type {name!r}: its dynamic-mask attention keeps the top keep_window_size="
            f"{text.keep_window_size} keys among all of a sequence's, later ones included, so past that length a "
            "token's KV depends on the tokens after it"
        )


def rope_rule(model: Any) -> RopeRule:
    """The reuse rule of the model's rotary embedding (see :mod:`prefixcache.rope`), from its
    config and the types its rotary modules report; refuses an unknown type."""
    config = model.config
    name = getattr(config, "model_type", type(config).__name__)
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    rule = classify(text, known_types=rope_types(), module_types=_rotary_module_types(model))
    if rule.kind is RopeKind.UNKNOWN:
        raise UnsupportedModelError(
            f"model type {name!r}: {rule.why}; reusing its cached prefixes could change its outputs"
        )
    if rule.kind is RopeKind.LENGTH_DEPENDENT:
        logger.info("prefixcache: model type %r: %s", name, rule.why)
    return rule


def _rotary_module_types(model: Any) -> set[str]:
    """The ``rope_type`` of every rotary module of ``model`` (one per layer type where they differ)."""
    found: set[str] = set()
    for module in model.modules():
        value = getattr(module, "rope_type", None) if type(module).__name__.endswith("RotaryEmbedding") else None
        values = value.values() if isinstance(value, dict) else [value]
        found.update(v for v in values if isinstance(v, str))
    return found


class Probed(NamedTuple):
    """What :func:`probe` read of a model."""

    layers: ModelLayers
    """What each layer keeps, by kind (see :mod:`.layers`)."""
    dtype: torch.dtype
    device: torch.device
    positions: Positions
    """How it numbers positions (see :mod:`.positions`)."""


def probe(model: Any, *, check: bool, rope: RopeRule) -> Probed:
    """Run a short prompt to read every layer's KV shape, dtype and device, and how the model
    numbers positions (alone, from 0, left-padded); with ``check``, compare the logits of
    prompts run whole and in two parts (across the lengths where the config suggests a
    rotation might change, where ``rope`` lets a prefix be reused there, then a short one)
    and a ``generate`` handed an empty cache with one that makes its own."""
    name = getattr(model.config, "model_type", type(model).__name__)
    n = 12
    generator = torch.Generator().manual_seed(0)
    device = input_device(model)
    ids = torch.randint(0, vocab_size(model), (1, n), generator=generator).to(device)
    keywords = CacheKeywords.of(model)
    with torch.no_grad():
        try:
            whole = model(input_ids=ids, use_cache=True, **keywords.to_forward(model_cache(model)))
        except Exception as err:
            raise UnsupportedModelError(
                f"model type {name!r}: a forward pass with a DynamicCache failed ({type(err).__name__}: {err})"
            ) from err
        returned = returned_cache(whole)
        if not is_dynamic_cache(returned):
            raise UnsupportedModelError(
                f"model type {name!r}: its cache after a forward pass is {type(returned).__name__}, not a DynamicCache"
            )
        layers = ModelLayers.read(model, returned, n, name)
        kv = layers.kv_tensors(returned)
        states = layers.parts(returned).states
        dtype = kv[0].dtype if kv else whole.logits.dtype
        kv_device = (kv or states)[0].device
        if any(t.device != kv_device or t.dtype != dtype for t in kv) or any(t.device != kv_device for t in states):
            raise UnsupportedModelError(
                f"model type {name!r}: its layers keep KV on several devices or dtypes; put the model on one device"
            )
        takes_ids = "position_ids" in inspect.signature(model.forward).parameters
        tolerance = SPLIT_TOLERANCE.get(whole.logits.dtype, 5e-2)
        try:
            if check:
                # Before the rest: a model whose own cache cannot continue a prompt is refused for
                # that, unless the difference is within the model's own noise (measured only then).
                def noise() -> float:
                    return probe_positions(model, ids, whole.logits, takes_ids, tolerance, keywords, layers).noise

                _within_noise(lambda level: _check_split_run(model, ids, whole.logits, name, level), noise)
                _within_noise(lambda level: _check_past_windows(model, layers, name, level), noise)
            positions = probe_positions(model, ids, whole.logits, takes_ids, tolerance, keywords, layers)
            if check:
                _check_thresholds(model, rope, name, positions.noise)
                _check_generate(model, ids, name, positions.noise, keywords)
                # Last, and short: it leaves a dynamic NTK rotary embedding in its original state.
                _check_split_run(model, ids, whole.logits, name, positions.noise)
        except UnsupportedModelError:
            raise
        except Exception as err:  # the model cannot run what the cache would ask of it
            raise UnsupportedModelError(
                f"model type {name!r}: running a prompt in parts, numbered or padded as the cache would, "
                f"failed ({type(err).__name__}: {err})"
            ) from err
    return Probed(layers, dtype, kv_device, positions)


SPLIT_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-3}
"""Logits computed on a cached prefix and without it agree within this times (1 + the largest
logit's magnitude), by dtype; 5e-2 for any other."""

# The longest prompt the threshold probe runs: a few forward passes this long are cheap
# next to loading a model, and cover Phi-3's 4,096-token threshold.
_PROBE_MAX_TOKENS = 4160


FLOAT32_PARTS = 1e-7
"""What a float64 model's own cache may differ by from a whole run when it computes parts in
float32 (MoE routers, soft-capping, recurrent states): float32 rounding, 2**-24 relative."""


def _allowed(dtype: torch.dtype, noise: float) -> float:
    """The difference between a model's own cached and whole runs taken as rounding, relative to
    1 + the largest logit: the dtype's (float32 rounding in a float64 model, which may compute
    parts in float32), or more where the model's measured noise is larger."""
    floor = FLOAT32_PARTS if dtype == torch.float64 else SPLIT_TOLERANCE.get(dtype, 5e-2)
    return max(floor, 16 * min(noise, NOISE_CEILING))


def _split_difference(
    model: Any, ids: torch.Tensor, split: int, noise: float, whole_logits: torch.Tensor | None = None
) -> tuple[float, float]:
    """The largest difference between the logits of ``ids[:, split:]`` computed on top of the
    cached KV of ``ids[:, :split]`` and those of ``ids`` run whole, and the difference allowed."""
    with torch.no_grad():
        if whole_logits is None:
            whole_logits = model(input_ids=ids, use_cache=False).logits
        keywords = CacheKeywords.of(model)
        empty = model_cache(model)
        first = model(input_ids=ids[:, :split], use_cache=True, **keywords.to_forward(empty))
        rest = model(input_ids=ids[:, split:], use_cache=True, **keywords.to_forward(returned_cache(first)))
    want = whole_logits[:, split:].double()
    got = rest.logits.double()
    return float((got - want).abs().max()), _allowed(whole_logits.dtype, noise) * (1.0 + float(want.abs().max()))


def _check_split_run(model: Any, ids: torch.Tensor, whole_logits: torch.Tensor, name: str, noise: float) -> None:
    """The logits of the last tokens computed on top of the first tokens' cached KV must
    be those of the whole prompt, as they are when KV depends only on earlier tokens."""
    diff, allowed = _split_difference(model, ids, ids.shape[1] // 2, noise, whole_logits)
    if not diff <= allowed:
        raise UnsupportedModelError(
            f"model type {name!r}: logits computed on a cached prefix differ from those of the whole prompt "
            f"by {diff:.3g} (allowed {allowed:.3g}); its KV must depend on more than the tokens "
            "before each position"
        )


def _within_noise(check: Callable[[float], None], noise: Callable[[], float]) -> None:
    """``check(0.0)``; where that refuses, ``check(noise())`` decides (a failure to measure the
    noise leaves the first refusal standing)."""
    try:
        check(0.0)
    except UnsupportedModelError as strict:
        try:
            level = noise()
        except Exception:
            raise strict from None
        check(level)


def _check_past_windows(model: Any, layers: ModelLayers, name: str, noise: float) -> None:
    """A model with sliding-window or chunked layers must continue on its own cache a prompt
    longer than its windows as it computes it whole (Moshi's does not); windows too long to
    probe here are left to ``verify=``."""
    span = layers.kinds.span
    if not layers.kinds.window or span < 2:
        return
    n = 2 * span + 3
    if n > _PROBE_MAX_TOKENS:
        logger.info("prefixcache: model type %r: prompts past its %d-token windows are not probed", name, span)
        return
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(0, vocab_size(model), (1, n), generator=generator).to(input_device(model))
    for split in (span + 1, n - 2):
        diff, allowed = _split_difference(model, ids, split, noise)
        if not diff <= allowed:
            raise UnsupportedModelError(
                f"model type {name!r}: past its {span}-token attention windows, logits computed on its own cache "
                f"differ from those of the whole prompt by {diff:.3g} (allowed {allowed:.3g})"
            )


def _check_generate(model: Any, ids: torch.Tensor, name: str, noise: float, keywords: CacheKeywords) -> None:
    """``generate`` handed an empty DynamicCache (as the cache hands it one) must give what it
    gives making its own: MPT's, in transformers 5.25, grows a given cache wrongly."""
    pad = getattr(model.generation_config, "pad_token_id", None)
    eos = getattr(model.generation_config, "eos_token_id", None)
    options: dict[str, Any] = dict(
        attention_mask=torch.ones_like(ids),
        max_new_tokens=3,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=pad if pad is not None else (eos if isinstance(eos, int) else 0),
    )
    plain = model.generate(ids, **options)
    given = model.generate(ids, **options, **keywords.to_generate(model_cache(model)))
    steps = min(len(plain.logits), len(given.logits))
    want = torch.stack(plain.logits[:steps]).double()
    got = torch.stack(given.logits[:steps]).double()
    diff = float((got - want).abs().max()) if steps else 0.0
    allowed = _allowed(want.dtype if steps else ids.dtype, noise) * (1.0 + float(want.abs().max()) if steps else 1.0)
    if not torch.equal(plain.sequences, given.sequences) or not diff <= allowed:
        raise UnsupportedModelError(
            f"model type {name!r}: its generate handed an empty DynamicCache gives other outputs than without one "
            f"(logits differ by {diff:.3g}, allowed {allowed:.3g}); the cache hands it one"
        )


def _check_thresholds(model: Any, rule: RopeRule, name: str, noise: float) -> None:
    """Around each length where the config suggests a rotation might change
    (``original_max_position_embeddings``, or ``max_position_embeddings`` with a rotary
    factor), a prefix must give the whole prompt's logits wherever ``rule`` lets it be
    reused; this catches a model whose KV depends on the length when its config does not
    say so. Thresholds needing prompts over ``_PROBE_MAX_TOKENS`` are not probed."""
    config = model.config
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    generator = torch.Generator().manual_seed(1)
    for threshold in probe_thresholds(text):
        pairs = [(prefix, whole) for prefix, whole in probe_pairs(threshold) if rule.may_reuse(prefix, whole)]
        if not pairs:
            continue
        longest = max(whole for _, whole in pairs)
        if longest > _PROBE_MAX_TOKENS:
            logger.info(
                "prefixcache: model type %r: not probed across %d tokens (%d-token prompts are too slow for "
                "a check in wrap); wrap(verify=) checks requests of any length",
                name,
                threshold,
                longest,
            )
            continue
        ids = torch.randint(0, vocab_size(model), (1, longest), generator=generator).to(input_device(model))
        for prefix, whole in pairs:
            diff, allowed = _split_difference(model, ids[:, :whole], prefix, noise)
            if not diff <= allowed:
                described = ", ".join(rule.rope_types) or "none"
                raise UnsupportedModelError(
                    f"model type {name!r}: logits of a {whole}-token prompt computed on the cached KV of its "
                    f"first {prefix} tokens differ from those of the prompt run whole by {diff:.3g} (allowed "
                    f"{allowed:.3g}): its KV depends on the sequence's length around {threshold} tokens, which its "
                    f"rotary configuration ({described}) does not account for"
                )


def vocab_size(model: Any) -> int:
    """Token ids the model accepts: the rows of its input embedding."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and hasattr(embeddings, "num_embeddings"):
        return int(embeddings.num_embeddings)
    return int(model.config.get_text_config(decoder=True).vocab_size)


def input_device(model: Any) -> torch.device:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and hasattr(embeddings, "weight"):
        return embeddings.weight.device
    return torch.device(model.device)


# -- models to run without a download -------------------------------------------------
