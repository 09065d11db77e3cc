"""Hugging Face integration: ``wrap(model)`` and the ``CachedModel`` it returns.

This is the only module that imports transformers; every difference between its
versions is handled here.

One request, for a left-padded batch of ``B`` prompts padded to ``P`` tokens
(row ``r`` has ``pad[r]`` padding tokens and hits ``hit[r]`` cached tokens):

    # positions, in padded coordinates, of one row:
    # [0, pad[r])            padding: masked out, zeros in the cache
    # [pad[r], C)            already cached: gathered from the pool
    # [C, P)                 computed now, then inserted
    #
    # C = min over rows of (pad[r] + hit[r]), the longest cached length all rows share

Every row's prefix KV was computed with position ids that start at 0 at its first
real token (as ``generate`` numbers them), so where it sits in a padded batch does
not change it.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import threading
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache
from transformers.cache_utils import DynamicLayer

from .cache import Hit, PrefixCache, as_tokens, check_namespace
from .errors import UnsupportedModelError
from .pool import LayerKV, LayerSpec

__all__ = ["CachedModel", "PrefillResult", "cache_from_kv", "kv_of", "load_model", "prompt_cache", "wrap"]

logger = logging.getLogger("prefixcache")

DEFAULT_BUDGET = "1GiB"

# generate() options under which the cache steps aside and the model runs as it is:
# each changes what the prompt's forward pass must return or how its KV is laid out.
_PASS_THROUGH_OPTIONS = {
    "inputs_embeds": "the prompt is given as embeddings, not token ids",
    "assistant_model": "assisted decoding runs a second model",
    "prompt_lookup_num_tokens": "prompt lookup decoding",
    "output_attentions": "attentions of cached prompt positions would be missing",
    "output_hidden_states": "hidden states of cached prompt positions would be missing",
    "cache_implementation": "a cache class other than DynamicCache was asked for",
}


class PrefillResult(NamedTuple):
    """What :meth:`CachedModel.prefill` computed."""

    logits: torch.Tensor
    """``[batch, n, vocab]``: ``logits[:, j]`` are the model's logits at position
    ``cached_length + j`` of ``input_ids`` (they predict the token after it), for
    ``j`` from 0 to ``n - 1`` where ``n = input_ids.shape[1] - cached_length``,
    or only the last ``logits_to_keep`` of them when that was asked for.
    ``logits[:, -1]`` is always the last position's."""
    cached_length: int
    """Leading positions (padding included) taken from the cache and not computed."""


@dataclass(frozen=True)
class _Batch:
    """A validated request: the batch, its mask, and each row's real tokens."""

    input_ids: torch.Tensor  # [B, P]
    attention_mask: torch.Tensor  # [B, P], left padding only
    pads: tuple[int, ...]
    rows: tuple[torch.Tensor, ...]  # row r's tokens without padding, on the CPU


def wrap(
    model: Any,
    budget: int | str = DEFAULT_BUDGET,
    *,
    host_budget: int | str | None = None,
    host_dtype: torch.dtype | None = None,
    ttl: float | None = None,
    load: str | os.PathLike[str] | None = None,
    check: bool = True,
) -> CachedModel:
    """Put a prefix cache in front of a transformers causal language model.

    The KV pool takes ``budget`` bytes (``"4GiB"``, ``"512MB"``, an int) on the
    device and in the dtype of the model's KV, which a short forward pass reads,
    together with every layer's shape. ``host_budget`` adds a host-memory tier
    that KV evicted from the device moves to (``host_dtype=torch.int8`` stores it
    quantized: smaller, slightly inexact); ``ttl`` drops entries unused for that
    many seconds; ``load`` restores a cache saved with ``cache.save(path)`` from
    this same model (see :class:`PrefixCache`). Raises :class:`UnsupportedModelError` for a
    model whose KV for a token may depend on more than the tokens before it
    (sliding-window or chunked attention, recurrent or hybrid state,
    encoder-decoder) and ``TypeError`` for something that is not a causal LM.
    ``check=False`` skips only the numerical part of the check (the one that runs
    a prompt whole and in two parts and compares the logits).
    """
    return CachedModel(model, budget, host_budget=host_budget, host_dtype=host_dtype, ttl=ttl, load=load, check=check)


