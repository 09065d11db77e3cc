"""What serving one model takes, read once by ``wrap``: the model, its cache, what its layers
keep, how it numbers positions, its rotary regimes, its verifier, and notices said once."""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Hashable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import torch

from ..cache import PrefixCache
from ..persist import model_fingerprint
from ..rope import Regime
from .batch import Batch, read_batch
from .kvcache import CacheBuilder, CacheKeywords
from .layers import ModelLayers
from .positions import NATIVE_POSITIONS, Positions
from .regime import NO_TURN, RegimeSteps
from .weights import WeightsWatch

if TYPE_CHECKING:
    from .verify import Verifier

__all__ = ["Serving"]

logger = logging.getLogger("prefixcache")


class Serving:
    """Everything a request of one model reads (:mod:`.request`); made by :class:`CachedModel`."""

    def __init__(
        self,
        model: Any,
        cache: PrefixCache,
        layers: ModelLayers,
        positions: Positions,
        regimes: RegimeSteps | None,
        vocab: int,
        device: torch.device,
    ) -> None:
        self.model = model
        self.cache = cache
        self.layers = layers
        self.positions = positions
        self.regimes = regimes
        """None for a model whose rotation depends on positions alone: the common case."""
        self.turn: AbstractContextManager[Any] = regimes.turn if regimes is not None else NO_TURN
        """Held around every call into the model (see :mod:`.regime`)."""
        self.vocab = vocab
        self.device = device
        self.takes_logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.builder = CacheBuilder(model.config)
        self.keywords = CacheKeywords.of(model)
        self.verifier: Verifier | None = None
        self._weights = WeightsWatch(model)
        self._rebind_lock = threading.Lock()
        self._notices: set[str] = set()
        self._notice_lock = threading.Lock()

    def read(self, input_ids: Any, attention_mask: Any, generate_kwargs: dict[str, Any] | None = None) -> Batch:
        """The request's checked batch (see :func:`.batch.read_batch`)."""
        return read_batch(
            input_ids,
            attention_mask,
            vocab=self.vocab,
            device=self.device,
            generation_config=self.model.generation_config if generate_kwargs is not None else None,
            generate_kwargs=generate_kwargs,
        )

    def key(self, namespace: Hashable, batch: Batch, regime: Regime | None, numbered: bool = False) -> Hashable:
        """The namespace the cache keeps a request's entries under: apart by how the forward
        numbers positions (:mod:`.positions`) and by rotary regime (:mod:`.regime`)."""
        key = self.positions.key(namespace, batch, numbered)
        return key if self.regimes is None or regime is None else self.regimes.key(key, regime)

    def keys(self, namespace: Hashable) -> list[Hashable]:
        """Every namespace the cache may keep ``namespace``'s entries under."""
        bases = [namespace, (NATIVE_POSITIONS, namespace)] if self.positions.own_numbering else [namespace]
        if self.regimes is None:
            return bases
        return [key for base in bases for key in self.regimes.keys(base)]

    def check_weights(self) -> None:
        """Start the cache over if the model's weights changed since the last request."""
        if self._weights.changed():
            self.weights_changed()

    def weights_changed(self) -> int:
        """See :meth:`CachedModel.weights_changed`."""
        with self._rebind_lock:
            self._weights = WeightsWatch(self.model)
            dropped = self.cache.rebind(model_fingerprint(self.model))
        logger.warning(
            "prefixcache: the model's weights changed: %d cached tokens dropped; what is computed from now on "
            "is saved and shared under the new weights' fingerprint",
            dropped,
        )
        return dropped

    def notice(self, message: str) -> None:
        """Log ``message`` as a warning, once per model."""
        with self._notice_lock:
            if message in self._notices:
                return
            self._notices.add(message)
        logger.warning("prefixcache: %s", message)
