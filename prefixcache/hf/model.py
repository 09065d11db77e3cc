"""``wrap(model)`` and the ``CachedModel`` it returns: a request's path through the cache.

A request is checked (:mod:`.batch`), every row matched and pinned, the prefix handed
to the model as a DynamicCache and the new KV stored below each row's hit
(:mod:`.steps`, with the map of a padded batch's positions). Every row's prefix KV
was computed with position ids that start at 0 at its first real token (as
``generate`` numbers them), so where it sits in a padded batch does not change it.

A model whose rotary embedding also depends on the sequence's length adds the steps
of :mod:`.regime` (a regime per request, the regime in the namespace key, the prompt
computed before ``generate``, stored rows cut where the regime ends, one call into the
model at a time); for any other model they are skipped on one test. A ``generate``
that did not keep the cache it was handed to the end stores nothing of it. A drawn
fraction of the requests that reused KV runs again without the cache (:mod:`.verify`).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import threading
from collections.abc import Hashable
from typing import Any, NamedTuple

import numpy as np
import torch

from ..cache import Hit, PrefixCache
from ..checks import check_namespace
from ..config import UNSET, CacheConfig, Unset
from ..persist import model_fingerprint
from ..rope import Regime
from . import segments
from .batch import Batch, check_ids, pass_through_reason, read_batch, read_prompts, sequences_per_prompt
from .kvcache import CALLER_CACHE_KEYWORDS, CacheBuilder, CacheKeywords, cache_layers, expand_rows, returned_cache
from .positions import NATIVE_POSITIONS
from .regime import NO_TURN, Regimes
from .steps import PromptStore, prefix_cache, reuse, store_prompts
from .support import SPLIT_TOLERANCE, input_device, probe, refuse_by_config, rope_rule, vocab_size
from .verify import Verifier, check_options, rng_state, uncached_logits, with_step_logits
from .weights import WeightsWatch

__all__ = ["CachedModel", "PrefillResult", "wrap"]

logger = logging.getLogger("prefixcache")

_ATTENDS_PADDING = (
    "a left-padded batch: this model's outputs depend on the KV of cached padding (or its padded batch gives "
    "NaN), and the cache holds zeros there"
)
_CACHE_OPTIONS = tuple(f.name for f in dataclasses.fields(CacheConfig))
_OWN_OPTIONS = ("config", "load", "check", "verify", "on_mismatch", "verify_seed")


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
    depend on more than the tokens before it (sliding-window or chunked attention,
    recurrent or hybrid state, encoder-decoder, an unknown rotary type), ``TypeError``
    for something that is not a causal LM or an unknown option. ``check=False`` skips
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
                accepted = ", ".join((*_CACHE_OPTIONS, *_OWN_OPTIONS))
                raise TypeError(f"{key}: no such option; the options are {accepted}")
        settings = CacheConfig.of(config, budget, **options)
        self.model: Any = model
        refuse_by_config(model.config)
        rule = rope_rule(model)
        probed = probe(model, check=check, rope=rule)
        self._layers = probed.layers
        self._cache = PrefixCache(
            probed.layers.kinds.full,
            device=probed.device,
            dtype=probed.dtype,
            config=settings,
            fingerprint=model_fingerprint(model),
            kinds=probed.layers.kinds,
        )
        self._positions = probed.positions
        if load is not None:
            self._cache.load(load)
        self._vocab = vocab_size(model)
        self._device = input_device(model)
        self._accepts_logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._builder = CacheBuilder(model.config)
        self._keywords = CacheKeywords.of(model)
        self._warned: set[str] = set()
        self._warn_lock = threading.Lock()
        self._regimes = Regimes.of(rule, model)
        """None for a model whose rotation depends on positions alone: the common case."""
        self._turn = self._regimes.turn if self._regimes is not None else NO_TURN
        self._weights = WeightsWatch(model)
        self._rebind_lock = threading.Lock()
        self._verifier: Verifier | None = None  # verify=0, the default: nothing drawn
        if verify > 0:
            self._verifier = Verifier(
                verify,
                on_mismatch,
                verify_seed,
                model=model,
                cache=self._cache,
                turn=self._turn,
                keys=self._keys,
                tolerance=max(SPLIT_TOLERANCE.get(probed.dtype, 5e-2), 16 * probed.positions.noise),
                positions=probed.positions,
            )

    def _key(self, namespace: Hashable, batch: Batch, regime: Regime | None, numbered: bool = False) -> Hashable:
        """The namespace the cache keeps a request's entries under: apart by how the forward
        numbers positions (:mod:`.positions`) and by rotary regime (:mod:`.regime`)."""
        key = self._positions.key(namespace, batch, numbered)
        return key if self._regimes is None or regime is None else self._regimes.key(key, regime)

    def _keys(self, namespace: Hashable) -> list[Hashable]:
        """Every namespace the cache may keep ``namespace``'s entries under."""
        bases = [namespace, (NATIVE_POSITIONS, namespace)] if self._positions.own_numbering else [namespace]
        if self._regimes is None:
            return bases
        return [key for base in bases for key in self._regimes.keys(base)]

    @property
    def cache(self) -> PrefixCache:
        """The prefix cache (stats, clear, resize, evict)."""
        return self._cache

    @property
    def device(self) -> torch.device:
        """The device of the model's inputs."""
        return self._device

    def weights_changed(self) -> int:
        """Drop everything cached and take the model's new fingerprint (see :meth:`PrefixCache.rebind`).

        Requests do this themselves when they see the weights changed: an optimizer step,
        ``load_state_dict``, an in-place write to a parameter, a parameter replaced, the
        model moved. Call it after a change they cannot see (a write through
        ``param.data``). Returns the tokens dropped."""
        with self._rebind_lock:
            self._weights = WeightsWatch(self.model)
            dropped = self._cache.rebind(model_fingerprint(self.model))
        logger.warning(
            "prefixcache: the model's weights changed: %d cached tokens dropped; what is computed from now on "
            "is saved and shared under the new weights' fingerprint",
            dropped,
        )
        return dropped

    def _check_weights(self) -> None:
        if self._weights.changed():
            self.weights_changed()

    def close(self, timeout: float = 2.0) -> None:
        """Flush and close the cache's remote tier, if any (see :meth:`PrefixCache.close`)."""
        self._cache.close(timeout)

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
        unpadded prompts of one length, or a list of those. ``pin=True`` also pins each
        prompt (see :meth:`PrefixCache.pin`; undo with ``cache.unpin``). Returns how many
        tokens were computed (those already cached are not). Raises
        ``TypeError``/``ValueError`` for bad input.
        """
        self._check_weights()
        rows = read_prompts(prompts, vocab=self._vocab, device=self._device)
        check_namespace(namespace)
        regimes = self._regimes
        of_row: list[Regime | None] = [None] * len(rows) if regimes is None else [*regimes.of_prompts(rows, pin=pin)]
        computed = 0
        for row, regime in zip(rows, of_row, strict=True):
            if regimes is not None and regime is not None and not regime.reuse:
                self._warn_once(f"warm: a prompt this long is not cached ({regimes.why})")
                continue
            batch = self._read(row.unsqueeze(0), None)
            # Numbered as generate numbers a prompt: what is warmed is what requests reuse.
            key = self._key(namespace, batch, regime, numbered=True)
            tokens = batch.prompts[0]
            if self._cache.cached_length(tokens, namespace=key) < len(tokens):  # else nothing to compute
                res = self._prefill(batch, namespace, 1, None, numbered=True)
                computed += row.numel() - res.cached_length
            if pin:
                self._cache.pin(tokens, namespace=key)
        return computed

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
        row's first real token, as ``generate`` numbers them. Returns the logits of the
        computed positions (see :class:`PrefillResult`); ``logits_to_keep=k`` keeps only
        the last ``k`` of them (0 keeps all). ``max_cached_length=m`` reuses at most the
        first ``m`` tokens of each row (counted from its first real token), so that the
        logits of every position from ``m`` on are computed: a caller that needs the
        logits at position ``i`` passes ``m <= i``. Raises ``TypeError``/``ValueError``
        for bad input, leaving the cache as it was.
        """
        self._check_weights()
        batch = self._read(input_ids, attention_mask)
        check_namespace(namespace)
        if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0:
            raise ValueError(f"logits_to_keep: expected an int >= 0, got {logits_to_keep!r}")
        if max_cached_length is not None and (
            isinstance(max_cached_length, bool) or not isinstance(max_cached_length, int) or max_cached_length < 0
        ):
            raise ValueError(f"max_cached_length: expected None or an int >= 0, got {max_cached_length!r}")
        return self._prefill(batch, namespace, logits_to_keep, max_cached_length)

    def _prefill(
        self,
        batch: Batch,
        namespace: Hashable,
        logits_to_keep: int,
        max_cached_length: int | None,
        *,
        numbered: bool = False,
    ) -> PrefillResult:
        """``prefill`` of a checked batch; ``numbered``: positions as generate numbers them."""
        if self.model.training:
            return self._prefill_uncached(batch, logits_to_keep, "the model is in training mode (dropout would differ)")
        if any(batch.pads) and not self._positions.zeros_for_padding:
            return self._prefill_uncached(batch, logits_to_keep, _ATTENDS_PADDING)
        regime = None
        if self._regimes is not None:
            regime = self._regimes.of_batch(batch)
            if not regime.reuse:
                return self._prefill_uncached(batch, logits_to_keep, self._regimes.why)
        key = self._key(namespace, batch, regime, numbered)
        with reuse(self._cache, batch, key, self._positions, max_cached_length) as (hits, length):
            kv_cache = prefix_cache(self._cache, self._builder, batch, hits, length, self._layers)
            if self._layers.kinds.states is not None:
                logits, snapshots = self._in_segments(batch, hits, kv_cache, length, logits_to_keep, numbered)
                self._store(batch, hits, kv_cache, regime=regime, snapshots=snapshots)
            else:
                kwargs: dict[str, Any] = self._positions.kwargs(batch, length, numbered)
                if logits_to_keep:
                    kwargs["logits_to_keep"] = logits_to_keep
                with self._turn:
                    out = self.model(
                        input_ids=batch.input_ids[:, length:],
                        attention_mask=batch.attention_mask,
                        use_cache=True,
                        **self._keywords.to_forward(kv_cache),
                        **kwargs,
                    )
                logits = out.logits
                self._store(batch, hits, returned_cache(out), regime=regime)
            if logits_to_keep and logits.shape[1] > logits_to_keep:  # a model that ignored logits_to_keep
                logits = logits[:, -logits_to_keep:]
        if length and self._verifier is not None and self._verifier.draw():  # outside the pins
            logits = self._verifier.prefill(batch, logits, namespace, length, numbered)
        return PrefillResult(logits, length)

    def _in_segments(
        self, batch: Batch, hits: list[Hit], kv_cache: Any, length: int, keep: int, numbered: bool, end: int = 0
    ) -> tuple[torch.Tensor, list[dict[int, torch.Tensor]]]:
        """Compute padded positions ``[length, end)`` (to the batch's end by default) on ``kv_cache``
        in segments that end where snapshots are due (:mod:`.segments`); return the last
        ``keep`` logits (0: all) and each row's snapshots, the end's included."""
        end = end or batch.input_ids.shape[1]
        points, wanted = segments.plan(batch, hits, length, end, self._cache.config.snapshot_interval)
        for r, pad in enumerate(batch.pads):
            wanted[r].add(end - pad)  # the end of the computed part
        with self._turn:
            logits, captured = segments.run(
                self.model,
                self._keywords,
                self._layers,
                batch,
                kv_cache,
                length,
                end,
                points,
                lambda a, b: {k: v[:, : b - a] for k, v in self._positions.kwargs(batch, a, numbered).items()},
                keep or end - length,
                self._accepts_logits_to_keep,
            )
        return logits, segments.rows_of(batch, wanted, captured)

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
        prefix is reused; afterwards the prompt's KV and, for greedy or sampled single
        sequences, the generated tokens' KV are stored, so a chat's next turn reuses the
        whole conversation. Options the cache cannot serve exactly (a cache of the
        caller's, as ``cache`` or ``past_key_values``; beam search, several sequences per
        prompt, assisted decoding, ``output_attentions``, ...) run the model as it is,
        without reuse, and say so once in a warning; a cache of ``None`` is no cache.
        Raises ``TypeError``/``ValueError`` for bad input, leaving the cache as it was.

        A request drawn for verification (``verify=``) runs again without the cache, with
        the same random state and without the streamer (see :mod:`.verify`).
        """
        if input_ids is None:
            input_ids = kwargs.pop("inputs", None)  # model.generate's name for it
        for name in (*CALLER_CACHE_KEYWORDS, "use_cache"):  # None: what model.generate does by default
            if name in kwargs and kwargs[name] is None:
                del kwargs[name]
        if any(name in kwargs for name in CALLER_CACHE_KEYWORDS):  # the caller manages the cache: hands off
            ids, _ = check_ids(input_ids, vocab=self._vocab, device=self._device)
            self._cache.record_pass_through(ids.numel(), ids.shape[0])
            with self._turn:
                return self.model.generate(input_ids, attention_mask=attention_mask, **kwargs)
        reason = pass_through_reason(self.model, kwargs)
        self._check_weights()
        batch = self._read(input_ids, attention_mask, kwargs)
        if reason is None and any(batch.pads) and not self._positions.zeros_for_padding:
            reason = _ATTENDS_PADDING
        check_namespace(namespace)
        regime = None
        if reason is None and self._regimes is not None:
            regime = self._regimes.of_batch(batch)
            reason = self._regimes.generate_reason(regime, kwargs, self.model.generation_config)
        key = self._regimes.key(namespace, regime) if self._regimes is not None and regime is not None else namespace
        if reason is not None:
            self._count_pass_through(batch, reason)
            with self._turn:
                return self.model.generate(batch.input_ids, attention_mask=batch.attention_mask, **kwargs)
        run_kwargs, rng = kwargs, None
        expand, beams = sequences_per_prompt(self.model, kwargs)
        with reuse(self._cache, batch, key, self._positions) as (hits, length):
            kv_cache = prefix_cache(self._cache, self._builder, batch, hits, length, self._layers)
            early: PromptStore | None = None
            width = batch.input_ids.shape[1]
            if self._regimes is not None and regime is not None:
                prompt = self._regimes.prompt_first(batch, kv_cache, length, regime)
                if prompt is not None:
                    self._store(batch, hits, prompt, regime=regime)
                    kv_cache = prompt
            elif self._layers.kinds.states is not None:
                # The prompt but its last token first, in segments that end where snapshots are due,
                # and stored at once; generate computes the last token on top of it.
                if width - 1 > length:
                    _, snapshots = self._in_segments(batch, hits, kv_cache, length, 1, False, end=width - 1)
                    self._store(batch, hits, kv_cache, snapshots=snapshots)
            else:
                # The prompt is stored after generate's first step, not after its last: requests
                # waiting for this one's claim need the prompt, not the reply.
                early = PromptStore(lambda: self._store(batch, hits, kv_cache, prompt_only=True, expand=expand))
            if expand > 1:  # generate runs each prompt's rows on one copy of its prefix
                kv_cache = expand_rows(kv_cache, expand)
            if length and self._verifier is not None and self._verifier.draw():
                rng, run_kwargs = rng_state(self._device), with_step_logits(kwargs)
            with self._turn:
                out = self.model.generate(
                    batch.input_ids,
                    attention_mask=batch.attention_mask,
                    **self._keywords.to_generate(kv_cache),
                    **(early.added_to(run_kwargs) if early is not None else run_kwargs),
                )
            sequences = out if isinstance(out, torch.Tensor) else out.sequences
            generated = sequences[:, batch.input_ids.shape[1] :]
            if beams:  # rows were reordered as beams moved: only the prompt (stored above) is known
                pass
            elif early is None or not early.done or generated.shape[1] > 1:
                self._store(batch, hits, kv_cache, generated, kwargs, regime, expand=expand)
        if rng is not None and self._verifier is not None:  # outside the pins
            out = self._verifier.generate(batch, out, kwargs, rng, namespace, length)
        return out

    # -- steps of a request ----------------------------------------------

    def _read(self, input_ids: Any, attention_mask: Any, generate_kwargs: dict[str, Any] | None = None) -> Batch:
        return read_batch(
            input_ids,
            attention_mask,
            vocab=self._vocab,
            device=self._device,
            generation_config=self.model.generation_config if generate_kwargs is not None else None,
            generate_kwargs=generate_kwargs,
        )

    def _store(
        self,
        batch: Batch,
        hits: list[Hit],
        kv_cache: Any,
        generated: torch.Tensor | None = None,
        kwargs: Any = None,
        regime: Regime | None = None,
        *,
        prompt_only: bool = False,
        snapshots: list[dict[int, torch.Tensor]] | None = None,
        expand: int = 1,
    ) -> None:
        """Insert every row's prompt, and the generated tokens whose KV was computed, below its hit.

        ``prompt_only``: called after generate's first step, when ``kv_cache`` should hold
        the prompt alone; it stores nothing if it holds anything else. ``expand``: the cache
        holds that many rows per prompt (several sequences per prompt), each its own branch
        below the prompt.

        The last generated token was never fed back, so it has no KV: a ``generate`` that
        kept the cache it was handed to the end leaves exactly the prompt and every other
        generated token in it, and one that did not (it dropped or replaced it) has
        nothing stored. A finished row's later tokens are padding fed to the model; their
        KV is right for those tokens but of no use, so a row is cut after its first
        end-of-sequence token. With a ``regime``, a row is also cut where ``kv_cache``
        ends and where its tokens stop being computed in the regime.
        """
        window = None
        if self._layers.plain:
            layers = cache_layers(kv_cache)
            if layers is None:
                return
            positions = layers[0][0].shape[2]
        else:
            parts = self._layers.parts(kv_cache)
            layers, window, positions = parts.full, parts.window, self._layers.positions(kv_cache)
        width = batch.input_ids.shape[1]
        if prompt_only and positions != width:
            return
        fed = eos = None
        if generated is not None:
            if not 1 <= generated.shape[1] == positions - width + 1:
                if generated.shape[1]:
                    self._warn_once(
                        "the model's generate did not keep the cache it was given (it dropped or replaced it, as "
                        "Phi-3's does past original_max_position_embeddings); what it computed is not stored"
                    )
                return
            if positions > width:
                fed = generated[:, : positions - width].cpu().numpy()
                eos = self._eos_ids(kwargs)
        row_ends = None  # without a regime every row's tokens have KV up to their end: no cut
        if self._regimes is not None and regime is not None:
            row_ends = self._regimes.row_ends(batch, regime, positions)
        elif positions < width:  # the prompt but its last token, computed before generate
            row_ends = [positions - pad for pad in batch.pads]
        if self._layers.kinds.states is not None and snapshots is None and fed is not None:
            # The state the cache ends with is that after every token fed: a row's own only
            # where it was not cut after an end-of-sequence token.
            rows = self._layers.snapshot_rows(kv_cache)
            snapshots = [{len(batch.prompts[k // expand]) + len(more): rows[k]} for k, more in enumerate(fed)]
        store_prompts(
            self._cache, batch, hits, layers, fed, eos, row_ends, self._positions, window, positions, snapshots, expand
        )

    def _eos_ids(self, kwargs: dict[str, Any]) -> np.ndarray | None:
        config = kwargs.get("generation_config") or self.model.generation_config
        eos = kwargs.get("eos_token_id", getattr(config, "eos_token_id", None))
        return None if eos is None else torch.as_tensor(eos).reshape(-1).cpu().numpy()

    def _prefill_uncached(self, batch: Batch, logits_to_keep: int, reason: str) -> PrefillResult:
        """``prefill`` by the model as it is, without reuse and storing nothing."""
        self._count_pass_through(batch, reason)
        with self._turn:
            logits = uncached_logits(
                self.model,
                batch,
                logits_to_keep,
                takes_position_ids=self._positions.forward_ids(batch),
                takes_logits_to_keep=self._accepts_logits_to_keep,
            )
        return PrefillResult(logits, 0)

    def _count_pass_through(self, batch: Batch, reason: str) -> None:
        self._cache.record_pass_through(batch.n_tokens, len(batch.prompts))
        self._warn_once(f"running the model without prefix reuse ({reason})")

    def _warn_once(self, message: str) -> None:
        with self._warn_lock:
            if message not in self._warned:
                self._warned.add(message)
                logger.warning("prefixcache: %s", message)
