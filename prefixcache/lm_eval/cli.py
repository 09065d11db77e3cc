"""``python -m prefixcache eval ...``: lm-eval's own command line, with the ``prefixcache`` model registered.

lm-eval 0.4 finds models in its registry only (no entry points for other packages), so
its ``lm_eval`` command cannot name a model an installed package provides. This runs
that same command line after importing :mod:`prefixcache.lm_eval`, which registers
``prefixcache``; every argument is lm-eval's (``--model_args``, ``--tasks``,
``--include_path``, ``--num_fewshot``, ``--batch_size``, ``--limit``, ``--output_path``,
...). ``--model`` defaults to ``prefixcache``.

    python -m prefixcache eval --model_args pretrained=PATH,budget=4GiB --tasks mmlu --num_fewshot 5
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    """Run ``lm-eval run`` with ``argv`` (``--model prefixcache`` unless another is named); returns 0."""
    from lm_eval.__main__ import cli_evaluate

    from . import PrefixCacheLM  # noqa: F401  (registers the model)

    if not any(arg in ("--model", "-M") or arg.startswith("--model=") for arg in argv):
        argv = ["--model", "prefixcache", *argv]
    saved = sys.argv
    sys.argv = ["lm-eval", "run", *argv]  # lm-eval's parser reads sys.argv
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
    return 0
