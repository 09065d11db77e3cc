"""Cached keys and values on a device: their layout, the pool, and the int8 codec."""

from .int8 import Int8Codec
from .layout import KVLayout, LayerKV, LayerSpec
from .pool import KVPool, run_start

__all__ = ["Int8Codec", "KVLayout", "KVPool", "LayerKV", "LayerSpec", "run_start"]