class CachedModel:
    """A causal LM with a prefix cache: ``generate`` and ``prefill`` reuse cached prefixes.

    Outputs are those of the model without the cache, up to floating-point
    rounding (identical greedy tokens; logits within about 1e-12 in float64).
    Safe to use from several threads: the cache has its own lock and the
    model's forward passes run outside it.
    """

    def __init__(
        self,
        model: Any,
        budget: int | str = DEFAULT_BUDGET,
        *,
        host_budget: int | str | None = None,
        host_dtype: torch.dtype | None = None,
        ttl: float | None = None,
        load: str | os.PathLike[str] | None = None,
        check: bool = True,
    ) -> None:
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "config") or not hasattr(model, "generate"):
            raise TypeError(
                f"model: expected a transformers causal language model (a PreTrainedModel with generate), "
                f"got {type(model).__name__}"
            )
        self.model: Any = model
        _refuse_by_config(model.config)
        specs, dtype, device = _probe(model, check=check)
        self._cache = PrefixCache(
            specs, budget, device=device, dtype=dtype, host_budget=host_budget, host_dtype=host_dtype, ttl=ttl
        )
        from .persist import model_fingerprint

        self._cache.fingerprint = model_fingerprint(model)
        if load is not None:
            self._cache.load(load)
        self._vocab = vocab_size(model)
        self._accepts_position_ids = "position_ids" in inspect.signature(model.forward).parameters
        self._warned: set[str] = set()
        self._warn_lock = threading.Lock()

    @property
    def cache(self) -> PrefixCache:
        """The prefix cache (stats, clear, resize, evict)."""
        return self._cache

    @property
    def device(self) -> torch.device:
        """The device of the model's inputs."""
        return _input_device(self.model)

    def __repr__(self) -> str:
        s = self._cache.stats
        return (
            f"CachedModel({type(self.model).__name__}, {s.cached_tokens}/{s.capacity_tokens} tokens cached, "
            f"hit rate {s.hit_rate:.1%})"
        )

    # -- the entry points --------------------------------------------------

    def warm(self, prompts: Any, *, namespace: Hashable = None, pin: bool = False) -> int:
        """Store the KV of ``prompts`` (system prompts, few-shot headers) without generating.

        ``prompts`` is a 1-D tensor or list of token ids, a ``[batch, seq]`` tensor of
        unpadded prompts of one length, or a list of those. ``pin=True`` also pins each prompt (see
        :meth:`PrefixCache.pin`; undo with ``cache.unpin``). Returns how many tokens
        were computed (those already cached are not). Raises ``TypeError``/``ValueError``
        for bad input.
        """
        rows = self._warm_rows(prompts)
        check_namespace(namespace)
        computed = 0
        for row in rows:
            tokens = row.cpu()
            if self._cache.cached_length(tokens, namespace=namespace) < len(tokens):  # else nothing to compute
                res = self.prefill(row.unsqueeze(0), namespace=namespace, logits_to_keep=1)
                computed += row.numel() - res.cached_length
            if pin:
                self._cache.pin(tokens, namespace=namespace)
        return computed

    def _warm_rows(self, prompts: Any) -> list[torch.Tensor]:
        if isinstance(prompts, torch.Tensor):
            items: list[Any] = list(prompts) if prompts.dim() == 2 else [prompts]
        elif isinstance(prompts, (list, tuple)) and prompts and all(isinstance(t, int) for t in prompts):
            items = [prompts]
        elif isinstance(prompts, (list, tuple)):
            items = list(prompts)
        else:
            raise TypeError(f"prompts: expected token ids, a list of them or a tensor, got {type(prompts).__name__}")
        if not items:
            raise ValueError("prompts: no prompts given")
        rows = []
        for i, item in enumerate(items):
            if not isinstance(item, torch.Tensor):
                name = "prompts" if items[0] is prompts else f"prompts[{i}]"
                item = torch.tensor(as_tokens(item, name), dtype=torch.long, device=self.device)
            ids, _ = self._check_ids(item)
            if ids.shape[0] != 1:
                raise ValueError(f"prompts[{i}]: expected one prompt of token ids, got shape {list(item.shape)}")
            rows.append(ids[0])
        return rows

    @torch.no_grad()
    def prefill(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        namespace: Hashable = None,
        logits_to_keep: int = 0,
    ) -> PrefillResult:
        """One forward pass over what is not cached of ``input_ids``; stores the prompt's KV.

        ``input_ids`` is ``[batch, seq]`` (or ``[seq]``), left-padded with
        ``attention_mask`` when rows differ in length. Position ids start at 0 at
        each row's first real token, as ``generate`` numbers them. Returns the
        logits of the computed positions (see :class:`PrefillResult`);
        ``logits_to_keep=k`` keeps only the last ``k`` of them (0 keeps all).
        Raises ``TypeError``/``ValueError`` for bad input, leaving the cache as it was.
        """
        batch = self._validate(input_ids, attention_mask)
        check_namespace(namespace)
        if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0:
            raise ValueError(f"logits_to_keep: expected an int >= 0, got {logits_to_keep!r}")
        if self.model.training:
            self._count_pass_through(batch, "the model is in training mode (dropout would differ)")
            out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
            logits = out.logits[:, -logits_to_keep:] if logits_to_keep else out.logits
            return PrefillResult(logits, 0)
        with self._hits(batch, namespace) as (hits, length):
            kv_cache = self._cache_for(batch, hits, length)
            kwargs: dict[str, Any] = {}
            if self._accepts_position_ids:
                kwargs["position_ids"] = _position_ids(batch.attention_mask)[:, length:]
            if logits_to_keep:
                kwargs["logits_to_keep"] = logits_to_keep
            out = self.model(
                input_ids=batch.input_ids[:, length:],
                attention_mask=batch.attention_mask,
                past_key_values=kv_cache,
                use_cache=True,
                **kwargs,
            )
            logits = out.logits
            if logits_to_keep and logits.shape[1] > logits_to_keep:  # a model that ignored logits_to_keep
                logits = logits[:, -logits_to_keep:]
            self._store(batch, out.past_key_values, namespace)
        return PrefillResult(logits, length)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        namespace: Hashable = None,
        **kwargs: Any,
    ) -> Any:
        """``model.generate(input_ids, attention_mask=..., **kwargs)``, computing only what is not cached.

        Takes and returns what ``model.generate`` does. Each prompt's longest
        cached prefix is reused; afterwards the prompt's KV and, for greedy or
        sampled single sequences, the generated tokens' KV are stored, so a chat's
        next turn reuses the whole conversation. Options the cache cannot serve
        exactly (a ``past_key_values`` of the caller's, beam search, several
        sequences per prompt, assisted decoding, ``output_attentions``, ...) run
        the model as it is, without reuse, and say so once in a warning.
        Raises ``TypeError``/``ValueError`` for bad input, leaving the cache as it was.
        """
        if input_ids is None:
            input_ids = kwargs.pop("inputs", None)  # model.generate's name for it
        if kwargs.get("past_key_values") is not None:  # the caller manages the cache: hands off
            ids, _ = self._check_ids(input_ids)
            self._cache.record_pass_through(ids.numel(), ids.shape[0])
            return self.model.generate(input_ids, attention_mask=attention_mask, **kwargs)
        reason = self._pass_through_reason(kwargs)
        batch = self._validate(input_ids, attention_mask, infer_mask_from=kwargs)
        check_namespace(namespace)
        if reason is not None:
            self._count_pass_through(batch, reason)
            return self.model.generate(batch.input_ids, attention_mask=batch.attention_mask, **kwargs)
        with self._hits(batch, namespace) as (hits, length):
            kv_cache = self._cache_for(batch, hits, length)
            out = self.model.generate(
                batch.input_ids, attention_mask=batch.attention_mask, past_key_values=kv_cache, **kwargs
            )
            sequences = out if isinstance(out, torch.Tensor) else out.sequences
            generated = sequences[:, batch.input_ids.shape[1] :]
            self._store(batch, kv_cache, namespace, generated, self._eos_ids(kwargs))
        return out

    # -- steps of a request ----------------------------------------------

    @contextlib.contextmanager
    def _hits(self, batch: _Batch, namespace: Hashable) -> Iterator[tuple[list[Hit], int]]:
        """Match and pin every row (leaving its last token to compute); yield the hits and
        the common cached length C; release them all however the request ends."""
        hits: list[Hit] = []
        try:
            for row in batch.rows:
                hits.append(self._cache.match(row, namespace=namespace, max_length=len(row) - 1))
            length = min(pad + hit.length for pad, hit in zip(batch.pads, hits, strict=True))
            yield hits, length
        finally:
            for hit in hits:
                hit.release()

    def _cache_for(self, batch: _Batch, hits: list[Hit], length: int) -> DynamicCache:
        """A DynamicCache holding positions [0, length) of every row: gathered KV, zeros for padding."""
        if length == 0:
            return DynamicCache(config=self.model.config)
        pads = batch.pads
        if len(hits) == 1 and pads[0] == 0:
            # Views of the pool when the prefix's slots are a run: the model only reads
            # them (its first update concatenates them into a new tensor), and the hit
            # keeps them allocated until the request ends.
            return _filled_cache(self.model.config, self._cache.gather(hits[0], length, copy=False))
        layers = []
        gathered = [
            self._cache.gather(hit, length - pad, copy=False) if length > pad else None
            for hit, pad in zip(hits, pads, strict=True)
        ]
        for i, spec in enumerate(self._cache.pool.layers):
            keys = self._zeros(len(hits), spec.kv_heads, length, spec.key_dim)
            values = self._zeros(len(hits), spec.kv_heads, length, spec.value_dim)
            for r, rows in enumerate(gathered):
                if rows is not None:
                    keys[r, :, pads[r] :] = rows[i][0][0]
                    values[r, :, pads[r] :] = rows[i][1][0]
            layers.append((keys, values))
        return _filled_cache(self.model.config, layers)

    def _store(
        self,
        batch: _Batch,
        kv_cache: Any,
        namespace: Hashable,
        generated: torch.Tensor | None = None,
        eos_ids: torch.Tensor | None = None,
    ) -> None:
        """Insert every row's prompt, and the generated tokens whose KV was computed, into the cache.

        A finished row's later tokens are padding fed to the model; their KV is
        right for those tokens but of no use, so a row is cut after its first
        end-of-sequence token.
        """
        layers = _cache_layers(kv_cache)
        if layers is None:
            return
        positions = layers[0][0].shape[2]
        for r, row in enumerate(batch.rows):
            tokens = row
            if generated is not None and generated.shape[1] > 1:
                # The last generated token was never fed back, so it has no KV.
                fed = generated[r, : positions - batch.input_ids.shape[1]].cpu()
                if eos_ids is not None and len(fed):
                    ends = torch.isin(fed, eos_ids).nonzero()
                    fed = fed[: int(ends[0]) + 1] if len(ends) else fed
                tokens = torch.cat([row, fed])
            self._cache.insert(tokens, layers, namespace=namespace, offset=batch.pads[r], row=r)

    def _eos_ids(self, kwargs: dict[str, Any]) -> torch.Tensor | None:
        config = kwargs.get("generation_config") or self.model.generation_config
        eos = kwargs.get("eos_token_id", getattr(config, "eos_token_id", None))
        return None if eos is None else torch.as_tensor(eos).reshape(-1)

    # -- input checks ------------------------------------------------------

    def _check_ids(self, input_ids: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``input_ids`` as [batch, seq] on the model's device, and a CPU copy; or a clear error."""
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"input_ids: expected a torch.Tensor of token ids, got {type(input_ids).__name__}")
        if input_ids.dtype not in (torch.int64, torch.int32):  # what an embedding accepts as indices
            raise TypeError(f"input_ids: expected an int64 or int32 tensor, got dtype {input_ids.dtype}")
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids: expected shape [batch, seq] or [seq], got {list(input_ids.shape)}")
        if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids: empty prompt, shape {list(input_ids.shape)}")
        device = self.device
        if input_ids.device != device:
            raise ValueError(f"input_ids: on {input_ids.device}, but the model is on {device}; move it there first")
        cpu_ids = input_ids.cpu()  # one transfer; every check below runs on the CPU copy
        low, high = int(cpu_ids.min()), int(cpu_ids.max())
        if low < 0 or high >= self._vocab:
            bad = low if low < 0 else high
            raise ValueError(f"input_ids: token id {bad} is outside the vocabulary [0, {self._vocab})")
        return input_ids, cpu_ids

    def _validate(self, input_ids: Any, attention_mask: Any, infer_mask_from: dict[str, Any] | None = None) -> _Batch:
        if (
            isinstance(input_ids, torch.Tensor)
            and input_ids.dim() == 1
            and isinstance(attention_mask, torch.Tensor)
            and attention_mask.dim() == 1
        ):
            attention_mask = attention_mask.unsqueeze(0)
        input_ids, cpu_ids = self._check_ids(input_ids)
        if attention_mask is None:
            attention_mask = self._default_mask(input_ids, infer_mask_from)
        elif not isinstance(attention_mask, torch.Tensor):
            raise TypeError(f"attention_mask: expected a torch.Tensor or None, got {type(attention_mask).__name__}")
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask: shape {list(attention_mask.shape)} does not match input_ids {list(input_ids.shape)}"
            )
        if attention_mask.device != self.device:
            raise ValueError(f"attention_mask: on {attention_mask.device}, but the model is on {self.device}")
        if attention_mask.dtype.is_floating_point or attention_mask.dtype.is_complex:
            raise TypeError(
                f"attention_mask: expected an integer or bool tensor of 0 and 1, got {attention_mask.dtype}"
            )
        mask = attention_mask.to("cpu", torch.long)
        if ((mask != 0) & (mask != 1)).any():
            raise ValueError("attention_mask: values must be 0 or 1")
        # Left padding only: each row is some zeros, then ones to the end.
        ones = mask.sum(dim=1)
        width = mask.shape[1]
        expected = (torch.arange(width).unsqueeze(0) >= (width - ones).unsqueeze(1)).long()
        if not torch.equal(mask, expected):
            bad_row = int((mask != expected).any(dim=1).nonzero()[0])
            kind = "right padding" if mask[bad_row, -1] == 0 else "a hole"
            raise ValueError(
                f"attention_mask: row {bad_row} has {kind}; prompts must be left-padded "
                "(padding_side='left'), ones from the first real token to the end"
            )
        if (ones == 0).any():
            raise ValueError(f"attention_mask: row {int((ones == 0).nonzero()[0])} is all padding (an empty prompt)")
        pads = tuple(int(p) for p in (width - ones).tolist())
        rows = tuple(cpu_ids[r, pad:] for r, pad in enumerate(pads))
        return _Batch(input_ids, attention_mask, pads, rows)

    def _default_mask(self, input_ids: torch.Tensor, kwargs: dict[str, Any] | None) -> torch.Tensor:
        """The mask ``generate`` would infer without one: pad tokens masked when the pad
        token is in the input and is not an end-of-sequence token; else all ones."""
        ones = torch.ones_like(input_ids)
        if kwargs is None:
            return ones  # a forward pass does not infer a mask
        config = kwargs.get("generation_config") or self.model.generation_config
        pad = kwargs.get("pad_token_id", getattr(config, "pad_token_id", None))
        eos = kwargs.get("eos_token_id", getattr(config, "eos_token_id", None))
        if pad is None:
            return ones
        eos_ids = set(torch.as_tensor(eos).reshape(-1).tolist()) if eos is not None else set()
        pad_ids = torch.as_tensor(pad, device=input_ids.device).reshape(-1)
        is_pad = torch.isin(input_ids, pad_ids)
        if eos_ids & set(pad_ids.tolist()) or not is_pad.any():
            return ones
        return (~is_pad).long()

    def _pass_through_reason(self, kwargs: dict[str, Any]) -> str | None:
        for name, why in _PASS_THROUGH_OPTIONS.items():
            value = kwargs.get(name)
            if value is not None and value is not False:
                return f"{name}: {why}"
        if kwargs.get("use_cache") is False:
            return "use_cache=False"
        config = kwargs.get("generation_config") or self.model.generation_config
        for name in ("num_beams", "num_return_sequences"):
            value = kwargs.get(name, getattr(config, name, 1))
            if value is not None and value != 1:
                return f"{name}={value}: several sequences share one prompt's cache"
        for name in ("output_attentions", "output_hidden_states"):
            if getattr(config, name, False) and name not in kwargs:
                return f"generation_config.{name}: {_PASS_THROUGH_OPTIONS[name]}"
        if self.model.training:
            return "the model is in training mode (dropout would differ)"
        return None

    def _count_pass_through(self, batch: _Batch, reason: str) -> None:
        self._cache.record_pass_through(sum(len(row) for row in batch.rows), len(batch.rows))
        with self._warn_lock:
            if reason not in self._warned:
                self._warned.add(reason)
                logger.warning("prefixcache: running the model without prefix reuse (%s)", reason)

    def _zeros(self, *shape: int) -> torch.Tensor:
        pool = self._cache.pool
        return torch.zeros(*shape, dtype=pool.dtype, device=pool.device)


