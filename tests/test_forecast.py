"""samepage forecast: the model machine of a snapshot, simulated time, the CLI; and the
scenario format's time-based dynamics (at_ms events, [[rewrite]])."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from samepage.capture import load_snapshot, procfs
from samepage.capture.snapshot import CapturedProcess, CapturedVma, build_snapshot, save_snapshot
from samepage.capture.tokens import Digests, digest_pages, token_page
from samepage.cli.main import app
from samepage.forecast import build_machine, convergence, parse_until, simulate
from samepage.forecast.build import ForecastError
from samepage.forecast.run import Until
from samepage.scenario import load_scenario_text
from samepage.scenario.errors import ScenarioError
from samepage.scenario.model_runner import run_scenario_on_model

RW = procfs.VMA_READ | procfs.VMA_WRITE


def _vma(start, tokens, *, holes=(), zero_pfn=(), changes=None, flags=RW, thp_kb=0):
    offs = [i for i in range(len(tokens)) if i not in holes]
    real = [i for i in offs if i not in zero_pfn]
    d = digest_pages(b"".join(token_page(tokens[i]) for i in real)) if real else Digests.empty()
    if zero_pfn:          # the capture's order: digests by offset, zero-page mappings as zeros
        parts = []
        for i in offs:
            parts.append(Digests.zeros(1) if i in zero_pfn else digest_pages(token_page(tokens[i])))
        d = Digests.concat(parts)
    pf = np.array([procfs.PAGE_ZERO_PFN if i in zero_pfn else 0 for i in offs], np.uint8)
    ch = None if changes is None else np.array([changes[i] for i in offs], np.uint16)
    return CapturedVma("", start, len(tokens), flags, thp_kb, np.array(offs, np.uint64), d, pf,
                       changes=ch)


def _snap(tmp_path, procs, samples=1, name="s.npz") -> Path:
    s = build_snapshot(procs, sources=[p.source for p in procs], samples=samples,
                       interval_s=1.0 if samples > 1 else 0.0, zero_pfn_known=True)
    path = tmp_path / name
    save_snapshot(s, path)
    return path


def _workers(tmp_path, n=3, pages=300, distinct=50, volatile=0, samples=1):
    procs = []
    for i in range(n):
        toks = [(j % distinct) + 1 for j in range(pages)]
        ch = [samples - 1 if j < volatile else 0 for j in range(pages)] if samples > 1 else None
        procs.append(CapturedProcess(1000 + i, f"w{i}", f"pid:{1000 + i}", True, True,
                                     [_vma(0x7f0000000000, toks, changes=ch,
                                           flags=RW | procfs.VMA_MERGEABLE)]))
    return _snap(tmp_path, procs, samples)


SCENARIO = """
[ksm]
pages_to_scan = 200
sleep_millisecs = 100
{procs}
[run]
batches = 40
"""
PROC = """
[[process]]
name = "w{i}"
merge_any = true
  [[process.region]]
  name = "ram"
  pages = 300
  fill = {{ kind = "pattern", distinct = 50 }}
"""


def test_forecast_equals_the_scenario_of_the_same_memory(tmp_path):
    """Same processes, same contents (tokens in the same order), same scan order: the
    forecast's scan records are the scenario run's records at each full scan's end."""
    snap = load_snapshot(_workers(tmp_path))
    r = simulate(build_machine(snap, tunables={"pages_to_scan": 200, "sleep_millisecs": 100}),
                 Until("scans", 5))
    sc = load_scenario_text(SCENARIO.format(procs="".join(PROC.format(i=i) for i in range(3))))
    recs = run_scenario_on_model(sc).records
    ends = {}
    for rec in recs:
        ends.setdefault(rec["full_scans"], rec)
    assert [s["full_scans"] for s in r.scans] == [1, 2, 3, 4, 5]
    for s in r.scans:
        e = ends[s["full_scans"]]
        for k in ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile",
                  "pages_scanned", "general_profit"):
            assert s[k] == e[k], (s["full_scans"], k)
        assert s["t_ms"] == pytest.approx(e["t_ms"] + e["ksmd_cpu_us"] / 1000, abs=0.01)
    assert r.final["pages_sharing"] == 850 and r.converged_full_scans == 2
    assert r.saved_bytes == 850 * 4096


