"""README.md says what the code does: its options table is every option ``wrap`` takes, with
the defaults the code has; the files it links to exist; and it stays short."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from pathlib import Path

from prefixcache.config import CacheConfig
from prefixcache.hf.model import WRAP_OPTIONS, CachedModel

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def code_defaults() -> dict[str, object]:
    """Every option of ``wrap`` and its default, read from the code."""
    defaults: dict[str, object] = {f.name: f.default for f in dataclasses.fields(CacheConfig)}
    for name, parameter in inspect.signature(CachedModel.__init__).parameters.items():
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY:
            defaults[name] = parameter.default
    return defaults


def table_rows() -> dict[str, str]:
    """``option -> default cell`` of the README's options table."""
    section = README.split("\n## Options\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        found = re.fullmatch(r"\| `(\w+)` \| `([^`]*)` \| .+ \|", line)
        if found:
            assert found.group(1) not in rows, f"README.md: option {found.group(1)} listed twice"
            rows[found.group(1)] = found.group(2)
    return rows


def test_the_options_table_is_every_option_with_its_default() -> None:
    rows = table_rows()
    defaults = code_defaults()
    assert set(defaults) == set(WRAP_OPTIONS)
    assert list(rows) == list(WRAP_OPTIONS), "README.md's options table: options missing, extra or out of order"
    for name, cell in rows.items():
        assert ast.literal_eval(cell) == defaults[name], f"README.md: {name} defaults to {defaults[name]!r}, not {cell}"


def test_it_opens_with_the_two_commands_of_a_new_machine() -> None:
    first = README.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line for line in first.splitlines() if line and not line.startswith("#")]
    assert commands[0].endswith("python -m prefixcache bench") and "pip install torch==2.13.0" in commands[0]
    assert commands[1] == "bash .ci/run"
    assert "python -m pytest -q --hypothesis-profile=ci" in (ROOT / ".ci" / "run").read_text()


def test_every_linked_file_exists_and_it_stays_short() -> None:
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    assert links, "no links found: the pattern no longer matches README.md"
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, f"README.md links to missing files: {missing}"
    assert len(README.splitlines()) < 300
