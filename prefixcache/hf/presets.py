"""Models to run without a download: built-in configurations with seeded random weights,
or a local path or hub name."""

from __future__ import annotations

from typing import Any

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

__all__ = ["PRESETS", "load_model", "transformers_version"]

PRESETS: dict[str, dict[str, Any]] = {
    # About 58M parameters: the default model of the benchmark.
    "default": dict(
        model_type="llama",
        vocab_size=32000,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    ),
    # About 0.1M parameters: for tests and examples that must run in seconds.
    "tiny": dict(
        model_type="llama",
        vocab_size=512,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    ),
    # The shape of Llama-3.2-1B (its config.json; 1,235,814,400 parameters), random weights:
    # for GPU runs at the size people serve. About 5 GB in float32, 2.5 GB in bfloat16.
    "llama-1b": dict(
        model_type="llama",
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        hidden_act="silu",
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        max_position_embeddings=131072,
        bos_token_id=128000,
        eos_token_id=128001,
        tie_word_embeddings=True,
    ),
    # About 51M parameters, Gemma-3-shaped: five sliding-window layers (window 512) to one
    # global, grouped-query attention, tied embeddings; 12 layers, two of them global.
    "gemma3": dict(
        model_type="gemma3_text",
        vocab_size=32000,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=12,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=64,
        query_pre_attn_scalar=64,
        layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 2,
        sliding_window=512,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    ),
    # About 58M parameters, Qwen3.5-shaped: three linear-attention (Gated DeltaNet) layers to
    # one full-attention (gated, grouped-query) layer; 8 layers, two of them full.
    "qwen3.5": dict(
        model_type="qwen3_5_text",
        vocab_size=32000,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=64,
        linear_num_key_heads=4,
        linear_num_value_heads=8,
        linear_key_head_dim=64,
        linear_value_head_dim=64,
        linear_conv_kernel_dim=4,
        layer_types=(["linear_attention"] * 3 + ["full_attention"]) * 2,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
    ),
}


def load_model(
    name_or_path: str | None = None,
    *,
    preset: str = "default",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> Any:
    """A causal LM in eval mode: ``name_or_path`` (a local directory or a hub name) when
    given, else a built-in config (``preset``: ``"default"``, a Llama of about 58M
    parameters, ``"tiny"``, ``"llama-1b"``, the shape of Llama-3.2-1B, ``"gemma3"``, a
    Gemma-3-shaped model of about 51M parameters with sliding-window layers, or
    ``"qwen3.5"``, a Qwen3.5-shaped one of about 58M with linear-attention layers) with
    random weights drawn from ``seed``; no download."""
    model: Any
    if name_or_path is not None:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
        return model.to(device).eval()
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    options = dict(PRESETS[preset])
    config = AutoConfig.for_model(options.pop("model_type"), **options)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.to(device).eval()


def transformers_version() -> str:
    return str(transformers.__version__)
