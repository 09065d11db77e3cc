"""lm-evaluation-harness integration: the ``prefixcache`` model and an offline few-shot task.

Importing this package registers :class:`PrefixCacheLM` with lm-eval under the name
``prefixcache``. It needs the ``lm-eval`` extra: ``pip install 'prefixcache[lm-eval]'``.

- :mod:`.model`: ``PrefixCacheLM``, lm-eval's ``HFLM`` with every forward pass through the cache.
- :mod:`.offline_task`: an MMLU-shaped task, dataset and tokenizer written from a seed.
- :mod:`.cli`: ``python -m prefixcache eval ...``, lm-eval's own command line with the model registered.
"""

from __future__ import annotations

try:
    import lm_eval as _lm_eval  # noqa: F401  (the top-level lm_eval, not this package)
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"prefixcache.lm_eval needs lm-evaluation-harness: pip install 'prefixcache[lm-eval]' ({err})"
    ) from err

from typing import Any

from .model import PrefixCacheLM

__all__ = ["OfflineTask", "PrefixCacheLM", "write_task"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that ``python -m prefixcache.lm_eval.offline_task`` runs it once.
    if name in ("OfflineTask", "write_task"):
        from . import offline_task

        return getattr(offline_task, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
