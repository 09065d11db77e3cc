"""When the cache steps aside, and the model run as it is.

A request runs without reuse, storing nothing, counted in ``stats.passed_through`` and
said once in a warning, when the cache cannot serve it exactly: options that change what
the prompt's forward pass must return or how its KV is laid out, decoding loops whose
use of a cache is not known, a cache of the caller's, a model in training mode, a padded
batch of a model that attends to cached padding, a rotary regime without exact reuse.
"""

from __future__ import annotations

from typing import Any

import torch

from .batch import Batch, check_ids, position_ids
from .kvcache import CALLER_CACHE_KEYWORDS
from .serving import Serving

__all__ = ["ATTENDS_PADDING", "PASS_THROUGH_OPTIONS", "generate_as_is", "prefill_as_is", "reason_for"]

PASS_THROUGH_OPTIONS = {
    "inputs_embeds": "the prompt is given as embeddings, not token ids",
    "assistant_model": "assisted decoding runs a second model",
    "prompt_lookup_num_tokens": "prompt lookup decoding",
    "assistant_early_exit": "assisted decoding by early exit",
    "output_attentions": "attentions of cached prompt positions would be missing",
    "output_hidden_states": "hidden states of cached prompt positions would be missing",
    "cache_implementation": "a cache class other than DynamicCache was asked for",
    "custom_generate": "a decoding loop of the caller's or from the Hub, whose use of a cache is not known",
    "dola_layers": "DoLa decoding, a decoding loop from the Hub",
    "force_words_ids": "constrained beam search, a decoding loop from the Hub",
    "constraints": "constrained beam search, a decoding loop from the Hub",
}
"""generate() options under which the cache steps aside (contrastive search and group beam
search, which transformers moved to the Hub, are named by :func:`reason_for`)."""

ATTENDS_PADDING = (
    "a left-padded batch: this model's outputs depend on the KV of cached padding (or its padded batch gives "
    "NaN), and the cache holds zeros there"
)
TRAINING = "the model is in training mode (dropout would differ)"


def reason_for(serving: Serving, batch: Batch, kwargs: dict[str, Any] | None = None) -> str | None:
    """Why a request (``generate(**kwargs)``, or a forward pass when None) over ``batch`` cannot
    be served from the cache exactly, or None. (A rotary regime's reasons are its own: :mod:`.regime`.)"""
    model = serving.model
    if model.training:
        return TRAINING
    if any(batch.pads) and not serving.positions.zeros_for_padding:
        return ATTENDS_PADDING
    if kwargs is None:
        return None
    for name, why in PASS_THROUGH_OPTIONS.items():
        value = kwargs.get(name)
        if value is not None and value is not False:
            return f"{name}: {why}"
    config = kwargs.get("generation_config") or model.generation_config
    if kwargs.get("use_cache", getattr(config, "use_cache", True)) is False:
        return "use_cache=False"
    groups = kwargs.get("num_beam_groups", getattr(config, "num_beam_groups", None))
    if groups is not None and groups > 1:
        return f"num_beam_groups={groups}: group beam search, a decoding loop from the Hub"
    alpha = kwargs.get("penalty_alpha", getattr(config, "penalty_alpha", None))
    if alpha is not None and alpha > 0 and not kwargs.get("do_sample", getattr(config, "do_sample", False)):
        return f"penalty_alpha={alpha}: contrastive search, a decoding loop from the Hub"
    for name in ("output_attentions", "output_hidden_states"):
        if getattr(config, name, False) and name not in kwargs:
            return f"generation_config.{name}: {PASS_THROUGH_OPTIONS[name]}"
    return None


def own_cache(kwargs: dict[str, Any]) -> bool:
    """Whether the caller hands ``generate`` a cache of their own (a cache of None is none)."""
    for name in (*CALLER_CACHE_KEYWORDS, "use_cache"):  # None: what model.generate does by default
        if name in kwargs and kwargs[name] is None:
            del kwargs[name]
    return any(name in kwargs for name in CALLER_CACHE_KEYWORDS)


def prefill_as_is(serving: Serving, batch: Batch, keep: int, reason: str, numbered: bool = False) -> torch.Tensor:
    """The model's logits for the whole batch (the last ``keep`` positions; 0: all), counted as
    a request served without reuse."""
    _count(serving, batch.n_tokens, len(batch.prompts), reason)
    with serving.turn:
        return logits_as_is(
            serving.model,
            batch,
            keep,
            takes_position_ids=serving.positions.forward_ids(batch, numbered),
            takes_logits_to_keep=serving.takes_logits_to_keep,
        )


def logits_as_is(
    model: Any, batch: Batch, keep: int = 0, *, takes_position_ids: bool, takes_logits_to_keep: bool
) -> torch.Tensor:
    """The model's logits for the whole batch without the cache (the last ``keep`` positions;
    0: all), with position ids counted as ``generate`` counts them where asked to."""
    kwargs: dict[str, Any] = {}
    if takes_position_ids:
        kwargs["position_ids"] = position_ids(batch.attention_mask)
    if keep and takes_logits_to_keep:
        kwargs["logits_to_keep"] = keep
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False, **kwargs)
    return out.logits[:, -keep:] if keep else out.logits


def generate_as_is(serving: Serving, input_ids: Any, attention_mask: Any, kwargs: dict[str, Any], reason: str) -> Any:
    """``model.generate`` as it is, counted as a request served without reuse."""
    if isinstance(input_ids, Batch):
        batch = input_ids
        input_ids, attention_mask, tokens, rows = batch.input_ids, batch.attention_mask, batch.n_tokens, len(batch.pads)
    else:
        ids, _ = check_ids(input_ids, vocab=serving.vocab, device=serving.device)
        tokens, rows = ids.numel(), ids.shape[0]
    _count(serving, tokens, rows, reason)
    with serving.turn:
        return serving.model.generate(input_ids, attention_mask=attention_mask, **kwargs)


def _count(serving: Serving, tokens: int, rows: int, reason: str) -> None:
    serving.cache.record_pass_through(tokens, rows)
    serving.notice(f"running the model without prefix reuse ({reason})")
