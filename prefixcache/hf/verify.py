"""``wrap(model, verify=p)``: run a seeded fraction of the requests that reused cached KV
again without the cache, and compare.

A drawn request runs again after its own run, outside its pins: ``prefill`` compares
the logits it returned; ``generate`` runs from the random state the cached run
started with (so sampling draws alike), without the streamer, and compares every
generated step's logits up to and including the first step whose tokens differ, if
any (a near tie may then flip a token: that is rounding, not a mismatch). Logits
agree within the tolerance of the split check in ``wrap``, for the KV's dtype.

A mismatch is counted, logged with the request's lengths, namespace and difference,
and then ``on_mismatch`` decides: ``"warn"`` returns the uncached output, ``"clear"``
does too and drops the namespace's cached entries, ``"raise"`` raises
:class:`VerificationError`.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import random
import threading
from collections.abc import Callable, Hashable
from contextlib import AbstractContextManager
from typing import Any, NamedTuple

import torch

from ..cache import PrefixCache
from ..errors import VerificationError
from .batch import Batch
from .passthrough import logits_as_is
from .positions import Positions

__all__ = [
    "MISMATCH_ACTIONS",
    "Difference",
    "RngState",
    "Verifier",
    "as_requested",
    "check_options",
    "generation_difference",
    "logit_difference",
    "rng_state",
    "with_step_logits",
]

logger = logging.getLogger("prefixcache")

MISMATCH_ACTIONS = ("warn", "raise", "clear")


def check_options(fraction: object, action: object, seed: object) -> None:
    """Refuse a bad ``verify``, ``on_mismatch`` or ``verify_seed``, naming it, the value and
    what is accepted."""
    accepted = "a fraction of requests from 0 to 1 (0: off, 1: every request)"
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise TypeError(f"verify: expected {accepted}, got {fraction!r}")
    if not 0 <= fraction <= 1:
        raise ValueError(f"verify: expected {accepted}, got {fraction!r}")
    if not isinstance(action, str) or action not in MISMATCH_ACTIONS:
        raise ValueError(f"on_mismatch: expected one of {', '.join(map(repr, MISMATCH_ACTIONS))}, got {action!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):  # a TypeError, as for any seed of the wrong type
        raise TypeError(f"verify_seed: expected an int, got {seed!r}")


class Verifier:
    """Which requests run again without the cache (a seeded draw), the rerun, and what a
    mismatch does. Made only for ``verify > 0``, with options :func:`check_options` passed.

    ``turn`` is held around every call into ``model``; ``keys(namespace)`` gives every
    namespace the cache holds a request namespace's entries under (``"clear"`` drops
    them all); ``tolerance`` is relative to the largest logit's magnitude.
    """

    def __init__(
        self,
        fraction: float,
        action: str,
        seed: int,
        *,
        model: Any,
        cache: PrefixCache,
        turn: AbstractContextManager[Any],
        keys: Callable[[Hashable], list[Hashable]],
        tolerance: float,
        positions: Positions,
    ) -> None:
        self.fraction = float(fraction)
        self.action = action
        self.tolerance = tolerance
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._model = model
        self._cache = cache
        self._turn = turn
        self._keys = keys
        self._positions = positions
        self._logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters

    def draw(self) -> bool:
        """Is the next request that reused cached KV to be verified."""
        if self.fraction >= 1.0:
            return True
        with self._lock:
            return self._random.random() < self.fraction

    def prefill(
        self, batch: Batch, logits: torch.Tensor, namespace: Hashable, length: int, numbered: bool = False
    ) -> torch.Tensor:
        """Check the logits a cached ``prefill`` of ``batch`` returned (its last
        ``logits.shape[1]`` positions; ``numbered`` as generate numbers positions); return
        them, or the uncached run's on a mismatch."""
        with self._turn:
            want = logits_as_is(
                self._model,
                batch,
                logits.shape[1],
                takes_position_ids=self._positions.forward_ids(batch, numbered),
                takes_logits_to_keep=self._logits_to_keep,
            )
        if self._settle(logit_difference(logits, want, batch, self.tolerance), batch, namespace, length):
            return want  # the same positions, from the uncached run
        return logits

    def generate(
        self, batch: Batch, out: Any, kwargs: dict[str, Any], rng: RngState, namespace: Hashable, length: int
    ) -> Any:
        """Check what a cached ``generate(**kwargs)`` returned (run with every step's logits,
        from random state ``rng``); return it, or the uncached run's on a mismatch, in the
        form ``kwargs`` asked for."""
        rerun = with_step_logits({k: v for k, v in kwargs.items() if k != "streamer"})
        with self._turn, torch.random.fork_rng(devices=rng.cuda_devices):
            rng.restore()
            want = self._model.generate(batch.input_ids, attention_mask=batch.attention_mask, **rerun)
        if self._settle(generation_difference(out, want, batch, self.tolerance), batch, namespace, length):
            out = want
        return as_requested(out, kwargs, self._model.generation_config)

    def _settle(self, difference: Difference, batch: Batch, namespace: Hashable, length: int) -> bool:
        """Count a verified request and act on a mismatch. True when the uncached output is
        to be returned instead of the cached one."""
        self._cache.record_verification(difference.mismatch)
        if not difference.mismatch:
            return False
        lengths = [len(row) for row in batch.prompts]
        message = (
            f"prefixcache: a request run again without the cache differs from the cached run: namespace "
            f"{namespace!r}, prompt lengths {lengths}, {length} cached positions reused; largest logit "
            f"difference {difference.logits:.3g} (allowed {difference.allowed:.3g})"
        )
        if difference.first_token is not None:
            message += f"; tokens first differ at generated step {difference.first_token}"
        if self.action == "raise":
            raise VerificationError(message)
        if self.action == "clear":
            dropped = sum(self._cache.drop_namespace(key) for key in self._keys(namespace))
            logger.warning(
                "%s; dropped the namespace's %d cached tokens, returning the uncached output", message, dropped
            )
        else:
            logger.warning("%s; returning the uncached output", message)
        return True


