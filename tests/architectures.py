"""Every causal LM type of the installed transformers, built tiny from its config, and the
checks that ``prefixcache.wrap`` either refuses it or gives exactly its outputs.

A model is built from ``AutoConfig.for_model`` defaults with every size shrunk (the names
in ``SIZES``, in the config and each config nested in it), enough layers that every kind
of layer its default pattern has appears, and sliding windows and attention chunks
shorter than the prompts, so that they are exercised. ``FAMILY`` holds what one family
needs beyond that; ``SKIP`` the families transformers cannot build tiny or run on token
ids alone. ``check(model_type)`` gives an :class:`Outcome`: exact, refused (``wrap``
raised ``UnsupportedModelError``), skipped or failed (a crash, no reuse, or a
difference). ``python -m tests.architectures [TYPE ...]`` prints the outcomes as a
README list.
"""

from __future__ import annotations

import inspect
import re
import sys
import traceback
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

import prefixcache
from prefixcache.hf.batch import left_pad

from .tiny_models import from_config

MODEL_TYPES = sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
ROOT = str(Path(__file__).resolve().parents[1]) + "/"

VOCAB = 256
WINDOW = 12
"""Sliding windows and local attention: shorter than every prompt of the checks (14 to 43 tokens)."""
CHUNK = 16
"""Attention chunks: a prompt of 36 tokens spans three."""
MAX_LAYERS = 12
"""The most layers a pattern may need before every kind of layer in it appears."""

# Attribute -> tiny value, set wherever a config (or one nested in it) has the attribute
# as an int (or a list of them, one per layer) that it does not derive from other sizes;
# None stays None ("off" or "derived"), but for the head counts ``_shrunk`` sets.
SIZES: dict[str, int] = {
    # vocabularies
    **dict.fromkeys(
        (
            "vocab_size",
            "vocab_size_per_layer_input",
            "unpadded_vocab_size",
            "decoder_vocab_size",
            "encoder_hash_byte_group_vocab",
            "pronunciation_vocab_size",
            "shape_vocab_size",
        ),
        VOCAB,
    ),
    # widths
    **dict.fromkeys(
        (
            "hidden_size",
            "n_embd",
            "d_model",
            "embed_dim",
            "emb_dim",
            "embedding_dim",
            "embedding_size",
            "attention_hidden_size",
            "hidden_size_global",
            "word_embed_proj_dim",
            "pronunciation_embed_dim",
            "shape_embed_dim",
            "ple_embed_dim",
        ),
        64,
    ),
    "hidden_size_per_layer_input": 8,
    "num_layers_per_stack": 2,
    **dict.fromkeys(
        (
            "intermediate_size",
            "ffn_dim",
            "ffn_hidden_size",
            "d_ff",
            "dff",
            "dim_ff",
            "d_inner",
            "decoder_ffn_dim",
            "encoder_ffn_dim",
            "first_dense_intermediate_size",
            "dense_intermediate_size",
            "intermediate_size_mlp",
            "mlp_only_intermediate_size",
            "lru_width",
            "feed_forward_size",
            "mlp_dim",
        ),
        64,
    ),
    **dict.fromkeys(
        (
            "moe_intermediate_size",
            "shared_expert_intermediate_size",
            "shared_intermediate_size",
            "shared_experts_intermediate_size",
            "moe_shared_expert_intermediate_size",
            "expert_ffn_hidden_size",
        ),
        32,
    ),
    **dict.fromkeys(("laurel_rank", "adapter_rank", "hc_lowrank", "loop_gate_rank", "router_hidden_size"), 8),
    # depth, outside the text model (whose depth is the pattern's, LAYER_COUNTS)
    **dict.fromkeys(
        (
            "num_hidden_layers",
            "n_layer",
            "num_layers",
            "n_layers",
            "decoder_layers",
            "encoder_layers",
            "num_decoder_layers",
            "num_encoder_layers",
            "conf_num_hidden_layers",
        ),
        2,
    ),
    # heads
    **dict.fromkeys(
        (
            "num_attention_heads",
            "n_head",
            "n_heads",
            "num_heads",
            "attention_heads",
            "decoder_attention_heads",
            "encoder_attention_heads",
            "num_decoder_attention_heads",
            "num_encoder_attention_heads",
            "swa_num_attention_heads",
            "conf_num_attention_heads",
        ),
        4,
    ),
    "swa_num_key_value_heads": 2,
    **dict.fromkeys(
        (
            "head_dim",
            "kv_channels",
            "d_kv",
            "dim_head",
            "d_head",
            "swa_head_dim",
            "attention_head_size",
            "attention_head_dim",
        ),
        16,
    ),
    "rotary_dim": 8,
    # multi-head latent attention, sparse attention indexers
    **dict.fromkeys(("qk_rope_head_dim", "qk_nope_head_dim"), 8),
    **dict.fromkeys(("v_head_dim", "kv_lora_rank", "o_lora_rank", "index_head_dim"), 16),
    "q_lora_rank": 32,
    **dict.fromkeys(("index_n_heads", "index_num_heads"), 2),
    # positions
    **dict.fromkeys(
        ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "context_length", "model_max_length"), 512
    ),
    # experts
    **dict.fromkeys(("num_experts", "n_routed_experts", "num_local_experts", "moe_num_experts"), 4),
    **dict.fromkeys(("num_experts_per_tok", "num_experts_per_token", "moe_k", "moe_top_k", "moe_topk"), 2),
    **dict.fromkeys(("n_shared_experts", "num_shared_experts", "moe_num_shared_experts"), 1),
    **dict.fromkeys(("n_group", "topk_group", "num_expert_group"), 1),
    # state-space, recurrent and linear-attention layers
    **dict.fromkeys(("state_size", "ssm_state_size", "mamba_d_state"), 8),
    **dict.fromkeys(("time_step_rank", "mamba_dt_rank"), 8),
    **dict.fromkeys(("mamba_n_heads", "mamba_num_heads"), 8),
    **dict.fromkeys(("mamba_d_head", "mamba_head_dim", "mamba_headdim"), 16),
    "mamba_d_ssm": 128,  # mamba_n_heads * mamba_d_head: 2 * hidden_size
    **dict.fromkeys(("n_groups", "mamba_n_groups", "mamba_ngroups"), 1),
    **dict.fromkeys(("linear_num_key_heads", "linear_num_heads"), 2),
    "linear_num_value_heads": 4,
    **dict.fromkeys(("linear_key_head_dim", "linear_value_head_dim", "linear_head_dim"), 16),
}