# -- the model check --------------------------------------------------------------


def _refuse_by_config(config: Any) -> None:
    """Refuse, from the config alone, models whose KV is not a function of the tokens before it."""
    name = getattr(config, "model_type", type(config).__name__)
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModelError(f"model type {name!r}: encoder-decoder models are not supported")
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    layer_types = getattr(text, "layer_types", None)
    if layer_types is not None:
        odd = sorted({t for t in layer_types if t != "full_attention"})
        if odd:
            raise UnsupportedModelError(
                f"model type {name!r}: layers of type {odd} (only full causal attention in every layer can "
                "reuse a cached prefix exactly)"
            )
    else:
        window = getattr(text, "sliding_window", None)
        if window is not None and getattr(text, "use_sliding_window", True):
            raise UnsupportedModelError(
                f"model type {name!r}: sliding-window attention (sliding_window={window}) makes a token's "
                "KV and outputs depend on how far back it may look"
            )
        if getattr(text, "attention_chunk_size", None) is not None:
            raise UnsupportedModelError(f"model type {name!r}: chunked attention is not supported")


def _probe(model: Any, *, check: bool) -> tuple[list[LayerSpec], torch.dtype, torch.device]:
    """Run a short prompt to read every layer's KV shape, dtype and device, and (with
    ``check``) compare the logits of the prompt run whole and in two parts."""
    name = getattr(model.config, "model_type", type(model).__name__)
    n = 12
    generator = torch.Generator().manual_seed(0)
    device = _input_device(model)
    ids = torch.randint(0, vocab_size(model), (1, n), generator=generator).to(device)
    with torch.no_grad():
        try:
            whole = model(input_ids=ids, past_key_values=DynamicCache(config=model.config), use_cache=True)
        except Exception as err:
            raise UnsupportedModelError(
                f"model type {name!r}: a forward pass with a DynamicCache failed ({type(err).__name__}: {err})"
            ) from err
        returned = getattr(whole, "past_key_values", None)
        layers = _cache_layers(returned, strict=True)
        if layers is None:
            raise UnsupportedModelError(
                f"model type {name!r}: its cache after a forward pass is {type(returned).__name__}, "
                "not a plain per-layer key/value DynamicCache"
            )
        specs = []
        for i, (keys, values) in enumerate(layers):
            if keys.dim() != 4 or keys.shape[2] != n or values.shape[2] != n or keys.shape[1] != values.shape[1]:
                raise UnsupportedModelError(
                    f"model type {name!r}: layer {i} keeps keys {list(keys.shape)} and values "
                    f"{list(values.shape)} for {n} tokens, not [1, kv_heads, {n}, head_dim]"
                )
            specs.append(LayerSpec(int(keys.shape[1]), int(keys.shape[3]), int(values.shape[3])))
        dtype, kv_device = layers[0][0].dtype, layers[0][0].device
        if any(k.device != kv_device or k.dtype != dtype for k, _ in layers):
            raise UnsupportedModelError(
                f"model type {name!r}: its layers keep KV on several devices or dtypes; put the model on one device"
            )
        if check:
            _check_split_run(model, ids, whole.logits, name)
    return specs, dtype, kv_device


