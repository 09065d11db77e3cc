"""The benchmark behind ``python -m prefixcache bench``: its command line (``cli``),
workloads, systems (``ideal`` for the best any prefix cache could do, ``continuous``
for transformers' continuous batching), runner, report, and the per-request overhead."""
