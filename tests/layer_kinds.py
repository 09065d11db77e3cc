"""Tiny float64 models with sliding-window, chunked, linear-attention, state-space and
convolution layers, shaped like the models people run (Gemma 3, Mistral, gpt-oss, Llama 4,
Qwen3.5, Granite 4, Falcon-H1, LFM2, Mamba2), and the checks their tests share."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import transformers
from transformers import CONFIG_MAPPING, AutoConfig, DynamicCache

import prefixcache
from prefixcache.hf.kvcache import layer_roles

from .architectures import ordinary_ids, tiny_config
from .tiny_models import from_config

WINDOW = 8
"""Every sliding window and attention chunk: shorter than the prompts, which cross it."""

SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    # five sliding layers to one global, as Gemma 3
    "gemma3": ("gemma3_text", dict(layer_types=["sliding_attention"] * 5 + ["full_attention"], sliding_window=WINDOW)),
    "mistral": ("mistral", dict(sliding_window=WINDOW)),  # every layer sliding
    "gpt_oss": ("gpt_oss", dict(layer_types=["sliding_attention", "full_attention"], sliding_window=WINDOW)),
    "llama4": ("llama4_text", dict(attention_chunk_size=WINDOW)),  # chunked attention
    # three Gated DeltaNet layers to one full, as Qwen3.5
    "qwen3_5": ("qwen3_5_text", dict(layer_types=["linear_attention"] * 3 + ["full_attention"])),
    "granite4": ("granitemoehybrid", dict(layer_types=["mamba", "attention"])),
    "falcon_h1": ("falcon_h1", {}),  # every layer both: a mamba state beside attention
    "lfm2": ("lfm2", dict(layer_types=["conv", "conv", "full_attention"])),
    "mamba2": ("mamba2", {}),  # recurrent state only
}


def build(shape: str, seed: int = 0, *, held: bool = True) -> Any:
    """The tiny float64 model of ``shape`` (a key of :data:`SHAPES`), in eval mode.

    The test is skipped where the installed transformers has no such model, or (``held``)
    keeps its layers' cache in a form prefixcache cannot hold: releases before 5.14, where
    ``wrap`` refuses these models, as ``test_a_release_that_cannot_hold_a_layer_refuses_it``
    checks."""
    model_type, overrides = SHAPES[shape]
    if model_type not in CONFIG_MAPPING:
        pytest.skip(f"transformers {transformers.__version__} has no model type {model_type!r}")
    values = {**tiny_config(model_type).to_dict(), **overrides}
    if "layer_types" in overrides:
        values["num_hidden_layers"] = len(overrides["layer_types"])
    config = AutoConfig.for_model(model_type, **{k: v for k, v in values.items() if k != "model_type"})
    torch.manual_seed(seed)
    model = from_config(config, torch.float64)
    reason = unheld(model)
    if held and reason is not None:
        pytest.skip(f"transformers {transformers.__version__}: {shape} keeps its cache in a {reason}")
    return model


def unheld(model: Any) -> str | None:
    """Why prefixcache cannot hold a layer of the cache this transformers release makes for
    ``model``, or None."""
    return next((role for role in layer_roles(DynamicCache(config=model.config)) if isinstance(role, str)), None)


def tokens(model: Any, seed: int, n: int) -> torch.Tensor:
    """``n`` token ids the model takes as text (none the config names for images or audio)."""
    ordinary = torch.tensor(ordinary_ids(model.config))
    return ordinary[torch.randint(len(ordinary), (n,), generator=torch.Generator().manual_seed(seed))]


def close(got: torch.Tensor, want: torch.Tensor, tolerance: float = 1e-6) -> bool:
    """Within ``tolerance`` times 1 + the largest logit: float32 rounding, for the parts these
    float64 models compute in float32 (recurrent states, MoE routers; their own cache
    differs from a whole run by up to 1e-7). A wrong window or state is off by 1e-2 or more."""
    return float((got.double() - want.double()).abs().max()) <= tolerance * (1 + float(want.abs().max()))


def logits(model: Any, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The uncached model's logits, ``[batch, seq, vocab]``."""
    with torch.no_grad():
        if mask is None:
            return model(ids).logits
        position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
        return model(ids, attention_mask=mask, position_ids=position_ids).logits


def greedy(model: Any, ids: torch.Tensor, new: int, mask: torch.Tensor | None = None) -> Any:
    """The uncached model's greedy output with every step's logits."""
    return model.generate(
        ids, attention_mask=mask, max_new_tokens=new, do_sample=False, return_dict_in_generate=True, output_logits=True
    )


def same_generation(cached: prefixcache.CachedModel, ids: torch.Tensor, new: int, mask: Any = None) -> bool:
    """Cached and uncached greedy generate give the same tokens and close step logits."""
    got = cached.generate(
        ids, attention_mask=mask, max_new_tokens=new, do_sample=False, return_dict_in_generate=True, output_logits=True
    )
    want = greedy(cached.model, ids, new, mask)
    return torch.equal(got.sequences, want.sequences) and close(torch.stack(got.logits), torch.stack(want.logits))