# The text model's windows, chunks and depth (a vision tower's windows are another thing).
TEXT_SIZES: dict[str, int] = {
    **dict.fromkeys(
        (
            "sliding_window",
            "sliding_window_size",
            "window_size",
            "attention_window_size",
            "local_attention",
            "local_attention_window_len",
            "keep_window_size",
        ),
        WINDOW,
    ),
    **dict.fromkeys(("attention_chunk_size", "chunk_size", "mamba_chunk_size"), CHUNK),
}
LAYER_COUNTS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
TOKEN_ID_KEYS = ("_token_id", "_token_ids", "_token_index")

# What one family needs beyond SIZES: top-level config keywords; a nested config's
# under its attribute's name (``{"vision_config": {...}}``). Most fill in what the
# default config leaves out and its model cannot do without.
FAMILY: dict[str, dict[str, Any]] = {
    # Defaults without a single attention layer, on which transformers fails (real checkpoints have some).
    "bamba": dict(attn_layer_indices=[1]),
    "granitemoehybrid": dict(layer_types=["linear_attention", "full_attention"]),
    # Defaults that leave out what the model needs.
    "cohere_compass_text": dict(rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 10000.0}}),
    "deepseek_v2": dict(num_experts_per_tok=2),
    "dots1": dict(n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1),
    "lfm2": dict(layer_types=["conv", "full_attention"]),  # the default has full attention only
    "lfm2_moe": dict(layer_types=["conv", "full_attention"], num_dense_layers=1),
    "qwen4_exp_text": dict(
        indexer_n_heads=4, indexer_kv_heads=1, indexer_head_dim=16, indexer_budget=16, indexer_compress_ratio=4
    ),
    "qwen4_exp": dict(
        text_config=dict(
            indexer_n_heads=4, indexer_kv_heads=1, indexer_head_dim=16, indexer_budget=16, indexer_compress_ratio=4
        )
    ),
    "reformer": dict(is_decoder=True, attn_layers=["local", "lsh"], axial_pos_embds_dim=[32, 32]),
    "xmod": dict(default_language="en_XX", is_decoder=True),  # else its forward asks for a language
    # Encoders that serve as causal LMs only as decoders (else their attention sees later tokens).
    **{
        family: {"is_decoder": True}
        for family in (
            "bert",
            "bert-generation",
            "big_bird",
            "camembert",
            "data2vec-text",
            "electra",
            "ernie",
            "megatron-bert",
            "rembert",
            "roberta",
            "roberta-prelayernorm",
            "roc_bert",
            "roformer",
            "xlm-roberta",
            "xlm-roberta-xl",
        )
    },
    # Counts that must agree with the layers.
    "dory": dict(n_input_layers=1, n_output_layers=1),
    "gemma3n_text": dict(
        layer_types=["sliding_attention", "full_attention"] * 2, num_hidden_layers=4, num_kv_shared_layers=2
    ),
    "gpt_neo": dict(attention_types=[[["global", "local"], 1]]),
    "zamba2": dict(layers_block_type=["linear_attention", "hybrid"]),
    "dots3_note": dict(
        vision_config=dict(
            mlp_layer_types=["dense", "sparse"], per_layer_config=None, adapter_in_dim=64, adapter_out_dim=64
        ),
        audio_config=dict(adapter_input_size=64, adapter_out_dim=64),
    ),
    "zamba": dict(num_hidden_layers=5, attn_layer_period=2, attn_layer_offset=1),  # hybrid layers 2 and 4
    # Sizes that must agree with each other.
    "mamba2": dict(num_heads=8),  # num_heads * head_dim == expand * hidden_size
    "mpt": dict(use_cache=True),  # its default turns the cache off, so generate would run uncached
    "xlstm": dict(qk_dim_factor=1.0),  # transformers' xLSTM cache fails with the default 0.5
    "zaya": dict(num_experts_per_tok=1),  # the only value it takes
}

