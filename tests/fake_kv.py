"""A fake "model" whose KV at position i is a function of tokens[0..i] alone.

It has the one property prefix reuse relies on, so any slot mix-up (a split that
shifts slots, a freed slot reused while still owned) shows up as a wrong value.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from prefixcache.kv import LayerKV, LayerSpec

LAYERS = (LayerSpec(kv_heads=1, key_dim=2, value_dim=1), LayerSpec(kv_heads=2, key_dim=1, value_dim=2))
_MOD = 1_000_003


def prefix_codes(tokens: Sequence[int]) -> list[int]:
    """A rolling hash of every prefix: code[i] depends on tokens[0..i] only."""
    codes, h = [], 7
    for t in tokens:
        h = (h * 31 + int(t) + 1) % _MOD
        codes.append(h)
    return codes


def fake_kv(tokens: Sequence[int], *, batch: int = 1, row: int = 0, offset: int = 0) -> list[LayerKV]:
    """Per-layer (K, V), each [batch, heads, offset + len(tokens), dim], float64.

    Row ``row`` holds the tokens starting at position ``offset``; everything else is NaN,
    so reading the wrong row or position is caught too.
    """
    codes = torch.tensor(prefix_codes(tokens), dtype=torch.float64)
    pos = torch.arange(len(tokens), dtype=torch.float64)
    n = offset + len(tokens)
    out = []
    for layer, spec in enumerate(LAYERS):
        kv = []
        for part, dim in ((0, spec.key_dim), (1, spec.value_dim)):
            t = torch.full((batch, spec.kv_heads, n, dim), float("nan"), dtype=torch.float64)
            for h in range(spec.kv_heads):
                for d in range(dim):
                    t[row, h, offset:, d] = codes * (1 + layer) + pos * (1 + d) + 1000 * part + 100 * h
            kv.append(t)
        out.append((kv[0], kv[1]))
    return out


def assert_kv_is(gathered: list[LayerKV], tokens: Sequence[int]) -> None:
    """Check that ``gathered`` holds exactly the fake KV of ``tokens``."""
    want = fake_kv(tokens)
    assert len(gathered) == len(want)
    for (gk, gv), (wk, wv) in zip(gathered, want, strict=False):
        assert gk.shape == wk.shape and gv.shape == wv.shape, (gk.shape, wk.shape)
        assert torch.equal(gk, wk) and torch.equal(gv, wv), f"wrong KV for {list(tokens)}"