def test_layout_holes_zero_page_and_mergeable_flags(tmp_path):
    toks = [5] * 16
    a = CapturedProcess(10, "a", "pid:10", False, True, [
        _vma(0x400000, toks, holes={1, 2}, zero_pfn={3}, flags=RW | procfs.VMA_MERGEABLE),
        _vma(0x800000, toks, flags=RW)])                     # not mergeable
    b = CapturedProcess(11, "b", "pid:11", True, True, [
        _vma(0x600000, toks, flags=RW | procfs.VMA_MERGEABLE),
        _vma(0xa00000, toks, flags=RW)])          # merge_any, yet refused by the kernel
    built = build_machine(load_snapshot(_snap(tmp_path, [a, b])))
    pa = built.processes[0].process
    assert [v.start for v in pa.mm.vmas] == [0x400000, 0x800000]
    v0 = pa.mm.vmas[0]
    assert [int(v0.pte[i]) >= 0 for i in range(5)] == [True, False, False, False, True]
    assert built.mergeable_pages == 13 + 16
    r = simulate(built, Until("scans", 3))
    per = {p["comm"]: p for p in r.per_process}
    assert per["a"]["ksm_rmap_items"] == 13 and per["b"]["ksm_rmap_items"] == 16
    assert r.final["pages_shared"] + r.final["pages_sharing"] == 29
    built2 = build_machine(load_snapshot(_snap(tmp_path, [a, b], name="t.npz")),
                           merge_any_all=True)
    # a gets merge_any: its second VMA joins; b's refused VMA stays out
    assert built2.mergeable_pages == 13 + 16 + 16


def test_thp_backing_replayed(tmp_path):
    toks = list(range(1, 1025))
    p = CapturedProcess(10, "a", "pid:10", True, True,
                        [_vma(0x200000, toks, thp_kb=2048, flags=RW | procfs.VMA_MERGEABLE)])
    path = _snap(tmp_path, [p])
    assert build_machine(load_snapshot(path)).thp_pages == 512
    assert build_machine(load_snapshot(path), thp_always=True).thp_pages == 1024


def test_volatile_pages_are_rewritten(tmp_path):
    snap = load_snapshot(_workers(tmp_path, volatile=30, samples=3))
    r = simulate(build_machine(snap, tunables={"sleep_millisecs": 100}), Until("scans", 6))
    assert r.extra["rewrites"] > 0
    # 30 pages of each worker change every second: they never merge
    assert r.final["pages_sharing"] + r.final["pages_shared"] <= 900 - 3 * 30 + 30
    s = simulate(build_machine(snap, tunables={"sleep_millisecs": 100}, volatile=False),
                 Until("scans", 6))
    assert s.extra["rewrites"] == 0 and s.final["pages_sharing"] == 850


def test_until_and_convergence():
    assert parse_until("converged").kind == "converged"
    assert parse_until("7") == Until("scans", 7) and parse_until("7 scans") == Until("scans", 7)
    assert parse_until("10m") == Until("ms", 600_000) and parse_until("90s").value == 90_000
    for bad in ("", "0", "x", "5 parsecs", "-1m"):
        with pytest.raises(ForecastError):
            parse_until(bad)
    sc = [{"full_scans": i + 1, "t_ms": 100.0 * (i + 1), "pages_sharing": v}
          for i, v in enumerate([0, 500, 990, 1000, 1000])]
    assert convergence(sc) == (3, 300.0)
    assert convergence([{"full_scans": 1, "t_ms": 5.0, "pages_sharing": 0}]) == (0, 0.0)


# ------------------------------------------------------------------------------ CLI


@pytest.fixture
def runner():
    return CliRunner()