# Families transformers cannot build tiny or run on token ids alone, and why.
SKIP: dict[str, str] = {
    "blt": "transformers' BltModel builds DynamicCache(config=BltConfig), which has no num_hidden_layers",
    "dbrx": "transformers' DbrxAttention reads attn_config.rope_theta, which DbrxAttentionConfig no longer has",
    "gemma3n": "its vision tower needs the timm package (gemma3n_text covers the text model)",
    "gemma4_assistant": "an assisted-decoding drafter: its forward needs the target model's embeddings and KV",
    "gemma4_unified_assistant": "an assisted-decoding drafter: its forward needs the target model's embeddings and KV",
    "musicgen": "a text-to-audio composite: the causal LM takes the decoder's config and audio codebook ids",
    "musicgen_melody": "a text-to-audio composite: the causal LM takes the decoder's config and audio codebook ids",
}

# Per-layer patterns: every value the default config's has must appear in the tiny one's.
PATTERNS = ("layer_types", "layers_block_type", "mlp_layer_types", "attention_layers")


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _nested(config: PretrainedConfig) -> dict[str, PretrainedConfig]:
    return {k: v for k, v in vars(config).items() if isinstance(v, PretrainedConfig)}


def _derived(config: PretrainedConfig, key: str) -> bool:
    """Whether the config computes attribute ``key`` from other sizes (no field of its own,
    or a field whose default is None): set, it could disagree with them."""
    fields = getattr(type(config), "__dataclass_fields__", None)
    if not fields:
        return False
    # An attribute may hold a field of another name, either way round (bart's d_model is
    # hidden_size, qwen3_moe's num_local_experts is num_experts).
    aliases = getattr(type(config), "attribute_map", {})
    names = {key, aliases.get(key), *(field for field, attribute in aliases.items() if attribute == key)}
    field = next((fields[name] for name in names if name in fields), None)
    return field is None or field.default is None


def _shrunk(config: PretrainedConfig, *, text: bool, moved: dict[int, int]) -> dict[str, Any]:
    """Keywords that shrink ``config``'s own sizes (not those of the configs nested in it);
    windows and chunks only in the text model's."""
    own = vars(config)  # not getattr: a heterogeneous config refuses reads of per-layer attributes
    sizes = {**SIZES, **(TEXT_SIZES if text else {})}
    found = {
        k: sizes[k]
        for k, v in own.items()
        # a list: one per layer (gemma3n's intermediate_size), where an int stands for all
        if k in sizes and (_int(v) or (isinstance(v, list) and all(map(_int, v)))) and not _derived(config, k)
    }
    if "head_dim" in own and own["head_dim"] is None:  # left None by defaults that then fail (ministral)
        found["head_dim"] = SIZES["head_dim"]
    if "qk_head_dim" in own and not _derived(config, "qk_head_dim"):  # multi-head latent attention
        found["qk_head_dim"] = found.get("qk_rope_head_dim", 0) + found.get("qk_nope_head_dim", 0)
    if "head_dim" in found and "qk_rope_head_dim" in found and own["head_dim"] == own["qk_rope_head_dim"]:
        found["head_dim"] = found["qk_rope_head_dim"]
    if "num_key_value_heads" in own:  # None in some defaults that then fail (nemotron)
        # Keep multi-head attention where the default has it, grouped queries elsewhere.
        same = own["num_key_value_heads"] == own.get("num_attention_heads")
        found["num_key_value_heads"] = found.get("num_attention_heads", 4) if same else 2
    # Token ids past the tiny vocabulary: moved to its top (``moved``, the same for every config).
    for key, value in own.items():
        if key.endswith(TOKEN_ID_KEYS) and value is not None:
            values = list(value) if isinstance(value, (list, tuple)) else [value]
            if any(v in moved for v in values if _int(v)):
                values = [moved.get(v, v) if _int(v) else v for v in values]
                found[key] = values if isinstance(value, (list, tuple)) else values[0]
    return found