class Difference(NamedTuple):
    """How a cached run's outputs compare with an uncached run's."""

    logits: float
    """Largest logit difference over what both runs computed (inf: not comparable)."""
    allowed: float
    first_token: int | None
    """First generated step whose tokens differ, or None."""

    @property
    def mismatch(self) -> bool:
        return not self.logits <= self.allowed  # NaN is a mismatch


def logit_difference(got: torch.Tensor, want: torch.Tensor, batch: Batch, tolerance: float) -> Difference:
    """Compare prefill logits ``[B, k, V]`` of the batch's last ``k`` positions, padding left out."""
    width, k = batch.input_ids.shape[1], got.shape[1]
    diffs, scales = [torch.zeros((), dtype=torch.float64)], [torch.zeros((), dtype=torch.float64)]
    for r, pad in enumerate(batch.pads):
        start = max(0, pad - (width - k))
        g, w = got[r, start:].double().cpu(), want[r, start:].double().cpu()
        if w.numel():
            diffs.append((g - w).abs().max())
            scales.append(w.abs().max())
    return Difference(float(torch.stack(diffs).max()), tolerance * (1 + float(torch.stack(scales).max())), None)


def generation_difference(got: Any, want: Any, batch: Batch, tolerance: float) -> Difference:
    """Compare two ``generate`` results: tokens, and every step's logits up to and including
    the first step whose tokens differ."""
    width = batch.input_ids.shape[1]
    g, w = got.sequences[:, width:], want.sequences[:, width:]
    steps = min(g.shape[1], w.shape[1])
    differ = (g[:, :steps] != w[:, :steps]).any(dim=0).nonzero()
    first = int(differ[0]) if len(differ) else None
    compared = steps if first is None else first + 1
    got_logits, want_logits = getattr(got, "logits", None) or (), getattr(want, "logits", None) or ()
    if len(got_logits) < compared or len(want_logits) < compared:
        return Difference(0.0 if first is None else math.inf, 0.0, first)
    diffs = [torch.zeros((), dtype=torch.float64)] + [
        (got_logits[i].double() - want_logits[i].double()).abs().max().cpu() for i in range(compared)
    ]
    scales = [torch.zeros((), dtype=torch.float64)] + [
        want_logits[i].double().abs().max().cpu() for i in range(compared)
    ]
    return Difference(float(torch.stack(diffs).max()), tolerance * (1 + float(torch.stack(scales).max())), first)


def with_step_logits(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``generate``'s options for a drawn request: every step's logits, in a dict result."""
    return {**kwargs, "return_dict_in_generate": True, "output_logits": True}


def as_requested(out: Any, kwargs: dict[str, Any], generation_config: Any) -> Any:
    """A ``generate`` result run with ``return_dict_in_generate`` and ``output_logits`` in the
    form the caller asked for."""
    config = kwargs.get("generation_config") or generation_config
    if not kwargs.get("return_dict_in_generate", getattr(config, "return_dict_in_generate", False)):
        return out.sequences
    if kwargs.get("output_logits", getattr(config, "output_logits", False)):
        return out
    return dataclasses.replace(out, logits=None)


class RngState(NamedTuple):
    """The random state of the CPU and the model's GPU, to replay a sampled request."""

    cpu: torch.Tensor
    cuda: tuple[torch.Tensor, ...]
    cuda_devices: list[int]

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        for device, state in zip(self.cuda_devices, self.cuda, strict=True):
            torch.cuda.set_rng_state(state, device)


def rng_state(device: torch.device) -> RngState:
    """The random state a request on ``device`` starts from."""
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    return RngState(torch.get_rng_state(), tuple(torch.cuda.get_rng_state(d) for d in devices), devices)
