"""A request's rotary regime, for a model whose rotation depends on the sequence's length.

Dynamic NTK and LongRoPE (:mod:`prefixcache.rope`) split forward lengths into
regimes, and KV computed in one is exact only for requests in the same one. For such
a model a request

- takes the regime of its longest row: its forward length is the largest position id
  plus one (with ids counted from each row's first real token, the longest row's
  length); a regime without exact reuse runs the model as it is;
- looks up and stores under the namespace ``(regime.label, namespace)``
  (:meth:`RegimeSteps.key`), so entries of two regimes never share a node;
- in ``generate``, first computes the prompt but its last token in a forward of its
  own and stores it (:meth:`RegimeSteps.prompt_first`), so the prompt is stored whatever
  ``generate`` does with the cache it is handed (Phi-3's drops it when the sequence
  grows past ``original_max_position_embeddings``);
- stores a row only as far as its tokens were computed in that regime
  (:meth:`RegimeSteps.row_ends`: decoding may cross a threshold);
- runs its calls into the model one at a time (:attr:`RegimeSteps.turn`): transformers'
  rotary module writes the frequencies of each forward into a buffer it shares, then
  reads them, so two overlapping forwards may rotate with each other's.

A model whose rotation depends on positions alone has no :class:`RegimeSteps`: its
requests skip every step here.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Hashable, Sequence
from typing import Any

from ..rope import Regime, RopeKind, RopeRule
from .batch import Batch, position_ids
from .kvcache import CacheKeywords, returned_cache

__all__ = ["NO_TURN", "RegimeSteps"]

NO_TURN: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
"""What calls into a model that needs no turns are made under (reusable, holds nothing)."""


class RegimeSteps:
    """The regimes of one model's length-dependent rotary embedding, as requests meet them.

    Made by :meth:`of` for a length-dependent rule only.
    """

    def __init__(self, rule: RopeRule, model: Any) -> None:
        self.rule = rule
        self.why = rule.why
        """Why requests are restricted to regimes (names the thresholds)."""
        self.turn: contextlib.AbstractContextManager[Any] = threading.RLock() if rule.serial else NO_TURN
        """Held around every call into the model (a streamer called back inside
        ``generate`` may call in again: the lock is reentrant)."""
        self._model = model
        parameters = inspect.signature(model.forward).parameters
        self._position_ids = "position_ids" in parameters
        self._logits_to_keep = "logits_to_keep" in parameters
        self._keywords = CacheKeywords.of(model)

    @classmethod
    def of(cls, rule: RopeRule, model: Any) -> RegimeSteps | None:
        """The regimes of ``model``'s rotary ``rule``, or None when a token's rotation
        depends on its position alone."""
        if rule.kind is not RopeKind.LENGTH_DEPENDENT:
            return None
        return cls(rule, model)

    # -- which regime, and its entries ----------------------------------------

    def forward_length(self, batch: Batch, end: int | None = None) -> int:
        """The largest position id + 1 of a forward over the batch's first ``end`` padded
        positions (all by default): what a length-dependent rotary embedding reads."""
        width = batch.input_ids.shape[1]
        end = width if end is None else end
        if not self._position_ids:  # positions count padding too
            return end
        return max(max(end - pad for pad in batch.pads), 1)

    def of_batch(self, batch: Batch) -> Regime:
        """The regime of the request's forward passes over its prompt."""
        return self.rule.regime(self.forward_length(batch))

    def of_prompts(self, rows: Sequence[Any], *, pin: bool) -> list[Regime]:
        """The regime of each unpadded prompt ``rows[i]`` run alone. With ``pin``, raises
        ``ValueError`` (before anything is computed) for a prompt that cannot be cached."""
        regimes = [self.rule.regime(len(row)) for row in rows]
        for i, regime in enumerate(regimes):
            if pin and not regime.reuse:
                raise ValueError(
                    f"prompts[{i}]: {len(rows[i])} tokens cannot be cached by this model, so cannot be pinned "
                    f"({self.why})"
                )
        return regimes

    @staticmethod
    def key(namespace: Hashable, regime: Regime) -> Hashable:
        """The namespace the cache sees: entries of different rotary regimes never share a node."""
        return namespace if regime.label is None else (regime.label, namespace)

    def keys(self, namespace: Hashable) -> list[Hashable]:
        """Every namespace the cache may hold ``namespace``'s entries under, one per regime."""
        return [self.key(namespace, regime) for regime in self.rule.regimes]

    @staticmethod
    def single(namespace: Hashable) -> list[Hashable]:
        """What :meth:`keys` is for a model with one regime (and no :class:`RegimeSteps`)."""
        return [namespace]

    def row_ends(self, batch: Batch, regime: Regime, positions: int) -> list[int]:
        """How many leading tokens of each row (prompt, then generated) have KV in a cache
        of ``positions`` padded positions that was computed in ``regime``."""
        batch_length = self.forward_length(batch)
        ends = []
        for row, pad in zip(batch.prompts, batch.pads, strict=True):
            limit = regime.row_limit(batch_length, len(row))
            ends.append(positions - pad if limit is None else min(positions - pad, limit))
        return ends

    def generate_reason(self, regime: Regime, kwargs: dict[str, Any], generation_config: Any) -> str | None:
        """Why ``generate(**kwargs)`` in ``regime`` must run without reuse, or None."""
        if not regime.reuse:
            return self.why
        config = kwargs.get("generation_config") or generation_config
        if kwargs.get("prefill_chunk_size", getattr(config, "prefill_chunk_size", None)) is not None:
            return "prefill_chunk_size: each chunk of the prompt is rotated for the length reached so far"
        return None

    # -- the prompt first ---------------------------------------------------------

    def prompt_first(self, batch: Batch, kv_cache: Any, length: int, regime: Regime) -> Any | None:
        """Compute the prompt but its last token on top of the ``length`` cached positions in
        ``kv_cache``, in a forward of its own; return the cache then holding it, for the
        caller to store and hand to ``generate`` (which then computes one token of the
        prompt). None, and nothing run, when that forward would be empty or fall in
        another regime than the request's.

        So the prompt is stored whatever ``generate`` does with the cache (Phi-3's drops
        one of at most ``original_max_position_embeddings`` tokens once the sequence is
        longer, and recomputes everything), and a prompt past that length hands it a cache
        it keeps.
        """
        end = batch.input_ids.shape[1] - 1
        if end <= length or not regime.contains(self.forward_length(batch, end)):
            return None
        kwargs: dict[str, Any] = {}
        if self._position_ids:
            kwargs["position_ids"] = position_ids(batch.attention_mask)[:, length:end]
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = 1
        with self.turn:
            out = self._model(
                input_ids=batch.input_ids[:, length:end],
                attention_mask=batch.attention_mask[:, :end],
                use_cache=True,
                **self._keywords.to_forward(kv_cache),
                **kwargs,
            )
        return returned_cache(out)