def _shrunk_layer(values: dict[str, Any]) -> dict[str, Any]:
    """One layer's entry of a heterogeneous config's ``per_layer_config``, shrunk as ``_shrunk`` would."""
    found = {k: SIZES.get(k, v) if _int(v) else v for k, v in values.items()}
    if "num_key_value_heads" in values:
        same = values["num_key_value_heads"] == values.get("num_attention_heads")
        found["num_key_value_heads"] = found.get("num_attention_heads", 4) if same else 2
    return found


def _pattern(config: PretrainedConfig) -> dict[str, set[str]]:
    text = config.get_text_config(decoder=True)
    found = {}
    for name in PATTERNS:
        value = getattr(text, name, None)
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
            found[name] = set(value)
    return found


def _keywords(model_type: str, default: PretrainedConfig, layers: int) -> dict[str, Any]:
    text = default.get_text_config(decoder=True)
    moved = {v: VOCAB - 1 - i for i, v in enumerate(sorted(v for v in special_ids(default) if v >= VOCAB))}
    keywords = _shrunk(default, text=text is default, moved=moved)
    for name, sub in _nested(default).items():
        keywords[name] = {"model_type": sub.model_type, **_shrunk(sub, text=sub is text, moved=moved)}
    target = next((keywords[n] for n, s in _nested(default).items() if s is text), keywords)
    for key in LAYER_COUNTS:
        if key in target:
            target[key] = layers
    per_layer = text.to_dict().get("per_layer_config")
    if per_layer:  # a heterogeneous config: the layers that stay, each shrunk like the rest
        target["per_layer_config"] = {i: _shrunk_layer(values) for i, values in per_layer.items() if int(i) < layers}
    for key, value in FAMILY.get(model_type, {}).items():
        if isinstance(value, dict) and isinstance(keywords.get(key), dict):
            keywords[key] = {**keywords[key], **value}
        else:
            keywords[key] = value
    return keywords


def special_ids(config: PretrainedConfig) -> set[int]:
    """Every token id the config names (bos, eos, pad, image, ...), in it and nested configs."""
    found: set[int] = set()
    for conf in [config, *_nested(config).values()]:
        for key, value in vars(conf).items():
            if key.endswith(TOKEN_ID_KEYS):
                values = value if isinstance(value, (list, tuple)) else [value]
                found.update(v for v in values if _int(v))
    return found


def ordinary_ids(config: PretrainedConfig) -> list[int]:
    """The token ids a prompt may use: all but those the config names (an image token, say,
    would make a multimodal model look for an image)."""
    special = special_ids(config)
    return [t for t in range(VOCAB) if t not in special]


def tiny_config(model_type: str) -> PretrainedConfig:
    """``model_type``'s default config shrunk, with the fewest layers (2 at least) that show
    every kind of layer of its default pattern."""
    default = AutoConfig.for_model(model_type)
    want = _pattern(default)
    config, error = None, None
    for layers in range(2, MAX_LAYERS + 1):
        try:
            config = AutoConfig.for_model(model_type, **_keywords(model_type, default, layers))
        except Exception as err:  # too few layers for a fixed part of the pattern (zamba's first three)
            error = error or err
            continue
        have = _pattern(config)
        if all(values <= have.get(name, set()) for name, values in want.items()):
            return config
    if config is None and error is not None:
        raise error
    raise ValueError(f"no config of {MAX_LAYERS} layers or fewer has every kind of layer of {want}: set them in FAMILY")