def test_cli_json_plot_and_html(runner, tmp_path):
    path = _workers(tmp_path)
    r = runner.invoke(app, ["forecast", str(path), "--set", "pages_to_scan=200", "--json",
                            "--plot", str(tmp_path / "c.png"), "--html", str(tmp_path / "c.html")])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc) >= {"scans", "final", "converged_full_scans", "converged_ms", "saved_bytes",
                        "per_process"}
    keys = {"full_scans", "t_ms", "ksmd_cpu_ms", "pages_shared", "pages_sharing",
            "pages_unshared", "pages_volatile", "pages_scanned", "pages_skipped",
            "stable_node_chains", "stable_node_dups", "ksm_zero_pages", "general_profit"}
    assert all(set(s) == keys for s in doc["scans"])
    assert [s["full_scans"] for s in doc["scans"]] == list(range(1, len(doc["scans"]) + 1))
    assert doc["settings"]["pages_to_scan"] == 200 and doc["saved_bytes"] == 850 * 4096
    assert [p["pid"] for p in doc["per_process"]] == [1000, 1001, 1002]
    assert (tmp_path / "c.png").stat().st_size > 5000
    page = (tmp_path / "c.html").read_text()
    assert "<svg" in page and 'src="http' not in page and "<link" not in page   # self-contained
    r = runner.invoke(app, ["forecast", str(path), "--until", "2"])
    assert r.exit_code == 0 and "saved 3.32 MiB" in r.stdout
    assert "shipped cost profile" in r.stdout and "kernel calibrate" in r.stdout
    prof = tmp_path / "host.toml"
    from samepage.ksm.costs import default_costs, write_profile
    write_profile(default_costs(), prof)
    r = runner.invoke(app, ["forecast", str(path), "--until", "2", "--costs", str(prof)])
    assert r.exit_code == 0 and "shipped cost profile" not in r.stdout


def test_curve_has_every_batch_and_ends_on_the_final_counters(runner, tmp_path):
    path = _workers(tmp_path)
    r = runner.invoke(app, ["forecast", str(path), "--set", "pages_to_scan=100", "--json"])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    cv = doc["curve"]
    n = len(cv["t_ms"])
    assert cv["stride_batches"] == 1 and n > len(doc["scans"])      # every batch: 9 a scan
    assert all(len(cv[k]) == n for k in cv if k != "stride_batches")
    assert cv["t_ms"] == sorted(cv["t_ms"]) and cv["t_ms"][-1] == pytest.approx(doc["t_ms"])
    for k in ("pages_sharing", "pages_shared", "pages_unshared", "pages_volatile"):
        assert cv[k][-1] == doc["final"][k]
    # each full scan's record is one of the curve's points
    for s in doc["scans"]:
        i = cv["t_ms"].index(s["t_ms"])
        assert cv["pages_sharing"][i] == s["pages_sharing"]
        assert cv["ksmd_cpu_ms"][i] == pytest.approx(s["ksmd_cpu_ms"])


def test_curve_thins_to_a_bounded_uniform_stride():
    from samepage.forecast.run import Curve
    c = Curve(max_points=8)
    zero = {k: 0 for k in ("pages_sharing", "pages_shared", "pages_unshared",
                           "pages_volatile", "ksm_zero_pages")}
    for b in range(100):
        c.add(float(b), 0.0, {**zero, "pages_sharing": b})
    j = c.as_json()
    assert len(j["t_ms"]) <= 8 and j["stride_batches"] == 16
    assert j["pages_sharing"] == list(range(0, 100, 16)) + [99]     # ends on the last batch


@pytest.mark.parametrize("args,msg", [
    (["--set", "page_to_scan=5"], 'unknown tunable "page_to_scan"'),
    (["--set", "pages_to_scan"], "expected TUNABLE=VALUE"),
    (["--set", "run=1"], "--set run"),
    (["--until", "soon"], "--until 'soon'"),
    (["--recommend", "--within", "x"], "--within 'x'"),
    (["--costs", "/nonexistent.toml"], "/nonexistent.toml"),
])
def test_cli_bad_options_one_line(runner, tmp_path, args, msg):
    r = runner.invoke(app, ["forecast", str(_workers(tmp_path)), *args])
    assert r.exit_code == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("samepage: error: ") and msg in r.stderr


