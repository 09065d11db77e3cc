"""Saving a PrefixCache to one safetensors file and loading it back, and the model fingerprint
that ties the file to the model whose KV it holds.

- :mod:`.fingerprint`: what identifies a model's function.
- :mod:`.fileformat`: the file's bytes, written and checked.
- :mod:`.io`: atomic save and checked load, through the cache's public API.
"""

from .fileformat import FORMAT, VERSION
from .fingerprint import SAMPLES_PER_TENSOR, model_fingerprint
from .io import load, save

__all__ = ["FORMAT", "SAMPLES_PER_TENSOR", "VERSION", "load", "model_fingerprint", "save"]