def build(model_type: str) -> tuple[Any, torch.dtype]:
    """The tiny model in eval mode, seeded, in float64 where a forward pass runs in float64,
    else in float32; raises what building it or a forward pass in float32 raised."""
    config = tiny_config(model_type)
    ids = torch.tensor([ordinary_ids(config)[:4]])
    for dtype in (torch.float64, torch.float32):
        torch.manual_seed(0)
        model = from_config(config, dtype)
        try:
            with torch.no_grad():
                model(ids)
        except Exception:
            if dtype == torch.float32:
                raise
            continue  # parts fixed to float32 that float64 inputs break (xglm's mask, xlnet's einsum)
        return model, dtype
    raise AssertionError("unreachable")


# -- the checks -------------------------------------------------------------------------

BUDGET = "4MiB"
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}
"""Logits agree within this times (1 + the largest logit's magnitude)."""
ROUNDING = 1e-6
"""A float64 model that computes parts in float32 (an MoE router, queries and keys, a
softmax) decodes on its own cache exactly only to float32 rounding; its differences up to
this are let pass where its own cache, without prefixcache, differs by more than
``FLOAT64_CLEAN`` from its whole-prompt logits."""
FLOAT64_CLEAN = 1e-12
NEW_TOKENS = 6

EXACT, REFUSED, SKIPPED, FAILED = "exact", "refused", "skipped", "failed"


@dataclass(frozen=True)
class Outcome:
    """What became of one model type: exact, refused, skipped or failed, and why."""

    model_type: str
    outcome: str
    reason: str = ""
    error: BaseException | None = field(default=None, compare=False, repr=False)
    """The exception of a crash, for its traceback."""


class Difference(AssertionError):
    """The cached model's output differs from the uncached model's, or it reused nothing."""


def _describe(err: BaseException) -> str:
    """``Type: message``, the innermost frame and the innermost one in prefixcache, on one line."""
    frames = traceback.extract_tb(err.__traceback__)
    ours = [f for f in frames if "/prefixcache/" in f.filename]
    where = [f for f in (ours[-1:] + frames[-1:]) if f is not None]
    places = dict.fromkeys(f"{_short(f.filename)}:{f.lineno}" for f in where)
    message = " ".join(str(err).split())
    return f"{type(err).__name__}: {message[:300]}" + (f" (at {', '.join(places)})" if places else "")


def _short(path: str) -> str:
    """A file's path from site-packages, or from the repository's root."""
    if "site-packages/" in path:
        return path.split("site-packages/")[-1]
    return path.removeprefix(ROOT)


def _pad_id(config: PretrainedConfig) -> int:
    text = config.get_text_config(decoder=True)
    for value in (getattr(text, "pad_token_id", None), getattr(text, "eos_token_id", None)):
        value = value[0] if isinstance(value, (list, tuple)) and value else value
        if _int(value) and 0 <= value < VOCAB:
            return value
    return 0


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """From 0 at each row's first real token, as ``generate`` (and prefill) number them."""
    return (mask.cumsum(-1) - 1).clamp_min(0)


def _finite(logits: tuple[torch.Tensor, ...]) -> bool:
    return bool(torch.isfinite(torch.stack(logits)).all())


