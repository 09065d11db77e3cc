"""Every causal LM type of the installed transformers: ``prefixcache.wrap`` refuses it or
gives exactly its outputs (see tests/architectures.py for how each is built and checked).

When the module ends it prints a summary, shown with or without ``-s``: how many were
exact, refused (grouped by reason), skipped (by reason) and failed (each with its checks
and differences). ``ARCHITECTURES_SUMMARY=PATH`` also writes it to ``PATH`` (relative to
the rootdir), e.g. ``ARCHITECTURES_SUMMARY=architectures-summary.txt``. For a README's
list, ``python -m tests.architectures`` (or ``architectures.sweep()``) gives one line per
model type.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .architectures import FAILED, MODEL_TYPES, SKIPPED, Outcome, check, summary


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest) -> Iterator[list[Outcome]]:
    """Collects every test's outcome; prints the summary when the module is done."""
    found: list[Outcome] = []
    yield found
    text = summary(found)
    path = os.environ.get("ARCHITECTURES_SUMMARY")
    if path:
        Path(request.config.rootpath, path).write_text(text + "\n")
    # Past pytest's capture, so that it shows without -s (a test module has no
    # pytest_terminal_summary of its own).
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print("\n" + text, flush=True)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_architecture_is_refused_or_exact(model_type: str, outcomes: list[Outcome]) -> None:
    outcome = check(model_type)
    outcomes.append(outcome)
    if outcome.outcome == SKIPPED:
        pytest.skip(outcome.reason)
    if outcome.outcome == FAILED:
        pytest.fail(f"{model_type}: {outcome.reason}", pytrace=False)
