"""A request's input, checked once: the token ids, the mask, each row's padding and tokens.

A batch is left-padded: row ``r`` has ``pad[r]`` padding tokens, then its real
tokens to the end. The checks run on one host copy of the ids and the mask, with
as few operations as will do (a request's own work is the cache's overhead); each
row's tokens are converted to the tree's ``array('i')`` here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..arguments import TokenIds, as_tokens

__all__ = [
    "Batch",
    "check_ids",
    "left_pad",
    "position_ids",
    "read_batch",
    "sequences_per_prompt",
    "read_prompts",
]


@dataclass(frozen=True)
class Batch:
    """A validated request: the batch, its mask, and each row's real tokens."""

    input_ids: torch.Tensor
    """``[B, P]`` on the model's device."""
    attention_mask: torch.Tensor
    """``[B, P]``, left padding only."""
    pads: tuple[int, ...]
    """Padding tokens at the start of each row."""
    prompts: tuple[TokenIds, ...]
    """Each row's tokens without padding, as checked ``array('i')``."""

    @property
    def n_tokens(self) -> int:
        """Real tokens over all rows."""
        return sum(len(tokens) for tokens in self.prompts)


def check_ids(input_ids: Any, *, vocab: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` as ``[batch, seq]`` on ``device``, and a host copy; or a clear error."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids: expected a torch.Tensor of token ids, got {type(input_ids).__name__}")
    if input_ids.dtype not in (torch.int64, torch.int32):  # what an embedding accepts as indices
        raise TypeError(f"input_ids: expected an int64 or int32 tensor, got dtype {input_ids.dtype}")
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids: expected shape [batch, seq] or [seq], got {list(input_ids.shape)}")
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids: empty prompt, shape {list(input_ids.shape)}")
    if input_ids.device != device:
        raise ValueError(f"input_ids: on {input_ids.device}, but the model is on {device}; move it there first")
    host = input_ids.cpu()  # one transfer; every check below runs on the host copy
    low, high = (int(v) for v in torch.aminmax(host))
    if low < 0 or high >= vocab:
        bad = low if low < 0 else high
        raise ValueError(f"input_ids: token id {bad} is outside the vocabulary [0, {vocab})")
    return input_ids, host


def read_batch(
    input_ids: Any,
    attention_mask: Any,
    *,
    vocab: int,
    device: torch.device,
    generation_config: Any = None,
    generate_kwargs: dict[str, Any] | None = None,
) -> Batch:
    """Check a request's ids and mask and split it into its prompts. Without a mask, ``generate``
    infers one from the pad token (pass ``generate_kwargs`` and ``generation_config``);
    a forward pass takes every token as real. Raises ``TypeError``/``ValueError`` naming
    the argument."""
    if (
        isinstance(input_ids, torch.Tensor)
        and input_ids.dim() == 1
        and isinstance(attention_mask, torch.Tensor)
        and attention_mask.dim() == 1
    ):
        attention_mask = attention_mask.unsqueeze(0)
    input_ids, ids = check_ids(input_ids, vocab=vocab, device=device)
    if attention_mask is None:
        attention_mask, mask = _default_mask(input_ids, ids, generation_config, generate_kwargs)
    else:
        mask = _check_mask(attention_mask, input_ids, device)
    width = ids.shape[1]
    if mask is None:
        pads = (0,) * ids.shape[0]
    else:
        ones = mask.sum(axis=1)
        pads = tuple(int(p) for p in width - ones)
    # In range [0, vocab): the tree takes these prompts without checking them again.
    host = ids.to(torch.int32).numpy()
    prompts = tuple(TokenIds("i", host[r, pad:].tobytes()) for r, pad in enumerate(pads))
    return Batch(input_ids, attention_mask, pads, prompts)


def read_prompts(prompts: Any, *, vocab: int, device: torch.device) -> list[torch.Tensor]:
    """``prompts`` (a 1-D tensor or list of token ids, a ``[batch, seq]`` tensor of unpadded
    prompts, or a list of those) as 1-D id tensors on ``device``; or a clear error."""
    if isinstance(prompts, torch.Tensor):
        items: list[Any] = list(prompts) if prompts.dim() == 2 else [prompts]
    elif isinstance(prompts, (list, tuple)) and prompts and all(isinstance(t, int) for t in prompts):
        items = [prompts]
    elif isinstance(prompts, (list, tuple)):
        items = list(prompts)
    else:
        raise TypeError(f"prompts: expected token ids, a list of them or a tensor, got {type(prompts).__name__}")
    if not items:
        raise ValueError("prompts: no prompts given")
    rows = []
    for i, item in enumerate(items):
        if not isinstance(item, torch.Tensor):
            name = "prompts" if items[0] is prompts else f"prompts[{i}]"
            item = torch.tensor(as_tokens(item, name), dtype=torch.long, device=device)
        ids, _ = check_ids(item, vocab=vocab, device=device)
        if ids.shape[0] != 1:
            raise ValueError(f"prompts[{i}]: expected one prompt of token ids, got shape {list(item.shape)}")
        rows.append(ids[0])
    return rows


def _check_mask(attention_mask: Any, input_ids: torch.Tensor, device: torch.device) -> np.ndarray | None:
    """The mask's host copy (None when it is all ones), or a clear error."""
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask: expected a torch.Tensor or None, got {type(attention_mask).__name__}")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask: shape {list(attention_mask.shape)} does not match input_ids {list(input_ids.shape)}"
        )
    if attention_mask.device != device:
        raise ValueError(f"attention_mask: on {attention_mask.device}, but the model is on {device}")
    if attention_mask.dtype.is_floating_point or attention_mask.dtype.is_complex:
        raise TypeError(f"attention_mask: expected an integer or bool tensor of 0 and 1, got {attention_mask.dtype}")
    host = attention_mask.cpu()
    low, high = (int(v) for v in torch.aminmax(host if host.dtype != torch.bool else host.to(torch.uint8)))
    if low == high == 1:
        return None
    mask = host.numpy().astype(np.int64)
    if low < 0 or high > 1:
        raise ValueError("attention_mask: values must be 0 or 1")
    # Left padding only: each row is some zeros, then ones to the end.
    ones = mask.sum(axis=1)
    width = mask.shape[1]
    expected = np.arange(width)[None, :] >= (width - ones)[:, None]
    if not (mask == expected).all():
        bad_row = int(np.flatnonzero((mask != expected).any(axis=1))[0])
        kind = "right padding" if mask[bad_row, -1] == 0 else "a hole"
        raise ValueError(
            f"attention_mask: row {bad_row} has {kind}; prompts must be left-padded "
            "(padding_side='left'), ones from the first real token to the end"
        )
    if (ones == 0).any():
        raise ValueError(f"attention_mask: row {int(np.flatnonzero(ones == 0)[0])} is all padding (an empty prompt)")
    return mask


def _default_mask(
    input_ids: torch.Tensor, ids: torch.Tensor, generation_config: Any, kwargs: dict[str, Any] | None
) -> tuple[torch.Tensor, np.ndarray | None]:
    """The mask ``generate`` would infer without one: pad tokens masked when the pad token
    is in the input and is not an end-of-sequence token; else all ones."""
    ones = torch.ones_like(input_ids)
    if kwargs is None:
        return ones, None  # a forward pass does not infer a mask
    config = kwargs.get("generation_config") or generation_config
    pad = kwargs.get("pad_token_id", getattr(config, "pad_token_id", None))
    eos = kwargs.get("eos_token_id", getattr(config, "eos_token_id", None))
    if pad is None:
        return ones, None
    eos_ids = set(torch.as_tensor(eos).reshape(-1).tolist()) if eos is not None else set()
    pad_ids = torch.as_tensor(pad).reshape(-1).tolist()
    is_pad = np.isin(ids.numpy(), pad_ids)
    if eos_ids & set(pad_ids) or not is_pad.any():
        return ones, None
    inferred = torch.from_numpy((~is_pad).astype(np.int64)).to(input_ids.device)
    return inferred, _check_mask(inferred, input_ids, input_ids.device)


def sequences_per_prompt(model: Any, kwargs: dict[str, Any]) -> tuple[int, bool]:
    """How many rows ``generate(**kwargs)`` runs per prompt (``num_beams`` or
    ``num_return_sequences``, the larger), and whether they are beams (reordered as they
    move, so that a row of the cache at the end is not a returned sequence)."""
    config = kwargs.get("generation_config") or model.generation_config
    beams = int(kwargs.get("num_beams", getattr(config, "num_beams", 1)) or 1)
    returned = int(kwargs.get("num_return_sequences", getattr(config, "num_return_sequences", 1)) or 1)
    return max(beams, returned), beams > 1


def left_pad(
    rows: Sequence[Sequence[int] | torch.Tensor], pad_id: int = 0, *, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` of token ids as one batch, as ``generate`` and :class:`CachedModel` take it:
    ``input_ids`` ``[len(rows), longest]`` with ``pad_id`` before each shorter row, and the
    ``attention_mask`` (1 on each row's tokens, 0 on its padding).

    >>> ids, mask = left_pad([[5, 6, 7], [8]])
    >>> ids.tolist(), mask.tolist()
    ([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]])
    """
    if not rows:
        raise ValueError("rows: expected at least one row of token ids, got none")
    tensors = [torch.as_tensor(row, dtype=torch.long) for row in rows]
    for i, row in enumerate(tensors):
        if row.dim() != 1 or row.numel() == 0:
            raise ValueError(f"rows[{i}]: expected a non-empty sequence of token ids, got shape {list(row.shape)}")
    width = max(row.numel() for row in tensors)
    ids = torch.full((len(tensors), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(tensors), width), dtype=torch.long)
    for i, row in enumerate(tensors):
        ids[i, width - row.numel() :] = row
        mask[i, width - row.numel() :] = 1
    return ids.to(device) if device is not None else ids, mask.to(device) if device is not None else mask


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Position ids counted from each row's first real token, as ``generate`` makes them."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)
