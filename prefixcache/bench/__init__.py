"""The benchmark behind ``python -m prefixcache bench``: workloads, systems, runner, report."""
