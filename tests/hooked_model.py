"""A tiny float64 Llama to put forward hooks on, and the hook helper.

Each test module builds its own model with :func:`own_llama`, so that a hook left
behind by a failing test cannot reach the models other modules share.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from .tiny_models import config_for

TOKEN_BYTES = 2 * 2 * 2 * 8 * 8  # K and V, 2 layers, 2 kv heads, head_dim 8, float64


def own_llama(seed: int = 0) -> Any:
    """A new tiny Llama in float64 and eval mode (no hooks, not shared)."""
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config_for("llama"), dtype=torch.float64).eval()


@contextlib.contextmanager
def before_forward(model: Any, action: Callable[[], None]) -> Iterator[None]:
    """Run ``action()`` at the start of every forward pass of ``model`` (in the thread
    making the pass) while the block runs; whatever it raises, the pass raises."""
    handle = model.register_forward_pre_hook(lambda module, args: action())
    try:
        yield
    finally:
        handle.remove()


def greedy(model: Any, ids: torch.Tensor, new_tokens: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The uncached model's greedy output for ``ids``."""
    return model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False)


def logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """The uncached model's logits for every position of ``ids`` ([batch, seq, vocab])."""
    with torch.no_grad():
        return model(ids).logits
