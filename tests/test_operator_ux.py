"""Operator-facing command-line behaviour found in a README walkthrough: the same-folio
comparison's settle batch, kernel measure beside a forecast, progress of --policy all,
and the small wording fixes."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from samepage.cli.main import app
from samepage.scenario import load_scenario
from samepage.scenario.same_folio_compare import compare_same_folio

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SAMEPAGE = str(Path(sys.executable).with_name("samepage"))

SETTLING = ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile",
            "stable_node_chains", "stable_node_dups", "ksm_zero_pages", "general_profit")


def _first_settled_batch(records):
    """The first batch from which the merge counters equal the last batch's (by hand)."""
    last = [records[-1][k] for k in SETTLING]
    first = records[-1]["batch"]
    for rec in reversed(records):
        if [rec[k] for k in SETTLING] != last:
            break
        first = rec["batch"]
    return first


def test_same_folio_all_settles_when_the_merge_counters_stop_not_at_the_last_batch():
    sc = load_scenario(str(EXAMPLES / "thp-identical.toml"))
    results = {r.strategy: r for r in compare_same_folio(sc)}
    for r in results.values():
        # ksmd_cpu_us and the per-batch ops move every batch; they must not delay "settled"
        assert r.settled_batch == _first_settled_batch(r.records)
        assert r.settled_batch < r.records[-1]["batch"]
    # split-retry merges the same-folio pair in the same scan: it settles earlier than v6.18
    assert results["split-retry"].settled_batch < results["v6.18"].settled_batch


def test_same_folio_all_table_shows_the_settle_batches():
    r = CliRunner().invoke(app, ["run", str(EXAMPLES / "thp-identical.toml"),
                                 "--same-folio", "all"])
    assert r.exit_code == 0, r.output
    row = next(line for line in r.output.splitlines() if "counters settle at batch" in line)
    nums = [int(x) for x in row.replace("│", " ").split() if x.isdigit()]
    assert nums == [13, 13, 12]
