"""samepage's own fuzzer: input generators and mutators (strategies), the oracle that runs the
real CLI in forked children and classifies the outcome (runner), and one reproducer per failure
class found (regressions).  Used by tests/test_fuzz.py and tools/fuzz_campaign.py.

Hypothesis profiles for the fuzz tests: "ci" (default, a fixed small budget) and "fuzz" (long,
``make fuzz``), chosen by the HYPOTHESIS_PROFILE environment variable and applied only to the
fuzz tests (``fuzz_settings``), so the rest of the suite keeps its own settings.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=25, derandomize=True, **_COMMON)
settings.register_profile("fuzz", max_examples=500, **_COMMON)


def fuzz_settings(scale: float = 1.0) -> settings:
    """The selected profile (HYPOTHESIS_PROFILE, default "ci"), max_examples scaled."""
    name = os.environ.get("HYPOTHESIS_PROFILE", "ci")
    base = settings.get_profile(name if name in ("ci", "fuzz") else "ci")
    return settings(base, max_examples=max(1, int(base.max_examples * scale)))
