"""Collection settings for the whole tree (pytest also collects the package's doctests).

``prefixcache/lm_eval`` needs the optional ``lm-eval`` extra; without it, its modules are
not collected (tests/test_lm_eval.py skips itself) instead of failing to import.
"""

from __future__ import annotations

import importlib.util

collect_ignore = [] if importlib.util.find_spec("lm_eval") else ["prefixcache/lm_eval"]