_SPLIT_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-3}


def _check_split_run(model: Any, ids: torch.Tensor, whole_logits: torch.Tensor, name: str) -> None:
    """The logits of the last tokens computed on top of the first tokens' cached KV must
    be those of the whole prompt, as they are when KV depends only on earlier tokens."""
    split = ids.shape[1] // 2
    first = model(input_ids=ids[:, :split], past_key_values=DynamicCache(config=model.config), use_cache=True)
    rest = model(input_ids=ids[:, split:], past_key_values=first.past_key_values, use_cache=True)
    want = whole_logits[:, split:].double()
    got = rest.logits.double()
    scale = 1.0 + float(want.abs().max())
    diff = float((got - want).abs().max())
    tolerance = _SPLIT_TOLERANCE.get(whole_logits.dtype, 5e-2)
    if not diff <= tolerance * scale:
        raise UnsupportedModelError(
            f"model type {name!r}: logits computed on a cached prefix differ from those of the whole prompt "
            f"by {diff:.3g} (allowed {tolerance * scale:.3g}); its KV must depend on more than the tokens "
            "before each position"
        )


def _filled_cache(config: Any, layers: list[LayerKV]) -> DynamicCache:
    """A DynamicCache holding ``layers``, without copying them.

    ``update`` would concatenate each tensor onto an empty one, a full copy of the
    prefix; instead each layer is initialised by an empty update and then given
    the tensors. Should a layer not take them, it falls back to ``update``.
    """
    cache = DynamicCache(config=config)
    for i, (keys, values) in enumerate(layers):
        cache.update(keys[:, :, :0], values[:, :, :0], i)
        layer: Any = cache.layers[i]
        if type(layer) is DynamicLayer:
            layer.keys, layer.values = keys, values
        else:
            cache.update(keys, values, i)
    if cache.get_seq_length() != layers[0][0].shape[2]:
        raise RuntimeError("prefixcache: a DynamicCache did not take the prefix KV; please report this")
    return cache


