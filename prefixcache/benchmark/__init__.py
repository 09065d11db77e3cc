"""The benchmark behind ``python -m prefixcache bench``: workloads, systems (``continuous``
for transformers' continuous batching), runner, report, and the per-request overhead."""
