"""The examples run offline on the built-in tiny model and report real reuse."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_example(name: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), "--preset", "tiny", "--new-tokens", "3"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("name", ["wrap_hf_model.py", "chat.py"])
def test_example_runs_and_reuses_prefixes(name: str) -> None:
    out = run_example(name)
    rate = re.search(r"hit rate[^0-9]*([0-9.]+)%", out)
    assert rate is not None, out
    assert float(rate.group(1)) > 50.0