def test_cli_bad_snapshot_one_line(runner, tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    r = runner.invoke(app, ["forecast", str(bad)])
    assert r.exit_code == 2 and r.stderr == \
        f"samepage: error: {bad}: (file): not a samepage snapshot (not an .npz archive)\n"
    p = CapturedProcess(10, "a", "pid:10", False, False, [_vma(0x400000, [1, 1], flags=RW)])
    r = runner.invoke(app, ["forecast", str(_snap(tmp_path, [p]))])
    assert r.exit_code == 2 and "try --merge-any" in r.stderr
    r = runner.invoke(app, ["forecast", str(_snap(tmp_path, [p], name="u.npz")), "--merge-any",
                            "--until", "3"])
    assert r.exit_code == 0 and "saved 0.00 MiB: 1 pages share 1 KSM pages" in r.stdout


def test_cli_recommend(runner, tmp_path):
    path = _workers(tmp_path)
    r = runner.invoke(app, ["forecast", str(path), "--recommend", "--within", "2s",
                            "--max-cpu", "5", "--json"])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    best = doc["recommended"]
    assert best["ok"] and best["converged_ms"] <= 2000 and best["ksmd_cpu_percent"] <= 5
    # every slower setting tried first failed
    assert all(not t["ok"] for t in doc["tried"][:-1])
    r = runner.invoke(app, ["forecast", str(path), "--recommend", "--within", "10ms"])
    assert r.exit_code == 1 and "no recommendation: none converges within 0.01 s" in r.stdout


def _chromium() -> str | None:
    for n in ("chromium", "chromium-browser"):
        if shutil.which(n):
            return shutil.which(n)
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update"], capture_output=True, timeout=300, env=env)
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
                       capture_output=True, timeout=900, env=env)
    return shutil.which("chromium")