class Checks:
    """The checks of one model, in order: each runs the cached model and the model itself on
    the same input and raises :class:`Difference` where they differ. Later checks rely on
    what earlier ones cached."""

    def __init__(self, model: Any, cached: prefixcache.CachedModel, dtype: torch.dtype) -> None:
        self.model = model
        self.cached = cached
        self.tolerance = TOLERANCE[dtype]
        self.ordinary = torch.tensor(ordinary_ids(model.config))
        self.pad = _pad_id(model.config)
        self.takes_position_ids = "position_ids" in inspect.signature(model.forward).parameters
        self.generator = torch.Generator().manual_seed(0)
        self.system = self.fresh(24)
        """The prefix the prompts share (a system prompt)."""
        self.prompt = torch.cat([self.system, self.fresh(8)]).unsqueeze(0)
        """b1's and b3's."""
        self.last_output: torch.Tensor | None = None
        """The sequences of the last cached generate: a chat's next turn continues them."""
        self.batch_rows: list[torch.Tensor] = []
        self.notes: list[str] = []
        """What was compared otherwise than the checks say, and why."""
        self.dtype = dtype
        self._own_noise: float | None = None

    def steps(self) -> list[tuple[str, Callable[[], None]]]:
        return [
            ("a: prefill on a cached prefix", self.prefill_on_a_prefix),
            ("b1: generate, shared prefix", self.generate_shared_prefix),
            ("b2: generate, chat's next turn", self.generate_next_turn),
            ("b3: generate, repeated prompt", self.generate_repeated),
            ("c1: generate, left-padded batch", self.generate_batch),
            ("c2: prefill, left-padded batch", self.prefill_batch),
        ]

    # -- inputs and comparisons

    def fresh(self, n: int) -> torch.Tensor:
        """``n`` random token ids, none of them one the config names."""
        return self.ordinary[torch.randint(len(self.ordinary), (n,), generator=self.generator)]

    def compare(self, got: torch.Tensor, want: torch.Tensor, what: str, *, alone: bool = False) -> None:
        """Within the tolerance for the dtype; ``alone``: ``want`` is a row run alone, not
        padded, which a model that computes parts in float32 (Bloom's softmax) only matches
        to float32 rounding."""
        if got.shape != want.shape:
            raise Difference(f"{what}: shape {list(got.shape)}, uncached {list(want.shape)}")
        got, want = got.double(), want.double()
        diff = (got - want).abs()
        diff[got.isnan() & want.isnan()] = 0  # the model's own NaN, reproduced
        worst = float(diff.nan_to_num(nan=float("inf")).max())
        tolerance = max(self.tolerance, TOLERANCE[torch.float32]) if alone else self.tolerance
        scale = 1 + float(want.nan_to_num(nan=0).abs().max())
        if worst <= tolerance * scale:
            return
        if self.dtype == torch.float64 and worst <= ROUNDING * scale and self.own_noise() > FLOAT64_CLEAN:
            self.notes.append(
                f"held to {ROUNDING:g}: computes parts in float32 (its own cache decodes to {self.own_noise():.1g})"
            )
            return
        raise Difference(f"{what} differ by {worst:.3g} (allowed {tolerance * scale:.3g})")

    def own_noise(self) -> float:
        """The largest difference (relative to 1 + the largest logit) between the model's logits
        of whole prompts and those it computes a token at a time on its own cache, without
        prefixcache, as generate does: about 1e-16 where it computes in float64 throughout,
        float32 rounding where it computes parts in float32."""
        if self._own_noise is None:
            keyword = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
            generator = torch.Generator().manual_seed(1)
            noise = 0.0
            with torch.no_grad():
                for _ in range(2):
                    ids = self.ordinary[torch.randint(len(self.ordinary), (1, 40), generator=generator)]
                    whole = self.model(ids).logits
                    # A prompt computed in two parts (as the cache computes one of a model with
                    # recurrent layers, in segments ending where its state is kept).
                    for split in (7, 13, 26, 33):
                        out = self.model(ids[:, :split], use_cache=True)
                        fields = getattr(type(out), "__dataclass_fields__", {})
                        kv = getattr(out, "cache" if "cache" in fields else "past_key_values")
                        rest = self.model(ids[:, split:], use_cache=True, **{keyword: kv}).logits
                        want = whole[:, split:]
                        noise = max(noise, float((rest - want).abs().max()) / (1 + float(want.abs().max())))
                    for split in (20, 32):
                        out = self.model(ids[:, :split], use_cache=True)
                        for t in range(split, ids.shape[1]):
                            fields = getattr(type(out), "__dataclass_fields__", {})  # renamed in transformers 5.25
                            kv = getattr(out, "cache" if "cache" in fields else "past_key_values")
                            out = self.model(ids[:, t : t + 1], use_cache=True, **{keyword: kv})
                            want = whole[:, t]
                            diff = float((out.logits[:, -1] - want).abs().max())
                            noise = max(noise, diff / (1 + float(want.abs().max())))
            self._own_noise = noise
        return self._own_noise

    def reused(self, before: int, what: str, passed_before: int | None = None) -> None:
        """Some KV was reused, unless the cache said it ran the request without reuse
        (``stats.passed_through``, counted from ``passed_before``)."""
        stats = self.cached.cache.stats
        if passed_before is not None and stats.passed_through > passed_before:
            self.notes.append(f"{what}: run without reuse, as the cache said")
            return
        if stats.hit_tokens == before:
            raise Difference(f"{what}: no cached prefix was reused")

    def generate(self, ids: torch.Tensor, mask: torch.Tensor, what: str, *, reuse: bool = True) -> None:
        """Greedy generation, cached and not; the same tokens and step logits, and (``reuse``)
        some KV reused."""
        kwargs: dict[str, Any] = dict(
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=NEW_TOKENS,
            pad_token_id=self.pad,
            return_dict_in_generate=True,
            output_logits=True,
        )
        before, passed = self.cached.cache.stats.hit_tokens, self.cached.cache.stats.passed_through
        got = self.cached.generate(ids, **kwargs)
        self.last_output = got.sequences
        with torch.no_grad():
            want = self.model.generate(ids, **kwargs)
        if bool((mask == 0).any()) and not _finite(want.logits) and _finite(got.logits):
            # The model's own padded batch is broken (Bloom's eager attention: NaN); what
            # generate promises of each row is then what the row gives alone.
            self.notes.append(f"{what}: the uncached padded batch gives NaN; compared with each row alone")
            for r in range(ids.shape[0]):
                pad = int((mask[r] == 0).sum())
                with torch.no_grad():
                    alone = self.model.generate(
                        ids[r : r + 1, pad:], **{**kwargs, "attention_mask": mask[r : r + 1, pad:]}
                    )
                self.same(
                    got.sequences[r : r + 1, pad : pad + alone.sequences.shape[1]],
                    [step[r : r + 1] for step in got.logits[: len(alone.logits)]],
                    alone,
                    f"{what}, row {r}",
                    alone=True,
                )
        else:
            self.same(got.sequences, got.logits, want, what)
        if reuse:
            self.reused(before, what, passed)

    def same(self, sequences: torch.Tensor, logits: Any, want: Any, what: str, *, alone: bool = False) -> None:
        """The same greedy tokens and step logits as ``want``'s (see :meth:`compare`)."""
        steps = min(len(logits), len(want.logits))
        if not torch.equal(sequences, want.sequences):
            where = "lengths differ"
            if sequences.shape == want.sequences.shape:
                row, col = (sequences != want.sequences).nonzero()[0].tolist()
                where = f"first at row {row}, position {col}"
            try:
                self.compare(torch.stack(logits[:steps]), torch.stack(want.logits[:steps]), "step logits", alone=alone)
                difference = "step logits within tolerance"
            except Difference as err:
                difference = str(err)
            raise Difference(f"{what}: greedy tokens differ ({where}; {difference})")
        self.compare(torch.stack(logits), torch.stack(want.logits), f"{what}: step logits", alone=alone)

    # -- the checks

    def prefill_on_a_prefix(self) -> None:
        ids = torch.cat([self.system, self.fresh(12)]).unsqueeze(0)
        self.cached.prefill(ids[:, :20])
        res = self.cached.prefill(ids)
        if res.cached_length == 0:
            raise Difference("prefill: nothing reused after a prefill of the prompt's first 20 tokens")
        with torch.no_grad():
            want = self.model(ids).logits[:, res.cached_length :]
        self.compare(res.logits, want, f"prefill logits after {res.cached_length} cached tokens")

    def generate_shared_prefix(self) -> None:
        # What a's prefill cached may be kept apart from generate's (a model that numbers
        # positions its own way in a forward pass): reuse is asked of b2 and b3.
        self.generate(self.prompt, torch.ones_like(self.prompt), "generate", reuse=False)

    def generate_next_turn(self) -> None:
        if self.last_output is None:
            raise Difference("no previous turn: b1's generate crashed")
        ids = torch.cat([self.last_output[0], self.fresh(5)]).unsqueeze(0)
        self.generate(ids, torch.ones_like(ids), "generate")

    def generate_repeated(self) -> None:
        self.generate(self.prompt, torch.ones_like(self.prompt), "generate")

    def generate_batch(self) -> None:
        """Rows that hit different lengths. A model with window or recurrent layers can cut a
        row's prefix only where its window or state was kept: the second row's hit ends
        where nothing was, so it is first computed alone up to where the rows meet."""
        self.batch_rows = [torch.cat([self.system, self.fresh(6)]), torch.cat([self.system[:10], self.fresh(4)])]
        ids, mask = left_pad(self.batch_rows, self.pad)
        self.generate(ids, mask, "generate")

    def prefill_batch(self) -> None:
        """Both rows' prompts are cached now: each row's logits from its first computed
        position on are those of the padded batch run uncached, with position ids from 0 at
        each row's first real token, as prefill numbers them (none for a model that takes
        none)."""
        rows = [torch.cat([row, self.fresh(3)]) for row in self.batch_rows]
        ids, mask = left_pad(rows, self.pad)
        before, passed = self.cached.cache.stats.hit_tokens, self.cached.cache.stats.passed_through
        res = self.cached.prefill(ids, mask)
        self.reused(before, "prefill", passed)
        start, width = res.cached_length, ids.shape[1]
        kwargs = {"position_ids": position_ids(mask)} if self.takes_position_ids else {}
        with torch.no_grad():
            padded = self.model(ids, attention_mask=mask, **kwargs).logits
        for r, row in enumerate(rows):
            first = max(start, width - len(row))  # the logits of padding are no one's concern
            got, want = res.logits[r, first - start :], padded[r, first:]
            if torch.isfinite(want).all() or not torch.isfinite(got).all():
                self.compare(got, want, f"row {r} logits after {start} cached positions")
                continue
            self.notes.append("c2: the uncached padded batch gives NaN; compared with each row alone")
            with torch.no_grad():
                alone = self.model(row.unsqueeze(0)).logits[0, first - (width - len(row)) :]
            self.compare(got, alone, f"row {r} logits after {start} cached positions", alone=True)


