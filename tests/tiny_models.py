"""Tiny random-weight models of many architectures, built from configs (no download)."""

from __future__ import annotations

from functools import cache
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

VOCAB = 96

_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    head_dim=8,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

CONFIGS: dict[str, dict[str, Any]] = {
    "llama": {},
    "mistral": dict(sliding_window=None),
    "qwen2": {},
    "qwen3": {},
    "gemma": {},
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=512),
    "gpt_neox": dict(rotary_pct=0.5),
    "opt": dict(ffn_dim=64, word_embed_proj_dim=32, num_attention_heads=4),
    "phi3": {},
    "falcon": dict(new_decoder_architecture=False, multi_query=True),
    "gptj": dict(n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=512),
    "bloom": dict(n_layer=2, n_head=4),
    "olmo2": {},
    "starcoder2": dict(sliding_window=None),
}

# The architectures the issue names; the rest run in the wider sweep.
CORE = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gpt2", "gpt_neox", "opt", "phi3", "falcon"]


_NO_HEAD_DIM = {"falcon"}  # head_dim is derived there, and read-only


# Releases with a choice of experts implementation (5.x): eager, since the grouped matmul
# of the default takes no float64.
_EXPERTS = {"experts_implementation": "eager"} if hasattr(PretrainedConfig, "_experts_implementation") else {}


def from_config(config: Any, dtype: torch.dtype) -> Any:
    """``AutoModelForCausalLM.from_config`` in ``dtype``, eval mode, eager experts where the
    installed transformers has a choice."""
    return AutoModelForCausalLM.from_config(config, dtype=dtype, **_EXPERTS).eval()


def config_for(model_type: str, **overrides: Any) -> Any:
    options = {**_COMMON, **CONFIGS.get(model_type, {}), **overrides}
    if model_type in _NO_HEAD_DIM:
        options.pop("head_dim")
    return AutoConfig.for_model(model_type, **options)


@cache
def tiny_model(model_type: str, dtype: torch.dtype = torch.float64, seed: int = 0) -> Any:
    """A tiny model in eval mode; cached per (type, dtype, seed): treat it as read-only."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config_for(model_type), dtype=dtype)
    return model.eval()
