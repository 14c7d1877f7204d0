"""samepage sweep: the grid (dotted keys, values), cells equal to plain model runs, serial ==
LocalCluster == an external `dask scheduler` with two `dask worker` processes, failed cells,
one-line errors, the results table (Parquet, CSV), the Pareto plot and the fleet estimate."""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from samepage.scenario import load_scenario
from samepage.scenario.model_runner import run_scenario_on_model
from samepage.sweep import (
    apply,
    build_cells,
    combinations,
    fleet,
    load_input,
    pareto_front,
    parse_grid,
    run_dask,
    run_serial,
    write_table,
)
from samepage.sweep.cell import summarize_records
from samepage.sweep.grid import GridError, split_values

VENV_BIN = Path(sys.executable).parent
SAMEPAGE = str(VENV_BIN / "samepage")

SMALL = """
name = "small"
[ksm]
pages_to_scan = 100
sleep_millisecs = 20

[[process]]
name = "a"
  [[process.region]]
  name = "ram"
  pages = 150
  fill = { kind = "pattern", distinct = 15 }

[[process]]
name = "b"
  [[process.region]]
  name = "ram"
  pages = 150
  fill = { kind = "pattern", distinct = 15 }

[run]
batches = 8
"""

#: 10 x 10 = 100 cells, each a few milliseconds of model time.
GRID_100 = ["ksm.pages_to_scan=10,20,30,40,60,80,100,150,200,300",
            "process[1].region[0].fill.distinct=1,2,3,5,8,13,15,21,34,55"]


@pytest.fixture
def small(tmp_path):
    p = tmp_path / "small.toml"
    p.write_text(SMALL)
    return p


