"""The rotary types prefixcache has analysed, by what a token's rotation depends on."""

from __future__ import annotations

from enum import Enum

__all__ = ["LENGTH_DEPENDENT_TYPES", "POSITION_ONLY_TYPES", "RopeKind"]

POSITION_ONLY_TYPES: dict[str, str] = {
    "default": "fixed inverse frequencies",
    "linear": "fixed frequencies divided by a factor",
    "llama3": "fixed frequencies, rescaled by wavelength once",
    "yarn": "fixed frequencies and attention factor (the sequence length is not used)",
    "proportional": "fixed frequencies on part of each head",
    "axial": "fixed frequencies over two-dimensional positions",
    "mrope": "an old label of the default frequencies over multimodal position sections",
    "ntk_alpha": "HunYuan's NTK scaling with a fixed alpha",
}
"""Rotary types whose rotation of a token depends on its position alone, and why."""

LENGTH_DEPENDENT_TYPES: dict[str, str] = {
    "dynamic": "frequencies recomputed from the sequence length once it reaches max_position_embeddings, "
    "and kept between calls",
    "longrope": "short or long factors, by whether the sequence is longer than original_max_position_embeddings",
}
"""Rotary types whose rotation also depends on the length of the forward pass, and how."""


class RopeKind(str, Enum):
    """How a model's rotary embedding bears on reusing cached KV."""

    POSITION_ONLY = "position-only"
    """A token's KV depends on its position, not on the sequence's length: reuse anywhere."""
    LENGTH_DEPENDENT = "length-dependent"
    """It also depends on the length of the forward pass: reuse only within a regime."""
    UNKNOWN = "unknown"
    """A rotary type not analysed here: refuse the model."""
