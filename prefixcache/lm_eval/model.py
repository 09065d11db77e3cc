"""``PrefixCacheLM``: lm-evaluation-harness's ``HFLM`` with every forward pass served through the cache.

HFLM's tokenization, request handling and result bookkeeping are kept, so the token ids
the model sees are HFLM's own. Three paths change:

- ``_loglikelihood_tokens`` (``loglikelihood``, the multiple-choice path, and the windows
  of ``loglikelihood_rolling``): requests are ordered by their tokens, so the questions
  of one few-shot header run one after another, and each is a ``prefill`` that computes
  only what follows its longest cached prefix, keeping the logits the continuation needs.
- ``loglikelihood_rolling``: all windows of all documents go to ``_loglikelihood_tokens``
  at once, so that ordering spans them.
- ``generate_until``: requests ordered by their tokens as well, and ``_model_generate`` calls
  ``CachedModel.generate`` with HFLM's generation arguments.

Results are HFLM's up to floating-point rounding (per-request log-likelihoods within
about 1e-12 in float64), with the same ``is_greedy``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval import utils as lm_utils
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import (
    Collator,
    handle_stop_sequences,
    normalize_gen_kwargs,
    postprocess_generated_text,
)
from lm_eval.models.utils_hf import stop_sequences_criteria
from tqdm import tqdm

from ..cache import PrefixCache
from ..hf import CachedModel, wrap
from ..hf.batch import left_pad
from ..hf.model import WRAP_OPTIONS

__all__ = ["PrefixCacheLM"]

logger = logging.getLogger("prefixcache")

Request = tuple[Any, list[int], list[int]]
"""What ``_loglikelihood_tokens`` takes: ``(strings or None, context ids, continuation ids)``."""


@register_model("prefixcache")
class PrefixCacheLM(HFLM):
    """An lm-eval model: ``HFLM`` whose forward passes reuse cached prefixes.

    Takes what ``HFLM`` takes (``pretrained``: a model or a path, ``tokenizer``,
    ``batch_size``, ``device``, ``dtype``, ``max_length``, ...) and the options of
    :func:`prefixcache.wrap` (``budget``, ``host_budget``, ``host_dtype``, ``ttl``,
    ``verify``, ...), which go to the cache. ``.cached`` is the :class:`CachedModel`,
    ``.cache`` its :class:`PrefixCache`. Registered with lm-eval as ``prefixcache``.

    Only causal (decoder-only) models: ``TypeError`` for a seq2seq backend, and
    :class:`UnsupportedModelError` from ``wrap`` for a model whose KV cannot be reused
    exactly. ``batch_size="auto"`` runs batches of one: with the headers cached most
    requests are short, and the search for the largest batch would compute long
    dummy batches. The rows of a left-padded batch compute from the column where the
    row with the least cached stops: their shared start (a new header) is computed
    once, before the batch, and rows of different lengths recompute a few cached
    tokens (on the README's 2-core CPU, batches of 4 beat batches of 1, and 8 lose).
    """

    def __init__(self, pretrained: Any, **kwargs: Any) -> None:
        options = {key: kwargs.pop(key) for key in WRAP_OPTIONS if key in kwargs}
        if not isinstance(pretrained, str):  # HFLM would ignore them: a misspelt option must not pass unseen
            known = inspect.signature(HFLM.__init__).parameters
            unknown = sorted(key for key in kwargs if key not in known)
            if unknown:
                raise TypeError(
                    f"{unknown[0]}: no such option for a model object; the options are HFLM's "
                    f"({', '.join(k for k in known if k not in ('self', 'kwargs'))}) and the cache's "
                    f"({', '.join(WRAP_OPTIONS)})"
                )
        super().__init__(pretrained, **kwargs)
        if self.backend != "causal":
            raise TypeError(
                f"pretrained: expected a causal (decoder-only) language model, got backend {self.backend!r}"
            )
        self.cached: CachedModel = wrap(self.model, **options)
        self._auto_warned = False

    @property
    def cache(self) -> PrefixCache:
        """The prefix cache: ``stats``, ``clear``, ``save``, ..."""
        return self.cached.cache

    def _batch_size(self) -> int:
        if self.batch_size == "auto":
            if not self._auto_warned:
                logger.warning(
                    "batch_size=auto: prefixcache runs batches of 1 (requests after a cached header are short)"
                )
                self._auto_warned = True
            return 1
        return int(self.batch_size)

    # -- log-likelihoods -------------------------------------------------

    def _loglikelihood_tokens(
        self, requests: list[Request], disable_tqdm: bool = False, override_bs: int | None = None
    ) -> list[tuple[float, bool]]:
        """HFLM's ``_loglikelihood_tokens``, each request computing only what is not cached.

        Requests are sorted by their tokens, so that those sharing a context are adjacent;
        with ``logits_cache`` (HFLM's default) requests whose input is the same (the
        choices of a multiple-choice question, one token each) share one forward pass, as
        in HFLM. Results come back in the order of ``requests``.
        """
        collator = Collator(
            requests,
            sort_fn=lambda req: tuple(req[1] + req[2]),
            group_by="contexts" if self.logits_cache else None,
            group_fn=lambda req: req[-2] + req[-1][:-1],
        )
        results: list[tuple[float, bool]] = []
        bar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="Running loglikelihood requests")
        for chunk in collator.get_batched(n=self._batch_size()):
            for (strings, context, _), logits, continuation in zip(
                chunk, self._continuation_logits(chunk), (req[2] for req in chunk), strict=True
            ):
                for request_str, cont, row_logits in collator.get_cache(
                    req_str=strings, cxt_toks=context, cont_toks=continuation, logits=logits
                ):
                    answer = self._score(row_logits, cont)
                    results.append(answer)
                    if request_str is not None:  # rolling windows are cached per document
                        self.cache_hook.add_partial("loglikelihood", request_str, answer)
                    bar.update(1)
        bar.close()
        return list(collator.get_original(results))

    def _continuation_logits(self, chunk: list[Request]) -> Iterator[torch.Tensor]:
        """Each request's log-softmaxed logits over its continuation: ``[1, len(continuation), vocab]``.

        The model's input is HFLM's, ``(context + continuation)[-(max_length + 1):][:-1]``:

            # input     c0 c1 c2 c3 | k0 k1 k2          (k3, the last token, is not fed)
            # logits       c1 c2 c3 | k0 k1 k2 k3       predict the token after each position
            # [0, n - len(cont))     may come from the cache
            # [n - len(cont), n)     computed: their logits score the continuation

        so ``max_cached_length = n - len(cont)`` and ``logits_to_keep = len(cont)``.
        Rows of a batch are left-padded; every row ends at the last column, so the last
        ``len(cont)`` columns of a row are its continuation's.
        """
        rows: list[list[int]] = []
        for _, context, continuation in chunk:
            if not context or not continuation or len(continuation) > self.max_length:
                raise ValueError(
                    f"requests: expected a non-empty context and a continuation of 1 to {self.max_length} tokens, "
                    f"got {len(context)} and {len(continuation)} tokens"
                )
            rows.append((context + continuation)[-(self.max_length + 1) :][:-1])
        cont_lengths = [len(req[2]) for req in chunk]
        ids, mask = left_pad(rows, device=self.device)
        reusable = min(len(row) - n for row, n in zip(rows, cont_lengths, strict=True))
        if len(rows) > 1:
            # A batch reuses only what every row has cached: compute the rows' shared start
            # first (a new few-shot header), so that it is computed once, not once per row.
            shared = _common_prefix(rows, reusable)
            if len(shared) > 1:
                with self._autocast():
                    self.cached.warm(torch.tensor(shared, dtype=torch.long, device=self.device))
        with self._autocast():
            out = self.cached.prefill(
                ids,
                mask if len(rows) > 1 else None,
                max_cached_length=reusable,
                logits_to_keep=max(cont_lengths),
            )
        logprobs = F.log_softmax(out.logits, dim=-1, dtype=self.softmax_dtype)
        for i, n in enumerate(cont_lengths):
            yield logprobs[i : i + 1, logprobs.shape[1] - n :]

    def _score(self, logits: torch.Tensor, continuation: list[int]) -> tuple[float, bool]:
        """HFLM's answer for one request: ``(sum of the continuation's log-probabilities, is_greedy)``."""
        cont = torch.tensor(continuation, dtype=torch.long, device=logits.device).unsqueeze(0)
        logits = logits[:, -cont.shape[1] :]  # a shared forward pass may have kept more positions
        greedy = bool((logits.argmax(dim=-1) == cont).all())
        picked = torch.gather(logits, 2, cont.unsqueeze(-1)).squeeze(-1)
        return float(picked.sum()), greedy

    def _autocast(self) -> Any:
        return torch.autocast(
            device_type=self.device.type,
            dtype=self.mixed_precision_dtype,
            enabled=self.mixed_precision_dtype is not None,
        )

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """HFLM's rolling log-likelihood (disjoint windows of ``max_length``), every window in one ordered pass."""
        if self.world_size > 1:
            return list(super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm))
        windows: list[Request] = []
        counts: list[int] = []
        for (string,) in (req.args for req in requests):
            pairs = [
                lm_utils.make_disjoint_window(pair)
                for pair in lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
            ]
            windows.extend((None, context, continuation) for context, continuation in pairs)
            counts.append(len(pairs))
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm) if windows else []
        totals: list[float] = []
        start = 0
        for req, count in zip(requests, counts, strict=True):
            total = sum(score for score, _ in scores[start : start + count])  # in window order, as HFLM adds
            start += count
            totals.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), total)
        return totals

    # -- generation ------------------------------------------------------

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """HFLM's ``generate_until``, with requests ordered by their tokens (shared prompts adjacent).

        Requests are grouped by generation arguments as in HFLM, left-padded into batches
        of ``batch_size``, generated through ``CachedModel.generate`` and post-processed
        as HFLM does (stop sequences, ``think_end_token``).
        """
        collator = Collator(
            [req.args for req in requests],
            sort_fn=lambda req: tuple(self.tok_encode(req[0])),
            group_by="gen_kwargs",
            group_fn=lambda req: req[1],
        )
        results: list[str] = []
        bar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="Running generate_until requests")
        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        for chunk in collator.get_batched(n=self._batch_size()):
            contexts, all_gen_kwargs = zip(*chunk, strict=True)
            gen_kwargs = all_gen_kwargs[0]
            if not isinstance(gen_kwargs, dict):
                raise TypeError(f"requests: expected generation arguments as a dict, got {type(gen_kwargs).__name__}")
            kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen_toks = kwargs.pop("max_gen_toks")
            max_ctx_len = self.max_length - max_gen_toks
            if max_ctx_len <= 0:
                raise ValueError(
                    f"max_gen_toks: expected fewer than the model's max_length {self.max_length}, got {max_gen_toks}"
                )
            ids, mask = self.tok_batch_encode(list(contexts), left_truncate_len=max_ctx_len, truncation=self.truncation)
            ids, mask = ids.to(self.device), mask.to(self.device)
            if ids.shape[0] > 1:  # as for log-likelihoods: the rows' shared start computed once, first
                rows = [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]
                shared = _common_prefix(rows, min(len(r) for r in rows) - 1)
                if len(shared) > 1:
                    with self._autocast():
                        self.cached.warm(torch.tensor(shared, dtype=torch.long, device=self.device))
            max_length = kwargs.pop("max_length", ids.shape[1] + max_gen_toks)
            out = self._model_generate(context=ids, attention_mask=mask, stop=until, max_length=max_length, **kwargs)
            for tokens, context in zip(out.tolist(), contexts, strict=True):
                tokens = tokens[ids.shape[1] :]
                if isinstance(self.think_end_token, int):
                    ends = [i for i, t in enumerate(tokens) if t == self.think_end_token]
                    if ends:
                        tokens = tokens[ends[-1] + 1 :]
                text = self.tok_decode(tokens)
                if isinstance(self.think_end_token, int):
                    text = text.lstrip()
                text = postprocess_generated_text(
                    generation=text,
                    stop=until,
                    think_end_token=self.think_end_token if isinstance(self.think_end_token, str) else None,
                )
                results.append(text)
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
                bar.update(1)
        bar.close()
        return list(collator.get_original(results))

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str], **kwargs: Any) -> torch.Tensor:
        """HFLM's ``_model_generate`` (greedy unless told otherwise, stop sequences), through the cache."""
        kwargs["temperature"] = kwargs.get("temperature", 0.0)
        do_sample = kwargs.get("do_sample")
        if (temperature := kwargs.get("temperature")) == 0.0 and do_sample is None:
            kwargs["do_sample"] = do_sample = False
        if do_sample is False and temperature == 0.0:
            kwargs.pop("temperature", None)
        stopping = stop_sequences_criteria(self.tokenizer, stop, context.shape[1], context.shape[0])
        attention_mask = kwargs.pop("attention_mask", None)
        with self._autocast():
            out = self.cached.generate(
                context,
                attention_mask,
                max_length=max_length,
                stopping_criteria=stopping,
                pad_token_id=self.tokenizer.pad_token_id,
                use_cache=True,
                **kwargs,
            )
        return out if isinstance(out, torch.Tensor) else out.sequences


def _common_prefix(rows: list[list[int]], limit: int) -> list[int]:
    first = rows[0][:limit]
    n = len(first)
    for row in rows[1:]:
        n = min(n, len(row))
        for i in range(n):
            if row[i] != first[i]:
                n = i
                break
    return first[:n]
