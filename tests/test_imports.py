"""The package's layering, read from its source: which part may import which.

Each part of ``prefixcache`` may import only the parts listed before it in
``LAYERS`` (imports made only for type checking count too). transformers is
imported only by the parts that run a model, and the names that change between
transformers releases only by ``prefixcache/hf/kvcache.py``; redis-py only by
the remote tier. A new import that breaks this fails here, naming the module and
the import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "prefixcache"

LAYERS = (
    "tree",
    "errors",
    "arguments",
    "stats",
    "remote.url",
    "kv",
    "rope",
    "config",
    "claims",
    "hit",
    "pools",
    "stores",
    "pins",
    "persist",
    "remote",
    "cache",
    "hf",
    "lm_eval",
    "benchmark",
    "__main__",
    "",  # prefixcache/__init__.py
)
"""Parts of the package, lowest first: a part imports only parts before it (and itself)."""

MODEL_PARTS = {"hf", "lm_eval", "benchmark", "__main__"}
"""The parts that run a model and so may import transformers."""

VERSION_SENSITIVE = {"DynamicCache", "DynamicLayer", "cache_utils", "modeling_rope_utils", "GenerationMixin"}
"""transformers names whose home or signature has changed between releases."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def part_of(module: str) -> str:
    """The most specific entry of ``LAYERS`` that ``module`` (relative to the package) is in."""
    best = ""
    for part in LAYERS:
        if part and (module == part or module.startswith(part + ".")) and len(part) > len(best):
            best = part
    return best


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, absolute module, names)`` for every import in ``path``."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names = [alias.name for alias in node.names]
            if node.level == 0:
                found.append((node.lineno, node.module or "", names))
                continue
            base = package.split(".") if package else []
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(["prefixcache", *base, *([node.module] if node.module else [])])
            if node.module is None:  # from . import a, b: each name is a module or a name of the package
                found.extend((node.lineno, f"{target}.{name}", []) for name in names)
            else:
                found.append((node.lineno, target, names))
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_the_layers_name_every_part() -> None:
    assert len(SOURCES) > 50, f"found only {len(SOURCES)} modules under {PACKAGE}"
    unnamed = [module_name(p) for p in SOURCES if part_of(module_name(p)) == "" and module_name(p) != ""]
    assert not unnamed, f"modules outside every layer of LAYERS: {unnamed}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_part_imports_only_parts_below_it(path: Path) -> None:
    here = part_of(module_name(path))
    rank = LAYERS.index(here)
    wrong = []
    for line, target, _ in imports(path):
        if target != "prefixcache" and not target.startswith("prefixcache."):
            continue
        there = part_of(target.removeprefix("prefixcache").removeprefix("."))
        if LAYERS.index(there) > rank:
            wrong.append(f"line {line}: {target} ({there or 'the package'} is above {here or 'the package'})")
    assert not wrong, f"{path.relative_to(PACKAGE)} imports upward: {wrong}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_transformers_and_redis_stay_where_they_belong(path: Path) -> None:
    module = module_name(path)
    here = part_of(module)
    for line, target, names in imports(path):
        top = target.split(".")[0]
        if top == "transformers":
            assert here in MODEL_PARTS, f"{module} line {line}: imports transformers outside {sorted(MODEL_PARTS)}"
            touched = set(target.split(".")[1:]) | set(names)
            if module != "hf.kvcache":
                assert not touched & VERSION_SENSITIVE, (
                    f"{module} line {line}: {sorted(touched & VERSION_SENSITIVE)} change between transformers "
                    "releases; reach them through prefixcache/hf/kvcache.py"
                )
        if top == "redis":
            assert here == "remote", f"{module} line {line}: imports redis outside prefixcache/remote"


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The test above reads relative imports the way Python resolves them."""
    assert part_of("remote.url") == "remote.url" and part_of("remote.tier") == "remote"
    assert part_of("hf.kvcache") == "hf" and part_of("") == ""
    found = {target for _, target, _ in imports(PACKAGE / "hf" / "kvcache.py")}
    assert "prefixcache.kv.layout" in found and "transformers" in found
    found = {target for _, target, _ in imports(PACKAGE / "cache" / "__init__.py")}
    assert any(t.startswith("prefixcache.cache.") for t in found), found