def check(model_type: str) -> Outcome:
    """Build ``model_type`` tiny, wrap it and run :class:`Checks`; never raises."""
    if model_type in SKIP:
        return Outcome(model_type, SKIPPED, SKIP[model_type])
    try:
        model, dtype = build(model_type)
    except Exception as err:
        return Outcome(model_type, FAILED, f"build: {_describe(err)} (shrink it in FAMILY or SKIP it)", err)
    try:
        cached = prefixcache.wrap(model, BUDGET)
    except prefixcache.UnsupportedModelError as err:
        return Outcome(model_type, REFUSED, _without_name(" ".join(str(err).split()))[:100])
    except Exception as err:
        return Outcome(model_type, FAILED, f"wrap: crash: {_describe(err)}", err)
    checks = Checks(model, cached, dtype)
    failures: list[str] = []
    error: BaseException | None = None
    for name, step in checks.steps():  # all of them, for the whole picture: each relies only on what was cached
        try:
            step()
        except Difference as err:
            failures.append(f"{name}: {err}")
        except Exception as err:
            failures.append(f"{name}: crash: {_describe(err)}")
            error = error or err
    if failures:
        return Outcome(model_type, FAILED, " | ".join(failures), error)
    notes = ([] if dtype == torch.float64 else ["float32: the model fails in float64"]) + checks.notes
    return Outcome(model_type, EXACT, "; ".join(dict.fromkeys(notes)))


