"""Shared test settings: hypothesis profiles.

``dev`` (the default) is quick; ``ci`` runs more examples and longer state
machines and is what ``.ci/run`` selects (``--hypothesis-profile=ci``).
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=60, stateful_step_count=40, deadline=None)
settings.register_profile(
    "ci",
    max_examples=200,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("dev")
