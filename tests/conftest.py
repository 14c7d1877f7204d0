"""Suite-wide pytest set-up.

``SAMEPAGE_SANITIZE=1`` runs every Machine under the sanitizer (the "no false positives"
check of the sanitizer). Tests marked ``unsanitized`` check what only the plain engine does
-- the fast-forward's replays (off under the sanitizer), frames reused at once (the
sanitizer's quarantine holds them back), the sanitizer being off by default -- and are
skipped in that run.
"""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.environ.get("SAMEPAGE_SANITIZE", "") in ("", "0"):
        return
    skip = pytest.mark.skip(reason="checks the unsanitized engine (SAMEPAGE_SANITIZE=1)")
    for item in items:
        if item.get_closest_marker("unsanitized"):
            item.add_marker(skip)