# -- reporting --------------------------------------------------------------------------


def _without_name(reason: str) -> str:
    """A refusal's reason without the model's name, so that those of one kind group."""
    return re.sub(r"^model type '[^']*': ", "", reason)


def summary(outcomes: list[Outcome]) -> str:
    """Counts of each outcome; refusals and skips grouped by reason, failures one a line."""
    by: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        by[o.outcome].append(o)
    lines = [f"architectures (transformers {transformers.__version__}): {len(outcomes)} model types"]
    lines.append(f"exact: {len(by[EXACT])}: " + ", ".join(o.model_type for o in by[EXACT]))
    lines.extend(f"  {o.model_type}: {o.reason}" for o in by[EXACT] if o.reason)
    for outcome in (REFUSED, SKIPPED):
        lines.append(f"{outcome}: {len(by[outcome])}")
        groups: dict[str, list[str]] = defaultdict(list)
        for o in by[outcome]:
            groups[o.reason].append(o.model_type)
        for reason, names in sorted(groups.items(), key=lambda item: -len(item[1])):
            lines.append(f"  {len(names)} x {reason}: {', '.join(names)}")
    lines.append(f"failed: {len(by[FAILED])}")
    lines.extend(f"  {o.model_type}: {o.reason}" for o in by[FAILED])
    return "\n".join(lines)


def readme_rows(outcomes: list[Outcome]) -> list[tuple[str, str, str]]:
    """``(model_type, outcome, reason)`` for each model type, sorted: a README's list."""
    return sorted((o.model_type, o.outcome, o.reason) for o in outcomes)


def sweep(model_types: list[str] | None = None) -> list[tuple[str, str, str]]:
    """Run :func:`check` on ``model_types`` (all by default) outside pytest: README rows."""
    return readme_rows([check(t) for t in model_types or MODEL_TYPES])


if __name__ == "__main__":
    for model_type, outcome, reason in sweep(sys.argv[1:] or None):
        print(f"- `{model_type}`: {outcome}" + (f" ({reason})" if reason else ""))