def prompt_cache(model: Any, input_ids: torch.Tensor) -> DynamicCache:
    """The KV of ``input_ids`` in a DynamicCache, by one forward pass: the prompt-reuse
    recipe of the transformers documentation (copy it before each ``generate``)."""
    with torch.no_grad():
        return model(
            input_ids=input_ids, past_key_values=DynamicCache(config=model.config), use_cache=True
        ).past_key_values


def cache_from_kv(model: Any, layers: list[LayerKV]) -> DynamicCache:
    """A DynamicCache for ``model`` holding ``layers`` (per layer ``(keys, values)``), not copied."""
    return _filled_cache(model.config, layers)


def kv_of(cache: Any) -> list[LayerKV]:
    """The per-layer ``(keys, values)`` of a plain DynamicCache; ``ValueError`` for any other cache."""
    layers = _cache_layers(cache)
    if layers is None:
        raise ValueError(f"cache: expected a DynamicCache of key/value layers, got {type(cache).__name__}")
    return layers


def _cache_layers(cache: Any, *, strict: bool = False) -> list[LayerKV] | None:
    """The per-layer (keys, values) of a plain DynamicCache, or None for any other cache.

    ``strict`` also refuses layers of any class but the plain full-attention one.
    """
    if not isinstance(cache, DynamicCache):
        return None
    out = []
    for layer in cache.layers:
        if strict and type(layer) is not DynamicLayer:
            return None
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor):
            return None
        out.append((keys, values))
    return out or None


# -- small helpers ------------------------------------------------------------------


def _position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Position ids counted from each row's first real token, as ``generate`` makes them."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


def vocab_size(model: Any) -> int:
    """Token ids the model accepts: the rows of its input embedding."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and hasattr(embeddings, "num_embeddings"):
        return int(embeddings.num_embeddings)
    return int(model.config.get_text_config(decoder=True).vocab_size)


def _input_device(model: Any) -> torch.device:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and hasattr(embeddings, "weight"):
        return embeddings.weight.device
    return torch.device(model.device)


# -- models to run without a download -------------------------------------------------

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
    given, else a built-in Llama-architecture config (``preset``: ``"default"``, about 58M
    parameters, or ``"tiny"``) with random weights drawn from ``seed``; no download."""
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
