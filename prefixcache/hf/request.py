"""One request through the cache, in order: read and check the batch, reuse (match and pin
every row), run the model on what is not cached, store what it computed, release the hits;
then, for a drawn request, run it again without the cache (``verify=``).

    # read      .batch          the ids and mask, checked once; each row's tokens
    # decide    .passthrough    options the cache cannot serve exactly run the model as it is
    # reuse     .reuse          every row matched and pinned; the cache handed to the model
    # run       here            a forward pass, generate, or segments (recurrent layers)
    # store     .store          the prompt, and what generate fed back, below each hit
    # release   .reuse          the hits unpinned however the request ends
    # verify    .verify         a drawn request run again without the cache
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, NamedTuple

import torch

from ..arguments import check_int, check_namespace
from ..cache import Hit
from ..rope import Regime
from . import segments
from .batch import Batch, read_prompts, sequences_per_prompt
from .kvcache import expand_rows, returned_cache
from .passthrough import generate_as_is, own_cache, prefill_as_is, reason_for
from .reuse import CatchUp, model_cache, reuse
from .serving import Serving
from .store import PromptStore, store
from .verify import rng_state, with_step_logits

__all__ = ["PrefillResult", "generate", "prefill", "warm"]


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


def warm(serving: Serving, prompts: Any, namespace: Hashable, pin: bool) -> int:
    """:meth:`CachedModel.warm`."""
    serving.check_weights()
    rows = read_prompts(prompts, vocab=serving.vocab, device=serving.device)
    check_namespace(namespace)
    regimes, cache = serving.regimes, serving.cache
    of_row: list[Regime | None] = [None] * len(rows) if regimes is None else [*regimes.of_prompts(rows, pin=pin)]
    computed = 0
    for row, regime in zip(rows, of_row, strict=True):
        if regimes is not None and regime is not None and not regime.reuse:
            serving.notice(f"warm: a prompt this long is not cached ({regimes.why})")
            continue
        batch = serving.read(row.unsqueeze(0), None)
        # Numbered as generate numbers a prompt: what is warmed is what requests reuse.
        key = serving.key(namespace, batch, regime, numbered=True)
        tokens = batch.prompts[0]
        if cache.cached_length(tokens, namespace=key) < len(tokens):  # else nothing to compute
            res = prefill_batch(serving, batch, namespace, 1, None, numbered=True)
            computed += row.numel() - res.cached_length
        if pin:
            cache.pin(tokens, namespace=key)
    return computed


def prefill(
    serving: Serving,
    input_ids: Any,
    attention_mask: Any,
    namespace: Hashable,
    logits_to_keep: int,
    max_cached_length: int | None,
) -> PrefillResult:
    """:meth:`CachedModel.prefill`."""
    serving.check_weights()
    batch = serving.read(input_ids, attention_mask)
    check_namespace(namespace)
    check_int(logits_to_keep, "logits_to_keep", 0)
    if max_cached_length is not None:
        check_int(max_cached_length, "max_cached_length", 0)
    return prefill_batch(serving, batch, namespace, logits_to_keep, max_cached_length)


def prefill_batch(
    serving: Serving,
    batch: Batch,
    namespace: Hashable,
    keep: int,
    max_cached_length: int | None,
    *,
    numbered: bool = False,
) -> PrefillResult:
    """``prefill`` of a checked batch; ``numbered``: positions as generate numbers them."""
    reason, regime = reason_for(serving, batch), None
    if reason is None and serving.regimes is not None:
        regime = serving.regimes.of_batch(batch)
        reason = None if regime.reuse else serving.regimes.why
    if reason is not None:
        return PrefillResult(prefill_as_is(serving, batch, keep, reason, numbered), 0)
    key = serving.key(namespace, batch, regime, numbered)
    catch_up = catch_up_with(serving, numbered)
    with reuse(serving.cache, batch, key, serving.positions, max_cached_length, catch_up) as (hits, length):
        kv_cache = model_cache(serving.cache, serving.builder, batch, hits, length, serving.layers)
        if serving.layers.kinds.states is not None:
            logits, snapshots = in_segments(serving, batch, hits, kv_cache, length, keep, numbered)
            store(serving, batch, hits, kv_cache, regime=regime, snapshots=snapshots)
        else:
            kwargs: dict[str, Any] = serving.positions.kwargs(batch, length, numbered)
            if keep:
                kwargs["logits_to_keep"] = keep
            with serving.turn:
                out = serving.model(
                    input_ids=batch.input_ids[:, length:],
                    attention_mask=batch.attention_mask,
                    use_cache=True,
                    **serving.keywords.to_forward(kv_cache),
                    **kwargs,
                )
            logits = out.logits
            store(serving, batch, hits, returned_cache(out), regime=regime)
        if keep and logits.shape[1] > keep:  # a model that ignored logits_to_keep
            logits = logits[:, -keep:]
    verifier = serving.verifier
    if length and verifier is not None and verifier.draw():  # outside the pins
        logits = verifier.prefill(batch, logits, namespace, length, numbered)
    return PrefillResult(logits, length)


def in_segments(
    serving: Serving, batch: Batch, hits: list[Hit], kv_cache: Any, length: int, keep: int, numbered: bool, end: int = 0
) -> tuple[torch.Tensor, list[dict[int, torch.Tensor]]]:
    """Compute padded positions ``[length, end)`` (to the batch's end by default) on ``kv_cache``
    in segments that end where snapshots are due (:mod:`.segments`); return the last
    ``keep`` logits (0: all) and each row's snapshots, the end's included."""
    end = end or batch.input_ids.shape[1]
    points, wanted = segments.plan(batch, hits, length, end, serving.cache.config.snapshot_interval)
    for r, pad in enumerate(batch.pads):
        wanted[r].add(end - pad)  # the end of the computed part
    positions = serving.positions
    with serving.turn:
        logits, captured = segments.run(
            serving.model,
            serving.keywords,
            serving.layers,
            batch,
            kv_cache,
            length,
            end,
            points,
            lambda a, b: {k: v[:, : b - a] for k, v in positions.kwargs(batch, a, numbered).items()},
            keep or end - length,
            serving.takes_logits_to_keep,
        )
    return logits, segments.rows_of(batch, wanted, captured)


def catch_up_with(serving: Serving, numbered: bool) -> CatchUp | None:
    """For a model with window or recurrent layers, how a row of a padded batch is computed
    alone up to where the rows' cached lengths meet (see :func:`.reuse.reuse`); stored as a
    request of one row would store it, so that the batch then reuses it."""
    if serving.layers.plain or serving.regimes is not None:
        return None

    def catch_up(row: Batch, hit: Hit, start: int, end: int) -> None:
        kv_cache = model_cache(serving.cache, serving.builder, row, [hit], start, serving.layers)
        _, snapshots = in_segments(serving, row, [hit], kv_cache, start, 1, numbered, end=end)
        store(serving, row, [hit], kv_cache, snapshots=snapshots if serving.layers.kinds.states is not None else None)

    return catch_up


def generate(serving: Serving, input_ids: Any, attention_mask: Any, namespace: Hashable, kwargs: dict[str, Any]) -> Any:
    """:meth:`CachedModel.generate`."""
    if input_ids is None:
        input_ids = kwargs.pop("inputs", None)  # model.generate's name for it
    if own_cache(kwargs):  # the caller manages the cache: hands off
        return generate_as_is(serving, input_ids, attention_mask, kwargs, "a cache of the caller's was given")
    serving.check_weights()
    batch = serving.read(input_ids, attention_mask, kwargs)
    check_namespace(namespace)
    reason, regime = reason_for(serving, batch, kwargs), None
    if reason is None and serving.regimes is not None:
        regime = serving.regimes.of_batch(batch)
        reason = serving.regimes.generate_reason(regime, kwargs, serving.model.generation_config)
    if reason is not None:
        return generate_as_is(serving, batch, None, kwargs, reason)
    key = serving.key(namespace, batch, regime, numbered=True)
    run_kwargs, rng, verifier = kwargs, None, serving.verifier
    expand, beams = sequences_per_prompt(serving.model, kwargs)
    with reuse(serving.cache, batch, key, serving.positions, catch_up=catch_up_with(serving, True)) as (hits, length):
        kv_cache = model_cache(serving.cache, serving.builder, batch, hits, length, serving.layers)
        early: PromptStore | None = None
        width = batch.input_ids.shape[1]
        if serving.regimes is not None and regime is not None:
            prompt = serving.regimes.prompt_first(batch, kv_cache, length, regime)
            if prompt is not None:
                store(serving, batch, hits, prompt, regime=regime)
                kv_cache = prompt
        elif serving.layers.kinds.states is not None:
            # The prompt but its last token first, in segments that end where snapshots are due,
            # and stored at once; generate computes the last token on top of it.
            if width - 1 > length:
                _, snapshots = in_segments(serving, batch, hits, kv_cache, length, 1, True, end=width - 1)
                store(serving, batch, hits, kv_cache, snapshots=snapshots)
        elif beams or any(hit.claimed for hit in hits):
            # The prompt is stored after generate's first step, not after its last: requests
            # waiting for this one's claim need the prompt, not the reply, and of a beam
            # search only the prompt is known. (Otherwise no one waits, and the prompt is
            # stored with the reply: one hook fewer in generate.)
            early = PromptStore(lambda: store(serving, batch, hits, kv_cache, prompt_only=True, expand=expand))
        if expand > 1:  # generate runs each prompt's rows on one copy of its prefix
            kv_cache = expand_rows(kv_cache, expand)
        if length and verifier is not None and verifier.draw():
            rng, run_kwargs = rng_state(serving.device), with_step_logits(kwargs)
        with serving.turn:
            out = serving.model.generate(
                batch.input_ids,
                attention_mask=batch.attention_mask,
                **serving.keywords.to_generate(kv_cache),
                **(early.added_to(run_kwargs) if early is not None else run_kwargs),
            )
        sequences = out if isinstance(out, torch.Tensor) else out.sequences
        generated = sequences[:, width:]
        # Beams are reordered as they move: the rows left are not the returned sequences, so
        # of a beam search only the prompt (stored above) is known.
        if not beams and (early is None or not early.done or generated.shape[1] > 1):
            store(serving, batch, hits, kv_cache, generated, kwargs, regime, expand=expand)
    if rng is not None and verifier is not None:  # outside the pins
        out = verifier.generate(batch, out, kwargs, rng, namespace, length)
    return out
