"""Capturing a host's anonymous memory as a snapshot of tokens (``samepage capture``) and
starting programs with KSM's merge_any set (``samepage launch``).

Sources: live processes (samepage.capture.live over samepage.capture.procfs), ELF core files
(samepage.capture.elfcore) and raw memory files (samepage.capture.raw). Tokens:
samepage.capture.tokens. The file format and its loader: samepage.capture.snapshot and
docs/snapshot-format.md. This package sits beside the scenarios: it imports
samepage.scenario's error and JSON helpers, never the CLI.
"""

from .snapshot import (HOLE, SWAPPED, CapturedProcess, CapturedVma, SnapProcess, Snapshot,
                       SnapVma, build_snapshot, load_snapshot, save_snapshot)

__all__ = ["HOLE", "SWAPPED", "CapturedProcess", "CapturedVma", "SnapProcess", "Snapshot",
           "SnapVma", "build_snapshot", "load_snapshot", "save_snapshot"]