def sp(*args, cwd=None, timeout=240):
    return subprocess.run([SAMEPAGE, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


# ------------------------------------------------------------------------- grid


def test_grid_values_are_toml_or_bare_strings():
    (k1, k2, k3) = parse_grid(["ksm.pages_to_scan=100,1000", "model.same_folio=v6.18,split-retry",
                               "machine.mthp_kb=[16,64],[]"])
    assert k1.values == (100, 1000)
    assert k2.values == ("v6.18", "split-retry")
    assert k3.values == ([16, 64], [])
    assert split_values('a,"b,c",[1,2]') == ["a", '"b,c"', "[1,2]"]
    assert combinations([k1, k2]) == [
        {"ksm.pages_to_scan": 100, "model.same_folio": "v6.18"},
        {"ksm.pages_to_scan": 100, "model.same_folio": "split-retry"},
        {"ksm.pages_to_scan": 1000, "model.same_folio": "v6.18"},
        {"ksm.pages_to_scan": 1000, "model.same_folio": "split-retry"}]
    for bad in ["ksm.pages_to_scan", "=1", "ksm..x=1", "ksm.x=1,,2"]:
        with pytest.raises(GridError):
            parse_grid([bad])
    with pytest.raises(GridError, match="given twice"):
        parse_grid(["run.batches=1", "run.batches=2"])


def test_apply_sets_dotted_keys_without_touching_the_base():
    base = {"ksm": {"pages_to_scan": 1}, "process": [{"name": "a", "region": [{"pages": 5}]}]}
    out = apply(base, {"ksm.pages_to_scan": 7, "process[0].region[0].pages": 9,
                       "policy.name": "ksmtuned"})
    assert out["ksm"]["pages_to_scan"] == 7
    assert out["process"][0]["region"][0]["pages"] == 9
    assert out["policy"] == {"name": "ksmtuned"}        # a missing table is created
    assert base["ksm"]["pages_to_scan"] == 1 and "policy" not in base
    with pytest.raises(GridError, match=r"no entry \[3\]"):
        apply(base, {"process[3].name": "x"})


# ------------------------------------------------------------------------- cells


def test_a_cell_is_the_plain_model_run_of_the_modified_scenario(small, tmp_path):
    keys = parse_grid(["ksm.pages_to_scan=50,300", "model.same_folio=v6.18,split-retry"])
    inp = load_input(str(small))
    cells = build_cells([inp], combinations(keys))
    rows = run_serial(cells, [inp])
    assert [r["cell"] for r in rows] == [0, 1, 2, 3]
    for r in rows:
        text = SMALL.replace("pages_to_scan = 100", f"pages_to_scan = {r['ksm.pages_to_scan']}")
        text += f'\n[model]\nsame_folio = "{r["model.same_folio"]}"\n'
        f = tmp_path / "one.toml"
        f.write_text(text)
        run = run_scenario_on_model(load_scenario(f))
        want = summarize_records(run.records)
        assert {k: r[k] for k in want} == want
        assert r["error"] == ""
        last = run.records[-1]
        assert r["pages_sharing"] == last["pages_sharing"]
        assert r["saved_mib"] == pytest.approx(
            (last["pages_sharing"] + last["ksm_zero_pages"]) * 4096 / 2**20)
    # a faster scan converges sooner and costs more CPU per second
    slow, fast = rows[0], rows[2]
    assert fast["converge_ms"] < slow["converge_ms"]
    assert fast["ksmd_cpu_percent"] > slow["ksmd_cpu_percent"]


def test_a_failing_cell_reports_its_error_and_the_others_complete(small):
    # max_page_sharing cannot change once KSM pages exist (EBUSY): valid, but fails in the run
    text = SMALL + '\n[[event]]\nafter_batch = 1\nop = "set"\ntunable = "max_page_sharing"\nvalue = 2\n'
    small.write_text(text)
    keys = parse_grid(["event[0].after_batch=1,6,1"])
    inp = load_input(str(small))
    rows = run_serial(build_cells([inp], combinations(keys)), [inp])
    assert [bool(r["error"]) for r in rows] == [False, True, False]
    assert "max_page_sharing" in rows[1]["error"] and rows[1]["pages_sharing"] is None
    assert rows[0]["pages_sharing"] is not None and rows[2]["pages_sharing"] is not None


def test_pareto_front():
    pts = [(1.0, 5.0), (2.0, 4.0), (2.0, 9.0), (0.5, 1.0), (3.0, 9.0), (4.0, 10.0)]
    assert pareto_front(pts) == [3, 0, 2, 5]


# ------------------------------------------------------------------------- Dask


def test_100_cells_on_a_local_cluster_equal_the_serial_run(small, tmp_path):
    keys = parse_grid(GRID_100)
    inp = load_input(str(small))
    cells = build_cells([inp], combinations(keys))
    assert len(cells) == 100
    t0 = time.monotonic()
    seen = []
    rows = run_dask(cells, [inp], workers=2, progress=seen.append)
    assert time.monotonic() - t0 < 60
    assert len(seen) == 100
    assert rows == run_serial(cells, [inp])
    assert all(r["error"] == "" for r in rows)
    assert len({r["pages_sharing"] for r in rows}) > 5      # the grid changes the results


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


def test_sweep_on_an_external_dask_scheduler_equals_the_serial_run(small, tmp_path):
    dask = str(VENV_BIN / "dask")
    port = _free_port()
    env = dict(os.environ, DASK_DISTRIBUTED__WORKER__DAEMON="False")
    procs = []
    logs = []
    try:
        log = open(tmp_path / "scheduler.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
             "--no-dashboard", "--no-show"], stdout=log, stderr=subprocess.STDOUT,
            cwd=tmp_path, env=env))
        _wait_port(port)
        addr = f"tcp://127.0.0.1:{port}"
        for i in range(2):
            log = open(tmp_path / f"worker{i}.log", "w")
            logs.append(log)
            procs.append(subprocess.Popen(
                [dask, "worker", addr, "--nthreads", "1", "--nworkers", "1",
                 "--host", "127.0.0.1", "--no-dashboard", "--local-directory", str(tmp_path)],
                stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env))
        from distributed import Client
        with Client(addr, timeout="30s") as c:
            c.wait_for_workers(2, timeout=60)
        out = tmp_path / "remote.csv"
        r = sp("sweep", small, "--grid", GRID_100[0], "--grid", "model.same_folio=v6.18,split-retry",
               "--scheduler", addr, "-o", out, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert f"on {addr}" in r.stdout
        ref = tmp_path / "serial.csv"
        r = sp("sweep", small, "--grid", GRID_100[0], "--grid", "model.same_folio=v6.18,split-retry",
               "--serial", "-o", ref, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert out.read_text() == ref.read_text()
        assert len(out.read_text().splitlines()) == 21
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in logs:
            log.close()


def test_unreachable_scheduler_is_one_line(small, tmp_path):
    r = sp("sweep", small, "--scheduler", f"tcp://127.0.0.1:{_free_port()}",
           "--connect-timeout", "2", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith("samepage: error: --scheduler") and r.stderr.count("\n") == 1


# ------------------------------------------------------------------------- CLI


def test_cli_writes_parquet_csv_plot_and_json(small, tmp_path):
    import pyarrow.parquet as pq

    pq_out, csv_out, png = tmp_path / "r.parquet", tmp_path / "r.csv", tmp_path / "p.png"
    args = ["sweep", small, "--grid", "ksm.pages_to_scan=20,100,400", "--grid",
            "machine.thp=never,always", "--serial"]
    r = sp(*args, "-o", pq_out, "--plot", png, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "6 cells serially" in r.stdout
    t = pq.read_table(pq_out).to_pylist()
    assert len(t) == 6 and [x["cell"] for x in t] == list(range(6))
    assert t[0]["ksm.pages_to_scan"] == 20 and t[1]["machine.thp"] == "always"
    for col in ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile",
                "full_scans", "pages_scanned", "pages_skipped", "stable_node_chains",
                "stable_node_dups", "ksm_zero_pages", "general_profit", "saved_mib",
                "converge_ms", "ksmd_cpu_ms", "ksmd_cpu_percent", "error"):
        assert col in t[0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = sp(*args, "-o", csv_out, cwd=tmp_path)
    rows = list(csv.DictReader(csv_out.open()))
    assert [int(x["pages_sharing"]) for x in rows] == [x["pages_sharing"] for x in t]
    r = sp(*args, "--json", cwd=tmp_path)
    doc = json.loads(r.stdout)
    assert [c["pages_sharing"] for c in doc["cells"]] == [x["pages_sharing"] for x in t]


@pytest.mark.parametrize("args,pattern", [
    (["--grid", "ksm.page_to_scan=1,2"],
     r"--grid ksm.page_to_scan=1: .*small.toml: ksm.page_to_scan: unknown tunable"),
    (["--grid", "ksm.pages_to_scan=10,-1"],
     r"--grid ksm.pages_to_scan=-1: .*small.toml: ksm.pages_to_scan: "),
    (["--grid", "model.same_folio=v6.18,nope"], r"model.same_folio: must be one of"),
    (["--grid", "process[4].name=x"], r"--grid process\[4\].name: no entry \[4\]"),
    (["--grid", "ksm.pages_to_scan"], r"--grid 'ksm.pages_to_scan': expected KEY=V1,V2"),
    (["-o", "r.txt"], r"r.txt: the results table must be FILE.parquet or FILE.csv"),
    (["--serial", "--scheduler", "tcp://127.0.0.1:1"], r"--serial and --scheduler"),
])
def test_bad_grid_is_one_line_before_anything_runs(small, tmp_path, args, pattern):
    r = sp("sweep", small, *args, cwd=tmp_path)
    assert r.returncode == 2, r.stdout
    line = r.stderr
    assert line.startswith("samepage: error: ") and line.count("\n") == 1, line
    assert re.search(pattern, line), line
    assert r.stdout == ""


def test_bad_input_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[ksm]\npages_to_scan = 'x'\n")
    r = sp("sweep", bad, "--serial", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert r.stderr.startswith(f"samepage: error: {bad}: ksm.pages_to_scan: ")


def test_cli_failed_cell_exit_1_and_named(small, tmp_path):
    small.write_text(SMALL + '\n[[event]]\nafter_batch = 1\nop = "set"\n'
                     'tunable = "max_page_sharing"\nvalue = 2\n')
    r = sp("sweep", small, "--grid", "event[0].after_batch=1,6", "--serial", cwd=tmp_path)
    assert r.returncode == 1
    assert re.search(r"samepage: cell 1 \(small.toml, event\[0\].after_batch=6\) failed: .*max_page_sharing",
                     r.stderr), r.stderr


# ------------------------------------------------------------------------- snapshots, fleet


def _snapshot(path: Path, host: str, distinct: int) -> None:
    """A small synthetic snapshot: two processes of 128 pages, one mergeable VMA each."""
    import numpy as np

    from samepage.capture import procfs
    from samepage.capture.snapshot import CapturedProcess, CapturedVma, build_snapshot, \
        save_snapshot
    from samepage.capture.tokens import digest_pages, token_page

    procs = []
    for i in range(2):
        toks = [(j % distinct) + 1 for j in range(128)]
        d = digest_pages(b"".join(token_page(t) for t in toks))
        v = CapturedVma("", 0x7f0000000000, 128,
                        procfs.VMA_READ | procfs.VMA_WRITE | procfs.VMA_MERGEABLE, 0,
                        np.arange(128, dtype=np.uint64), d, np.zeros(128, np.uint8))
        procs.append(CapturedProcess(100 + i, f"vm{i}", f"pid:{100 + i}", False, True, [v]))
    snap = build_snapshot(procs, sources=["test"], zero_pfn_known=True)
    snap.meta.host = host
    save_snapshot(snap, path)


def test_several_snapshots_give_a_fleet_estimate(tmp_path):
    _snapshot(tmp_path / "h1.npz", "host-one", 4)
    _snapshot(tmp_path / "h2.npz", "host-two", 32)
    keys = parse_grid(["ksm.pages_to_scan=64,256"])
    inputs = [load_input(str(tmp_path / "h1.npz")), load_input(str(tmp_path / "h2.npz"))]
    assert [i.host for i in inputs] == ["host-one", "host-two"]
    cells = build_cells(inputs, combinations(keys), until="4")
    rows = run_serial(cells, inputs)
    assert all(r["error"] == "" for r in rows), rows
    pts = fleet(rows, ["ksm.pages_to_scan"])
    assert len(pts) == 2
    for p in pts:
        assert [h["host"] for h in p.per_host] == ["host-one", "host-two"]
        assert p.saved_mib == pytest.approx(sum(h["saved_mib"] for h in p.per_host))
    assert rows[0]["saved_mib"] > rows[2]["saved_mib"]      # 4 distinct pages merge more
    assert run_dask(cells, inputs, workers=2) == rows
    r = sp("sweep", tmp_path / "h1.npz", tmp_path / "h2.npz", "--grid", "ksm.pages_to_scan=64",
           "--until", "4", "--serial", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "fleet estimate" in r.stdout and "host-two" in r.stdout
    r = sp("sweep", tmp_path / "h1.npz", "--grid", "machine.thp=always", "--serial", cwd=tmp_path)
    assert r.returncode == 2 and "is a snapshot" in r.stderr


def test_write_table_csv_roundtrip(tmp_path):
    rows = [{"cell": 0, "input": "a", "host": "h", "k": 1, "error": ""},
            {"cell": 1, "input": "a", "host": "h", "k": "x", "error": "boom"}]
    write_table(str(tmp_path / "t.csv"), rows, ["k"])
    got = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert [g["k"] for g in got] == ["1", "x"] and got[1]["error"] == "boom"


HOST = """
name = "small host"
[ksm]
pages_to_scan = 100
sleep_millisecs = 20
[machine]
memory_mb = 64
baseline_mb = 50
cached_mb = 2
[policy]
name = "none"
duration_s = 20
[[process]]
name = "a"
  [[process.region]]
  name = "ram"
  pages = 600
  fill = { kind = "pattern", distinct = 40 }
[[process]]
name = "b"
  [[process.region]]
  name = "ram"
  pages = 600
  fill = { kind = "pattern", distinct = 40 }
[run]
batches = 8
"""


def test_policy_cells_run_the_policy(tmp_path):
    """policy.name is a grid key: each cell runs that tuning daemon (as samepage run --policy
    does), so cells of different policies differ, and a cell equals the direct run."""
    from samepage.scenario.policy_runner import run_with_policy, scenario_policy
    from samepage.sweep.cell import summarize_policy_run

    p = tmp_path / "host.toml"
    p.write_text(HOST)
    inp = load_input(str(p))
    cells = build_cells([inp], combinations(parse_grid(["policy.name=ksmtuned,kata"])))
    rows = run_serial(cells, [inp])
    assert [r["error"] for r in rows] == ["", ""]
    assert rows[0]["ksmd_cpu_ms"] != rows[1]["ksmd_cpu_ms"]
    sc = load_scenario(p).model_copy(deep=True)
    direct = summarize_policy_run(run_with_policy(sc, scenario_policy(sc, "kata")))
    assert {k: rows[1][k] for k in direct} == direct


def test_a_policy_file_is_refused_in_a_sweep(tmp_path):
    from samepage.sweep import SweepError

    p = tmp_path / "host.toml"
    p.write_text(HOST)
    inp = load_input(str(p))
    with pytest.raises((SweepError, Exception), match="built-in policies only"):
        build_cells([inp], combinations(parse_grid(["policy.name=mine.py:Mine"])))
