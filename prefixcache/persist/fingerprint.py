"""The fingerprint of a model: what ties saved KV to the function that computed it."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

__all__ = ["SAMPLES_PER_TENSOR", "model_fingerprint"]

SAMPLES_PER_TENSOR = 4096
"""Elements of each parameter and buffer that :func:`model_fingerprint` reads."""

# Config entries that say where or how a model was loaded, or how it answers a call,
# not which function it computes. The dtype is hashed from the parameters instead.
_VOLATILE_CONFIG = frozenset(
    {
        "_name_or_path",
        "transformers_version",
        "_commit_hash",
        "torch_dtype",
        "dtype",
        "_attn_implementation",
        "_attn_implementation_autoset",
        "_attn_implementation_internal",
        "use_cache",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
    }
)


def model_fingerprint(model: Any) -> str:
    """A sha256 hex digest that identifies the function ``model`` computes, to tie saved KV to it.

    It hashes the model's class name; its config (``model.config.to_dict()``, or a
    dict ``model.config``) as sorted JSON, without the entries that only say where or
    how it was loaded or how it answers a call (``_name_or_path``,
    ``transformers_version``, ``_commit_hash``, ``dtype``/``torch_dtype``, the
    attention implementation, ``use_cache``, ``output_attentions``,
    ``output_hidden_states``, ``return_dict``); the set of its parameters' dtypes;
    and, for every parameter and buffer (sorted by name), its name, shape, dtype and
    a sample of its values: all of them when it has at most
    :data:`SAMPLES_PER_TENSOR` elements, else that many at evenly spaced flat indices
    ``k * (numel - 1) // (SAMPLES_PER_TENSOR - 1)`` (the first and the last
    included), read as float64 on the CPU. So it is fast for large models (it reads a
    few thousand elements per tensor, wherever they live) and changes with the
    class, the config, the dtype, any shape, and any sampled element. A change only
    to elements between the samples of a large tensor is not seen.

    The model is duck-typed (any ``torch.nn.Module``, a ``config`` is optional); the
    same weights on another device give the same fingerprint. Raises ``ValueError``
    for a tensor on the meta device (its values are unknown) and ``TypeError`` for
    something that is not a ``torch.nn.Module``.

    >>> a, b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    >>> model_fingerprint(a) == model_fingerprint(b)  # other random weights
    False
    >>> _ = b.load_state_dict(a.state_dict())
    >>> model_fingerprint(a) == model_fingerprint(b), len(model_fingerprint(a))
    (True, 64)
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    digest = hashlib.sha256()

    def part(label: str, value: bytes) -> None:
        # Length-prefixed, so that no two different sequences of parts hash alike.
        for piece in (label.encode(), value):
            digest.update(len(piece).to_bytes(8, "little"))
            digest.update(piece)

    part("format", b"prefixcache-fingerprint/1")
    part("class", type(model).__name__.encode())
    part("config", _config_json(getattr(model, "config", None)).encode())
    tensors: dict[str, torch.Tensor] = dict(model.named_parameters())
    dtypes = sorted({str(t.dtype) for t in tensors.values()})
    tensors.update(model.named_buffers())
    part("dtypes", ",".join(dtypes).encode())
    for name in sorted(tensors):
        tensor = tensors[name]
        part("tensor", f"{name}:{list(tensor.shape)}:{tensor.dtype}".encode())
        part("sample", _sample(name, tensor))
    return digest.hexdigest()


def _config_json(config: object) -> str:
    to_dict = getattr(config, "to_dict", None)
    if callable(to_dict):
        config = to_dict()
    if not isinstance(config, dict):
        return "null"
    return json.dumps(_stable(config), sort_keys=True, separators=(",", ":"))


def _stable(value: object) -> object:
    """``value`` as plain JSON data, without volatile config entries, at any depth."""
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict) and not isinstance(value, dict):
        value = to_dict()  # a nested config
    if isinstance(value, dict):
        return {str(k): _stable(v) for k, v in value.items() if k not in _VOLATILE_CONFIG}
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(json.dumps(_stable(v), sort_keys=True) for v in value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    text = str(value)
    # An object's default str names its address, which differs between processes.
    return type(value).__name__ if " at 0x" in text else f"{type(value).__name__}:{text}"


@torch.no_grad()
def _sample(name: str, tensor: torch.Tensor) -> bytes:
    if tensor.is_meta:
        raise ValueError(
            f"model: {name} is on the meta device (offloaded or not loaded), so its values "
            f"cannot be fingerprinted; load the weights first"
        )
    tensor = tensor.detach()
    n = tensor.numel()
    if n > SAMPLES_PER_TENSOR:
        at = torch.arange(SAMPLES_PER_TENSOR, dtype=torch.int64) * (n - 1) // (SAMPLES_PER_TENSOR - 1)
        # Indexing by position reads only the samples, even from a non-contiguous tensor.
        flat = tensor[torch.unravel_index(at.to(tensor.device), tensor.shape)]
    else:
        flat = tensor.reshape(-1)
    if flat.is_complex():
        flat = torch.view_as_real(flat)
    try:
        values = flat.to("cpu", torch.float64)
    except (RuntimeError, TypeError):  # a dtype with no float conversion: hash its bytes
        values = flat.cpu().contiguous().view(torch.uint8)
    return bytes(values.contiguous().numpy().tobytes())


# -- saving -------------------------------------------------------------------------------