def test_html_renders_in_headless_chromium(runner, tmp_path):
    page = tmp_path / "f.html"
    r = runner.invoke(app, ["forecast", str(_workers(tmp_path)), "--html", str(page)])
    assert r.exit_code == 0, r.stderr
    chrome = _chromium()
    if chrome is None:
        pytest.skip("chromium is not installed and could not be installed")
    shot = tmp_path / "x.png"
    p = subprocess.run([chrome, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", f"--user-data-dir={tmp_path / 'prof'}",
                        f"--screenshot={shot}", "--window-size=1100,1400",
                        "--enable-logging=stderr", "--v=0", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    console = [line for line in p.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console
    assert shot.exists() and shot.stat().st_size > 10_000


# ------------------------------------------------------------------------------ dynamics

DYN = """
[ksm]
pages_to_scan = 100
sleep_millisecs = 20
[[process]]
name = "a"
  [[process.region]]
  name = "ram"
  pages = 100
  fill = {{ kind = "pattern", distinct = 1 }}
[[process]]
name = "b"
  [[process.region]]
  name = "ram"
  pages = 100
  fill = {{ kind = "pattern", distinct = 1 }}
{extra}
[run]
batches = 40
"""


def test_rewrite_every_ms_and_rate():
    sc = load_scenario_text(DYN.format(extra="""
[[rewrite]]
process = "a"
region = "ram"
range = [0, 20]
every_ms = 100
"""))
    run = run_scenario_on_model(sc)
    last = run.records[-1]
    # the 20 pages of a never merge: rewritten with fresh contents every 100 ms
    assert last["pages_sharing"] + last["pages_shared"] == 180
    a = run.machine.process("a")
    assert all(a.read("ram", i) >= 2 ** 63 for i in range(20))
    assert a.read("ram", 20) == 1
    sc2 = load_scenario_text(DYN.format(extra="""
[[rewrite]]
process = "b"
region = "ram"
pages = [5]
rate_per_s = 1000
token = 1
"""))
    last2 = run_scenario_on_model(sc2).records[-1]   # rewritten to the same content: merges
    assert last2["pages_sharing"] + last2["pages_shared"] >= 199


def test_at_ms_event_applies_before_the_first_batch_at_or_after_it():
    sc = load_scenario_text(DYN.format(extra="""
[[event]]
at_ms = 300
process = "b"
op = "write"
region = "ram"
range = [0, 100]
token = 7
"""))
    holder = []
    from samepage.scenario.model_runner import iter_model_trace
    recs = [r for r in iter_model_trace(sc, machine_out=holder) if "batch" in r]
    b = holder[0].process("b")
    assert b.read("ram", 0) == 7
    first = next(r for r in recs if r["t_ms"] >= 300)
    before = [r for r in recs if r["t_ms"] < 300]
    assert before and first["batch"] == before[-1]["batch"] + 1


@pytest.mark.parametrize("extra,key,msg", [
    ('[[event]]\nat_ms = 5\nafter_batch = 2\nprocess = "a"\nop = "exit"',
     "event[0].at_ms", "either after_batch or at_ms"),
    ('[[event]]\nprocess = "a"\nop = "exit"', "event[0].after_batch", "missing required key"),
    ('[[event]]\nat_ms = 5\nprocess = "a"\nop = "zap"\nregion = "ram"\npages = [1]\n'
     '[[event]]\nafter_batch = 2\nprocess = "b"\nop = "exit"', "event[1].after_batch",
     "either all after_batch or all at_ms"),
    ('[[rewrite]]\nprocess = "a"\nregion = "ram"', "rewrite[0].every_ms", "required"),
    ('[[rewrite]]\nprocess = "a"\nregion = "ram"\nevery_ms = 1\nrate_per_s = 2',
     "rewrite[0].rate_per_s", "not both"),
    ('[[rewrite]]\nprocess = "zz"\nregion = "ram"\nevery_ms = 1', "rewrite[0].process",
     'unknown process "zz"'),
    ('[[rewrite]]\nprocess = "a"\nregion = "ram"\nrange = [0, 200]\nevery_ms = 1',
     "rewrite[0].range", "outside region"),
    ('[[rewrite]]\nprocess = "a"\nregion = "ram"\nevery_ms = 0', "rewrite[0].every_ms", ""),
    ('[[rewrite]]\nprocess = "a"\nregion = "ram"\nevry_ms = 5', "rewrite[0].evry_ms",
     'did you mean "every_ms"'),
    ('[[event]]\nat_ms = 50\nprocess = "a"\nop = "exit"\n[[event]]\nat_ms = 50\n'
     'process = "b"\nop = "exit"', "event[1]", "no process has mergeable memory left"),
])
def test_dynamics_errors(extra, key, msg):
    with pytest.raises(ScenarioError) as e:
        load_scenario_text(DYN.format(extra=extra), "f.toml")
        from samepage.scenario.checks import check_runnable
        check_runnable(load_scenario_text(DYN.format(extra=extra), "f.toml"))
    assert e.value.key == key and msg in e.value.msg


def test_live_harness_and_explore_refuse_timed_scenarios(runner, tmp_path):
    from samepage.kernel.runner import check_scenario
    f = tmp_path / "t.toml"
    f.write_text(DYN.format(extra='[[rewrite]]\nprocess = "a"\nregion = "ram"\nevery_ms = 5')
                 .replace("sleep_millisecs = 20", "sleep_millisecs = 150"))
    sc = load_scenario_text(f.read_text())
    with pytest.raises(ValueError, match="model only"):
        check_scenario(sc)
    r = runner.invoke(app, ["explore", str(f)])
    assert r.exit_code == 2 and "[[rewrite]]" in r.stderr and r.stderr.count("\n") == 1
    r = runner.invoke(app, ["run", str(f), "-q"])
    assert r.exit_code == 0
