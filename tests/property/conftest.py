"""Hypothesis profiles for the property suite.

- ``dev`` (the default): random examples on every run, failures saved in ``.hypothesis/``
  and replayed first next time.
- ``ci`` (under ``CI=true``): the same number of examples, derandomized, so that a run is
  repeatable and a new failure is found by a developer's run, not by a merge that happens to
  draw it. Nothing is saved.

Each test sets its own ``max_examples`` (the pure parsers take hundreds a second, the HTTP
ones tens), so the suite's time stays bounded; ``deadline`` is off because a shared CI
machine's pauses are no bug. ``HYPOTHESIS_PROFILE`` picks another profile by name, and
``SIGNBACK_PROPERTY_SCALE`` multiplies every test's examples (e.g. 10 for a long hunt).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = settings(
    deadline=None,
    # Servers and databases are made once per test, not per example, on purpose.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("dev", _COMMON)
settings.register_profile("ci", _COMMON, derandomize=True, database=None)

_in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if _in_ci else "dev"))


def examples(count: int) -> int:
    """``count`` examples, scaled by SIGNBACK_PROPERTY_SCALE."""
    return max(1, int(count * float(os.environ.get("SIGNBACK_PROPERTY_SCALE", "1"))))
