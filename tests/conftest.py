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

# pytest-xdist's workers get COLUMNS=80 and LINES=24 from their launcher; the CLI lays out
# tables for $COLUMNS when stdout is not a terminal, and the tests expect the default (120)
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.pop("COLUMNS", None)
    os.environ.pop("LINES", None)


#: Test files that write the live kernel's KSM (through the harness and its lock). `make test`
#: runs every other test first, on all cores (pytest-xdist), then these alone (``-m live``),
#: so that ksmd is measured on a quiet machine and no test's own process with mergeable
#: memory counts as a foreign KSM user.  A new file that drives the live kernel belongs here.
LIVE_FILES = frozenset({
    "test_kernel_cli.py", "test_kernel_harness.py", "test_measure.py", "test_unmerge_busy.py",
    "conformance/test_conformance.py",
})


def _live_file(item) -> bool:
    path = str(item.path).replace(os.sep, "/")
    return any(path.endswith("tests/" + f) for f in LIVE_FILES)


def pytest_collection_modifyitems(config, items):
    live = pytest.mark.live
    for item in items:
        if _live_file(item):
            item.add_marker(live)
    if os.environ.get("SAMEPAGE_SANITIZE", "") in ("", "0"):
        return
    skip = pytest.mark.skip(reason="checks the unsanitized engine (SAMEPAGE_SANITIZE=1)")
    for item in items:
        if item.get_closest_marker("unsanitized"):
            item.add_marker(skip)
