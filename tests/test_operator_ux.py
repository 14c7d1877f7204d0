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


def _snapshot(tmp_path) -> Path:
    """Three processes holding the same 200 pages (a static snapshot)."""
    import numpy as np

    from samepage.capture import procfs
    from samepage.capture.snapshot import (CapturedProcess, CapturedVma, build_snapshot,
                                           save_snapshot)
    from samepage.capture.tokens import digest_pages, token_page

    flags = procfs.VMA_READ | procfs.VMA_WRITE | procfs.VMA_MERGEABLE
    procs = []
    for i in range(3):
        toks = [(j % 40) + 1 for j in range(200)]
        d = digest_pages(b"".join(token_page(t) for t in toks))
        vma = CapturedVma("", 0x7f0000000000, 200, flags, 0, np.arange(200, dtype=np.uint64), d,
                          np.zeros(200, np.uint8))
        procs.append(CapturedProcess(2000 + i, f"w{i}", f"pid:{2000 + i}", True, True, [vma]))
    s = build_snapshot(procs, sources=[p.source for p in procs], samples=1, interval_s=0.0,
                       zero_pfn_known=True)
    path = tmp_path / "s.npz"
    save_snapshot(s, path)
    return path


def test_kernel_measure_beside_a_forecast_does_not_call_the_forecast_unsettled(
        tmp_path, monkeypatch):
    """The forecast beside a measure runs for the kernel's number of full scans; its summary
    must not say "NOT settled" when its counters settled as the kernel's did."""
    import samepage.cli.kernel as cli_kernel
    import samepage.kernel.measure as kmeasure
    from samepage.capture import load_snapshot
    from samepage.forecast import build_machine, simulate
    from samepage.forecast.run import Until

    snap_path = _snapshot(tmp_path)
    tun = {"pages_to_scan": 200, "sleep_millisecs": 100}

    def fake_measure(pids, settings, until_kind, until_value, **kw):
        # the "kernel" is the model itself, stopped by the same settled rule
        built = build_machine(load_snapshot(str(snap_path)), tunables=settings)
        doc = simulate(built, Until("converged")).as_json()
        doc.pop("curve", None)
        return doc

    monkeypatch.setattr(kmeasure, "measure", fake_measure)
    monkeypatch.setattr(cli_kernel, "require_live_ksm", lambda what: None)
    args = ["kernel", "measure", "--pid", "2000", "--set", "pages_to_scan=200",
            "--set", "sleep_millisecs=100", "--forecast", str(snap_path)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    forecast_line = next(x for x in r.output.splitlines() if x.startswith("forecast:"))
    assert "converged after" in forecast_line
    assert "NOT settled" not in r.output
    r = CliRunner().invoke(app, args + ["--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["kernel"]["converged"] is True and doc["forecast"]["converged"] is True
    assert len(doc["forecast"]["scans"]) == len(doc["kernel"]["scans"])


def _run_with_stderr_on_a_pty(args, timeout=120):
    master, slave = pty.openpty()
    try:
        p = subprocess.Popen([SAMEPAGE, *args], stdout=subprocess.PIPE, stderr=slave,
                             stdin=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "200"})
        os.close(slave)
        err = b""
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            if not ready:
                p.kill()
                raise AssertionError("no output on the terminal")
            try:
                chunk = os.read(master, 4096)
            except OSError:          # EIO: the child closed the terminal
                break
            if not chunk:
                break
            err += chunk
        out = p.stdout.read().decode()
        p.wait(timeout)
        return p.returncode, out, err.decode(errors="replace")
    finally:
        os.close(master)


def test_policy_all_shows_progress_on_a_terminal_and_nothing_when_piped(tmp_path):
    sc = str(EXAMPLES / "host-under-pressure.toml")
    rc, out, err = _run_with_stderr_on_a_pty(["run", sc, "--policy", "all", "--duration", "5"])
    assert rc == 0, out + err
    assert "running policy 1 of 8: none" in err
    assert "running policy 8 of 8: advisor" in err
    assert "tuning policies over 5 s" in out
    r = subprocess.run([SAMEPAGE, "run", sc, "--policy", "all", "--duration", "5"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == ""


def test_sweep_marks_cells_that_ended_before_the_second_full_scan(tmp_path):
    """demo.toml runs 80 batches: at pages_to_scan=100 ksmd has not finished one full scan, so
    the cell saved nothing and its "converged" time means nothing; at 1600 it merged."""
    demo = ROOT / "src" / "samepage" / "data" / "demo.toml"
    r = CliRunner().invoke(app, ["sweep", str(demo), "--grid", "ksm.pages_to_scan=100,1600",
                                 "--serial"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    rows = {line.split("│")[2].strip(): line for line in r.output.splitlines()
            if line.startswith("│")}
    assert "too short" in rows["100"]
    assert "too short" not in rows["1600"] and "1.298" in rows["1600"]
    assert "ended before ksmd's second full scan" in r.output
    r = CliRunner().invoke(app, ["sweep", str(demo), "--grid", "ksm.pages_to_scan=1600",
                                 "--serial"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "too short" not in r.output


def test_capture_summary_gives_mib_as_the_table_does(tmp_path):
    import re
    import time
    child = subprocess.Popen([sys.executable, "-c",
                              "import time; b = bytearray(b'x' * (4 << 20)); time.sleep(60)"])
    try:
        time.sleep(1.0)
        r = subprocess.run([SAMEPAGE, "capture", "--pid", str(child.pid), "-o",
                            str(tmp_path / "c.npz")], capture_output=True, text=True,
                           timeout=120, env={**os.environ, "COLUMNS": "200"})
    finally:
        child.kill()
        child.wait()
    assert r.returncode == 0, r.stderr
    m = re.search(r"Captured ([\d.]+) MiB \(([\d.]+) MB\) in", r.stdout)
    assert m, r.stdout
    mib, mb = float(m.group(1)), float(m.group(2))
    assert mib >= 4 and abs(mib * 2**20 - mb * 1e6) <= 0.1e6
    # the "all" row, whatever the width of the pid column (pids wrap at pid_max)
    all_row = next(x for x in r.stdout.splitlines()
                   if x.startswith("│") and x.split("│")[1].strip() == "all")
    assert float(all_row.split("│")[-2]) == mib


def test_recommend_says_one_setting_tried(tmp_path):
    snap = _snapshot(tmp_path)
    r = CliRunner().invoke(app, ["forecast", str(snap), "--recommend", "--within", "1h",
                                 "--max-cpu", "100"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "(1 setting tried, slowest scan rate first)" in r.output
    r = CliRunner().invoke(app, ["forecast", str(snap), "--recommend", "--within", "2s",
                                 "--max-cpu", "100"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert " settings tried, slowest scan rate first)" in r.output
