"""Collection settings for the whole tree (pytest also collects the package's doctests), and
the check that no call of ours uses a name transformers has deprecated.

``prefixcache/lm_eval`` needs the optional ``lm-eval`` extra; without it, its modules are
not collected (tests/test_lm_eval.py skips itself) instead of failing to import.

transformers announces a renamed argument in two ways: a ``FutureWarning`` attributed to
the caller (pyproject.toml's ``filterwarnings`` turns those raised by ``prefixcache`` and
``tests`` into errors), and, for attributes of its outputs such as ``past_key_values``, a
message on its logger. The fixture below fails a test in which such a message was logged
for a call made from our code.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Iterator

import pytest

collect_ignore = [] if importlib.util.find_spec("lm_eval") else ["prefixcache/lm_eval"]

_OURS = ("prefixcache", "tests", "conftest", "bench")
_PASSING = ("transformers", "logging", "functools", "torch")


class _DeprecationsFromUs(logging.Handler):
    """Records transformers' deprecation messages whose nearest caller outside transformers is ours."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "deprecated" not in message.lower():
            return
        frame = sys._getframe(1)
        while frame is not None:
            module = frame.f_globals.get("__name__", "")
            if not module.startswith(_PASSING):
                if module.startswith(_OURS):
                    self.found.append(f"{message} (called from {module}:{frame.f_lineno})")
                return
            frame = frame.f_back


_handler = _DeprecationsFromUs()
logging.getLogger("transformers").addHandler(_handler)


@pytest.fixture(autouse=True)
def _no_deprecated_calls() -> Iterator[None]:
    before = len(_handler.found)
    yield
    new = _handler.found[before:]
    assert not new, f"a call of ours uses a name transformers deprecated: {new}"
