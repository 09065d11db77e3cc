"""``wrap(model)`` and the ``CachedModel`` it returns: a model's requests through the cache.

``wrap`` refuses a model whose KV for a token may depend on more than the tokens before
it (:mod:`.support`), reads what its layers keep (:mod:`.layers`) and how it numbers
positions (:mod:`.positions`), and builds the cache; each request then follows
:mod:`.request` (read, reuse, run, store, release, verify).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Hashable
from typing import Any

import torch

from ..cache import PrefixCache
from ..config import UNSET, CacheConfig, Unset
from ..persist import model_fingerprint
from . import request
from .regime import RegimeSteps
from .request import PrefillResult
from .serving import Serving
from .support import SPLIT_TOLERANCE, input_device, probe, refuse_by_config, rope_rule, vocab_size
from .verify import Verifier, check_options

__all__ = ["WRAP_OPTIONS", "CachedModel", "PrefillResult", "wrap"]

_CACHE_OPTIONS = tuple(f.name for f in dataclasses.fields(CacheConfig))


def wrap(model: Any, budget: int | str | Unset = UNSET, **options: Any) -> CachedModel:
    """Put a prefix cache in front of a transformers causal language model.

    Takes what :class:`CachedModel` takes (``config``, ``load``, ``check``, ``verify``,
    ``on_mismatch``, ``verify_seed`` and the options of :class:`CacheConfig`) and
    returns one.
    """
    return CachedModel(model, budget, **options)


class CachedModel:
    """A causal LM with a prefix cache: ``generate`` and ``prefill`` reuse cached prefixes.

    Outputs are those of the model without the cache, up to floating-point rounding
    (identical greedy tokens; logits within about 1e-12 in float64). Safe to use from
    several threads: the cache has its own lock and the model's forward passes run
    outside it; for a model whose rotary embedding depends on the sequence's length
    they run one at a time, since transformers' rotary module rewrites its shared
    frequencies in each forward.

    The KV pool takes ``budget`` bytes (``"4GiB"``, ``"512MB"``, an int; 1 GiB by
    default) on the device and in the dtype of the model's KV, which a short forward
    pass reads, together with every layer's shape. The other cache options are those of
    :class:`CacheConfig` (``host_budget``, ``host_dtype``, ``ttl``), as keywords or as
    ``config``. ``load`` restores a cache saved with ``cache.save(path)`` from this same
    model. Raises :class:`UnsupportedModelError` for a model whose KV for a token may
    depend on more than the tokens before it (encoder-decoder, an attention that sees
    later tokens, a cache layer it cannot hold, an unknown rotary type; see
    :mod:`.support`), ``TypeError`` for something that is not a causal LM or an unknown
    option. ``check=False`` skips
    only the numerical part of the check (the one that runs prompts whole and in two
    parts and compares the logits).

    A rotary embedding whose rotation depends on the sequence's length (dynamic NTK,
    LongRoPE; see :mod:`prefixcache.rope`) is served only where that is exact: a cached
    prefix goes only to requests in the regime it was computed in, and requests in a
    regime with no exact reuse run the model as it is.

    ``verify=p`` runs a seeded fraction ``p`` (0 to 1; 0, the default, is off) of the
    requests that reuse cached KV again without the cache and compares them: the same
    tokens and logits within rounding for the KV's dtype. ``stats.verified`` and
    ``stats.mismatches`` count them; on a mismatch ``on_mismatch`` returns the uncached
    output (``"warn"``), does so and drops the namespace's entries (``"clear"``) or
    raises :class:`VerificationError` (``"raise"``); see :mod:`prefixcache.hf.verify`.
    ``verify_seed`` seeds the draw. Bad values fail before anything is built.
    """

    def __init__(
        self,
        model: Any,
        budget: int | str | Unset = UNSET,
        *,
        config: CacheConfig | None = None,
        load: str | os.PathLike[str] | None = None,
        check: bool = True,
        verify: float = 0.0,
        on_mismatch: str = "warn",
        verify_seed: int = 0,
        **options: Any,
    ) -> None:
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "config") or not hasattr(model, "generate"):
            raise TypeError(
                f"model: expected a transformers causal language model (a PreTrainedModel with generate), "
                f"got {type(model).__name__}"
            )
        check_options(verify, on_mismatch, verify_seed)
        for key in options:
            if key not in _CACHE_OPTIONS:
                raise TypeError(f"{key}: no such option; the options are {', '.join(WRAP_OPTIONS)}")
        settings = CacheConfig.of(config, budget, **options)
        self.model: Any = model
        refuse_by_config(model.config)
        rule = rope_rule(model)
        probed = probe(model, check=check, rope=rule)
        kinds = probed.layers.kinds
        cache = PrefixCache(
            kinds.full,
            device=probed.device,
            dtype=probed.dtype,
            config=settings,
            fingerprint=model_fingerprint(model),
            kinds=kinds,
        )
        if load is not None:
            cache.load(load)
        serving = Serving(
            model,
            cache,
            probed.layers,
            probed.positions,
            RegimeSteps.of(rule, model),
            vocab_size(model),
            input_device(model),
        )
        if verify > 0:  # verify=0, the default: nothing drawn
            serving.verifier = Verifier(
                verify,
                on_mismatch,
                verify_seed,
                model=model,
                cache=cache,
                turn=serving.turn,
                keys=serving.keys,
                tolerance=max(SPLIT_TOLERANCE.get(probed.dtype, 5e-2), 16 * probed.positions.noise),
                positions=probed.positions,
            )
        self._serving = serving

    @property
    def cache(self) -> PrefixCache:
        """The prefix cache (stats, clear, resize, evict)."""
        return self._serving.cache

    @property
    def device(self) -> torch.device:
        """The device of the model's inputs."""
        return self._serving.device

    def weights_changed(self) -> int:
        """Drop everything cached and take the model's new fingerprint (see :meth:`PrefixCache.rebind`).

        Requests do this themselves when they see the weights changed: an optimizer step,
        ``load_state_dict``, an in-place write to a parameter, a parameter replaced, the
        model moved. Call it after a change they cannot see (a write through
        ``param.data``). Returns the tokens dropped."""
        return self._serving.weights_changed()

    def close(self, timeout: float = 2.0) -> None:
        """Flush and close the cache's remote tier, if any (see :meth:`PrefixCache.close`)."""
        self._serving.cache.close(timeout)

    def __repr__(self) -> str:
        s = self._serving.cache.stats
        return (
            f"CachedModel({type(self.model).__name__}, {s.cached_tokens}/{s.capacity_tokens} tokens cached, "
            f"hit rate {s.hit_rate:.1%})"
        )

    # -- the entry points --------------------------------------------------

    def warm(self, prompts: Any, *, namespace: Hashable = None, pin: bool = False) -> int:
        """Store the KV of ``prompts`` (system prompts, few-shot headers) without generating.

        ``prompts`` is a 1-D tensor or list of token ids, a ``[batch, seq]`` tensor of
        unpadded prompts of one length, or a list of those. ``pin=True`` also pins each
        prompt (see :meth:`PrefixCache.pin`; undo with ``cache.unpin``). Returns how many
        tokens were computed (those already cached are not). Raises
        ``TypeError``/``ValueError`` for bad input.
        """
        with torch.no_grad():
            return request.warm(self._serving, prompts, namespace, pin)

    @torch.no_grad()
    def prefill(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        namespace: Hashable = None,
        logits_to_keep: int = 0,
        max_cached_length: int | None = None,
    ) -> PrefillResult:
        """One forward pass over what is not cached of ``input_ids``; stores the prompt's KV.

        ``input_ids`` is ``[batch, seq]`` (or ``[seq]``), left-padded with
        ``attention_mask`` when rows differ in length. Position ids start at 0 at each
        row's first real token, as ``generate`` numbers them (an unpadded prompt of a model
        that numbers positions its own way gets its own numbering: the result is what
        ``model(input_ids)`` gives). Returns the logits of the computed positions (see
        :class:`PrefillResult`); ``logits_to_keep=k`` keeps only the last ``k`` of them (0
        keeps all). ``max_cached_length=m`` reuses at most the first ``m`` tokens of each
        row (counted from its first real token), so that the logits of every position from
        ``m`` on are computed: a caller that needs the logits at position ``i`` passes
        ``m <= i``. Raises ``TypeError``/``ValueError`` for bad input, leaving the cache as
        it was.
        """
        return request.prefill(self._serving, input_ids, attention_mask, namespace, logits_to_keep, max_cached_length)

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

        Takes and returns what ``model.generate`` does. Each prompt's longest cached
        prefix is reused, once for all its rows when it asks for several sequences
        (``num_return_sequences``, beams); afterwards the prompt's KV and each returned
        sample's are stored, so a chat's next turn reuses the whole conversation. Options
        the cache cannot serve exactly (a cache of the caller's, as ``cache`` or
        ``past_key_values``; assisted decoding, decoding loops from the Hub,
        ``output_attentions``, ...; see :mod:`.passthrough`) run the model as it is, without
        reuse, and say so once in a warning; a cache of ``None`` is no cache. Raises
        ``TypeError``/``ValueError`` for bad input, leaving the cache as it was.

        A request drawn for verification (``verify=``) runs again without the cache, with
        the same random state and without the streamer (see :mod:`.verify`).
        """
        return request.generate(self._serving, input_ids, attention_mask, namespace, kwargs)


WRAP_OPTIONS = (
    *_CACHE_OPTIONS,
    *(
        name
        for name, parameter in inspect.signature(CachedModel.__init__).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    ),
)
"""Every keyword :func:`wrap` takes: :class:`CacheConfig`'s options and :class:`CachedModel`'s own
(what lm_eval's model hands to the cache rather than to ``HFLM``)."""
