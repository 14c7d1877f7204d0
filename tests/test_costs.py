"""The CPU cost model (issue 9): operation counts, profiles, the NNLS fit, calibrate from
saved traces, and CPU in the CLI output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from samepage import Machine
from samepage.cli.main import app
from samepage.cli.report import cpu_by_phase
from samepage.kernel.calibrate import (BatchSample, Fit, ScenarioData, fit_costs, nnls,
                                       samples_from_traces)
from samepage.ksm.costs import (CostModel, CostProfileError, default_costs, load_profile,
                                parse_profile, write_profile)
from samepage.ksm.opcounts import N_OPS, OP_NAMES, OP_VISIT, OP_VISIT_PMD, as_dict
from samepage.scenario import load_scenario_text
from samepage.scenario.model_runner import run_scenario_on_model
from samepage.scenario.trace_compare import compare_traces

SMALL = """
[ksm]
pages_to_scan = 64
sleep_millisecs = 100
[[process]]
name = "a"
  [[process.region]]
  name = "ram"
  pages = 96
  fill = { kind = "pattern", distinct = 8 }
  [[process.region]]
  name = "heap"
  pages = 64
  fill = { kind = "unique", seed = 1 }
[run]
batches = 12
"""


@pytest.fixture
def runner():
    return CliRunner()


def scaled(k: float) -> CostModel:
    base = default_costs()
    return CostModel(ns={n: v * k for n, v in base.ns.items()}, hz=base.hz)


# ---------------------------------------------------------------------- operation counts


def test_batch_op_counts_are_exact_on_a_known_scan():
    m = Machine()
    p = m.spawn("p")
    ram = p.mmap(40, name="ram")
    p.fill(ram, [7] * 40)                 # 40 identical pages
    p.madvise(ram, "mergeable")
    m.sysfs_write("pages_to_scan", 40)
    m.sysfs_write("run", 1)
    b1 = as_dict(m.run_batch().ops)       # first scan: checksums only
    assert b1["batch"] == 1 and b1["visit"] == 40 and b1["checksum"] == 40
    assert b1["rmap_alloc"] == 40 and b1["scan_start"] == 1
    assert b1["memcmp_stable"] == b1["memcmp_unstable"] == b1["merge_one"] == 0
    m.run_batch()                         # the wrap (an empty batch's worth of nothing)
    b2 = as_dict(m.run_batch().ops)       # second scan: one pair, then 38 into its KSM page
    assert m.counters()["pages_sharing"] == 39
    assert b2["merge_pair"] == 1 and b2["merge_ksm"] == 38 and b2["stable_node_new"] == 1
    assert b2["merge_one"] == 2 + 38 and b2["memcmp_merge"] == 1 + 38
    assert b2["unstable_insert"] == 1


def test_cpu_time_is_counts_times_costs():
    m = Machine(costs=scaled(2.0))
    n = Machine()
    for mach in (m, n):
        p = mach.spawn("p")
        r = p.mmap(200, name="r")
        p.fill(r, [(i % 13) + 1 for i in range(200)])
        p.madvise(r, "mergeable")
        mach.sysfs_write("pages_to_scan", 50)
        mach.sysfs_write("run", 1)
    rm, rn = m.run_batches(20), n.run_batches(20)
    assert [x.ops for x in rm] == [x.ops for x in rn]       # costs do not change what runs
    for a, b in zip(rm, rn):
        assert a.cpu_ms == pytest.approx(2 * b.cpu_ms)
        assert b.cpu_ms * 1e6 == pytest.approx(default_costs().cpu_ns(b.ops))
    assert sum(np.array(x.ops) for x in rn).tolist() == n.ksm.ops


def test_trace_extra_keys_and_compare_ignores_them():
    sc = load_scenario_text(SMALL)
    recs = run_scenario_on_model(sc).records
    for r in recs:
        assert set(r["ops"]) == set(OP_NAMES)
        assert r["pages_to_scan"] == 64 and r["ksmd_cpu_us"] > 0
    other = [dict(r, ksmd_cpu_us=r["ksmd_cpu_us"] * 3, pages_to_scan=1) for r in recs]
    for r in other:
        del r["ops"]
    assert compare_traces(recs, None, other, None).identical


# ---------------------------------------------------------------------- profiles


def test_profile_round_trips(tmp_path):
    c = CostModel(ns={n: 10.5 * (i + 1) for i, n in enumerate(OP_NAMES)}, hz=1000,
                  meta={"kernel_release": "6.18.0", "cpu_model": 'A "quoted" CPU',
                        "date": "2025-01-01T00:00:00Z", "fitted_on": ["x", "y"],
                        "residuals": {"first": {"total_error": -0.01}}})
    f = tmp_path / "c.toml"
    write_profile(c, f, comment="test profile")
    back = load_profile(f)
    assert back.ns == c.ns and back.hz == 1000
    assert back.meta == c.meta
    assert back.cpu_ns([1] * N_OPS) == pytest.approx(c.cpu_ns([1] * N_OPS))


def test_shipped_profile_is_fitted():
    d = default_costs()
    assert d.source == "costs-default.toml"
    for key in ("kernel_release", "cpu_model", "date", "fitted_on", "residuals"):
        assert key in d.meta
    assert d.ksmd_sleep_ns(150) == 156_000_000


@pytest.mark.parametrize("text,key", [
    ("[costs\n", "(toml)"),
    ("[meta]\nhz = 250\n", "costs"),
    ("[costs]\n" + "".join(f"{n} = 1.0\n" for n in OP_NAMES if n != "visit"), "costs.visit"),
    ("[costs]\n" + "".join(f"{n} = 1.0\n" for n in OP_NAMES) + "bogus = 2\n", "costs.bogus"),
    ("[costs]\n" + "".join(f"{n} = {-1 if n == 'checksum' else 1}\n" for n in OP_NAMES),
     "costs.checksum"),
    ("[costs]\n" + "".join(f"{n} = 1\n" for n in OP_NAMES) + "[meta]\nhz = 0\n", "meta.hz"),
    ("[costs]\n" + "".join(f"{n} = 1\n" for n in OP_NAMES) + "[extra]\n", "extra"),
])
def test_malformed_profile_names_the_key(text, key):
    with pytest.raises(CostProfileError) as e:
        parse_profile(text, "p.toml")
    assert e.value.key == key and str(e.value).startswith(f"p.toml: {key}: ")


def test_malformed_profile_on_the_command_line_is_one_line_exit_2(runner, tmp_path):
    sc = tmp_path / "s.toml"
    sc.write_text(SMALL)
    bad = tmp_path / "bad.toml"
    bad.write_text("[costs]\n" + "".join(f"{n} = 1\n" for n in OP_NAMES).replace(
        "visit = 1", "visit = \"fast\""))
    r = runner.invoke(app, ["run", str(sc), "--costs", str(bad)])
    assert r.exit_code == 2
    assert r.stderr.splitlines() == [f"samepage: error: {bad}: costs.visit: must be a number "
                                     "(got 'fast')"]
    # ... and the same through [model] costs (relative to the scenario file)
    sc.write_text(SMALL.replace("[run]", '[model]\ncosts = "bad.toml"\n[run]'))
    r = runner.invoke(app, ["run", str(sc), "-q"])
    assert r.exit_code == 2
    assert r.stderr.splitlines() == [f"samepage: error: {bad}: costs.visit: must be a number "
                                     "(got 'fast')"]
    r = runner.invoke(app, ["run", str(sc), "--costs", str(tmp_path / "none.toml")])
    assert r.exit_code == 2 and len(r.stderr.splitlines()) == 1 and "file not found" in r.stderr


def test_run_costs_option_and_model_costs_key(runner, tmp_path):
    sc = tmp_path / "s.toml"
    sc.write_text(SMALL)
    f = tmp_path / "double.toml"
    write_profile(scaled(2.0), f)
    plain = json.loads(runner.invoke(app, ["run", str(sc), "--json"]).stdout.splitlines()[3])
    dbl = json.loads(runner.invoke(app, ["run", str(sc), "--json", "--costs", str(f)]
                                   ).stdout.splitlines()[3])
    assert dbl["ksmd_cpu_us"] == pytest.approx(2 * plain["ksmd_cpu_us"], abs=0.2)
    sc.write_text(SMALL.replace("[run]", '[model]\ncosts = "double.toml"\n[run]'))
    via_key = json.loads(runner.invoke(app, ["run", str(sc), "--json"]).stdout.splitlines()[3])
    assert via_key["ksmd_cpu_us"] == dbl["ksmd_cpu_us"]
    m = Machine(costs=str(f))
    assert m.ksm.costs.ns["visit"] == 2 * default_costs().ns["visit"]


# ---------------------------------------------------------------------- the fit


def test_nnls_matches_least_squares_and_clips_at_zero():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 10, (60, 5))
    x = np.array([1.0, 2.0, 0.5, 3.0, 4.0])
    assert np.allclose(nnls(a, a @ x), x, rtol=1e-8)
    # the unconstrained optimum has a negative entry: NNLS puts it at 0 and refits the rest
    a2 = np.array([[1.0, 1.0], [1.0, 1.001], [1.0, 0.999]])
    b2 = np.array([1.0, 0.9, 1.1])
    x2 = nnls(a2, b2)
    assert (x2 >= 0).all() and x2[1] == 0.0
    assert x2[0] == pytest.approx(1.0)


def test_fit_recovers_known_costs_from_synthetic_batches():
    rng = np.random.default_rng(7)
    true = {n: float(rng.uniform(20, 3000)) for n in OP_NAMES}
    truth = CostModel(ns=true)
    samples = []
    for b in range(400):
        ops = [int(x) for x in rng.integers(0, 2000, N_OPS) * (rng.random(N_OPS) < 0.6)]
        ops[0] = 1                                            # one batch
        ops[OP_VISIT_PMD] = min(ops[OP_VISIT_PMD], ops[OP_VISIT])   # a subset of the visits
        us = truth.cpu_ns(ops) / 1000
        noisy = [us * (1 + rng.normal(0, 2e-5)) for _ in range(3)]   # 0.002% noise
        samples.append(BatchSample(b + 1, ("first", "merging", "steady")[b % 3], ops, noisy))
    fitted = fit_costs([ScenarioData("synthetic", samples, runs=3)])
    for n in OP_NAMES:
        assert fitted.ns[n] == pytest.approx(true[n], rel=0.05, abs=15), n
    fit = Fit(fitted, [ScenarioData("synthetic", samples, runs=3)])
    for ph, res in fit.residuals().items():
        if ph != "batch":
            assert abs(res["total_error"]) < 0.01


def test_fit_keeps_the_base_cost_of_operations_never_seen():
    base = scaled(1.0)
    ops = [0] * N_OPS
    ops[0], ops[1] = 1, 1000
    samples = [BatchSample(1, "first", ops, [1000.0]),
               BatchSample(2, "first", [1, 500] + [0] * (N_OPS - 2), [500.0])]
    fitted = fit_costs([ScenarioData("s", samples, runs=1)], base=base)
    assert fitted.ns["split"] == base.ns["split"]
    assert fitted.ns["checksum"] == base.ns["checksum"]


def test_samples_leave_out_batches_whose_counters_differ():
    recs = run_scenario_on_model(load_scenario_text(SMALL)).records
    kernel = [dict(r, ksmd_cpu_us=100.0 + r["batch"]) for r in recs]
    kernel[4] = dict(kernel[4], pages_sharing=kernel[4]["pages_sharing"] + 1)
    d = samples_from_traces(recs, [kernel], "s")
    assert d.mismatched_batches == 1 and len(d.samples) == len(recs) - 1
    assert [s.phase for s in d.samples][:2] == ["first", "first"]
    assert {s.phase for s in d.samples} == {"first", "merging", "steady"}


def test_calibrate_from_saved_traces_recovers_a_machine(runner, tmp_path):
    """Traces 'recorded' on a machine whose ksmd is exactly 1.5 times the shipped profile:
    the fit finds that machine again, and writes a profile that loads."""
    suite = tmp_path / "suite"
    traces = tmp_path / "traces"
    suite.mkdir()
    traces.mkdir()
    machine = scaled(1.5)
    for i, (distinct, pts) in enumerate([(8, 64), (1, 32), (50, 100), (400, 128)]):
        text = SMALL.replace("distinct = 8", f"distinct = {distinct}").replace(
            "pages_to_scan = 64", f"pages_to_scan = {pts}")
        (suite / f"s{i}.toml").write_text(text)
        recs = run_scenario_on_model(load_scenario_text(text)).records
        for run in (1, 2):
            with open(traces / f"s{i}.kernel{run}.jsonl", "w") as f:
                for r in recs:
                    ops = [r["ops"][n] for n in OP_NAMES]
                    k = {key: v for key, v in r.items() if key != "ops"}
                    k["ksmd_cpu_us"] = round(machine.cpu_ns(ops) / 1000, 1)
                    f.write(json.dumps(k) + "\n")
                f.write(json.dumps({"final": True, "kernel": "6.18.99-test",
                                    "processes": {}}) + "\n")
    out = tmp_path / "fitted.toml"
    r = runner.invoke(app, ["kernel", "calibrate", "--suite", str(suite), "--from-traces",
                            str(traces), "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    assert "model/kernel" in r.stdout and "first full scan" in r.stdout
    prof = load_profile(out)
    assert prof.meta["kernel_release"] == "6.18.99-test"
    assert prof.meta["fitted_on"] == ["s0", "s1", "s2", "s3"]
    for ph in ("first", "merging", "steady"):
        assert abs(prof.meta["residuals"][ph]["total_error"]) < 0.01
    # what it predicts for an unseen scenario is the machine's CPU time
    unseen = load_scenario_text(SMALL.replace("distinct = 8", "distinct = 20"))
    pred = Machine(costs=prof)
    truth = Machine(costs=machine)
    for mach in (pred, truth):
        p = mach.spawn("p")
        v = p.mmap(300, name="v")
        p.fill(v, [(i % 20) + 1 for i in range(300)])
        p.madvise(v, "mergeable")
        mach.sysfs_write("run", 1)
        mach.run_batches(10)
    assert pred.ksm.cpu_ns == pytest.approx(truth.ksm.cpu_ns, rel=0.02)
    assert unseen is not None


def test_calibrate_refuses_bad_directories(runner, tmp_path):
    r = runner.invoke(app, ["kernel", "calibrate", "--suite", str(tmp_path / "nope")])
    assert r.exit_code == 2 and len(r.stderr.splitlines()) == 1


# ---------------------------------------------------------------------- CPU in the output


def test_cpu_by_phase_follows_full_scans():
    recs = [{"batch": i + 1, "t_ms": 100.0 * i, "full_scans": fs, "ksmd_cpu_us": 1000.0 * (k + 1)}
            for i, (fs, k) in enumerate([(0, 0), (1, 0), (1, 1), (2, 1), (2, 2), (3, 2)])]
    ph = cpu_by_phase(recs)
    assert [(n, b, round(c, 3)) for n, b, c, _ in ph] == [
        ("first full scan", 2, 2.0), ("merging scan", 2, 4.0), ("steady scans", 2, 6.0)]
    assert ph[0][3] == pytest.approx(100 * 2.0 / 200.0)
    assert cpu_by_phase([{k: v for k, v in r.items() if k != "ksmd_cpu_us"} for r in recs]) == []


def test_run_reports_cpu_per_phase(runner, tmp_path):
    sc = tmp_path / "s.toml"
    sc.write_text(SMALL)
    r = runner.invoke(app, ["run", str(sc), "-q"])
    assert r.exit_code == 0
    for name in ("first full scan", "merging scan", "steady scans"):
        assert name in r.stdout
    assert "% of one CPU" in r.stdout


def test_pmd_mapped_visits_are_priced_apart():
    m = Machine(thp="madvise")
    p = m.spawn("p")
    r = p.mmap(1024, name="r", thp="huge")        # two PMD-mapped THPs
    p.fill(r, [1 + (i % 7) for i in range(1024)])
    p.madvise(r, "mergeable")
    m.sysfs_write("pages_to_scan", 1024)
    m.sysfs_write("run", 1)
    ops = m.run_batch().ops
    d = as_dict(ops)
    assert d["visit"] == d["visit_pmd"] == 1024
    c = default_costs()
    # visit prices the PTE-mapped visits only: here none
    assert c.breakdown(ops).get("visit", 0) == 0
    assert c.breakdown(ops)["visit_pmd"] == pytest.approx(1024 * c.ns["visit_pmd"])


def test_checksums_of_large_folios_are_priced_apart():
    m = Machine(thp="madvise")
    p = m.spawn("p")
    big = p.mmap(512, name="big", thp="huge")     # one PMD-mapped THP
    small = p.mmap(256, name="small")             # order-0 pages
    p.fill(big, [10_000 + i for i in range(512)])
    p.fill(small, [20_000 + i for i in range(256)])
    p.madvise(big, "mergeable")
    p.madvise(small, "mergeable")
    m.sysfs_write("pages_to_scan", 768)
    m.sysfs_write("run", 1)
    d = as_dict(m.run_batch().ops)
    assert d["checksum"] == 768 and d["checksum_large"] == 512
    c = CostModel(ns={**default_costs().ns, "checksum": 1000.0, "checksum_large": 250.0})
    br = c.breakdown([d[n] for n in OP_NAMES])
    assert br["checksum"] == pytest.approx(256 * 1000.0)
    assert br["checksum_large"] == pytest.approx(512 * 250.0)


def test_a_profile_without_checksum_large_prices_it_like_checksum(tmp_path):
    src = tmp_path / "old.toml"
    ns = {n: 100.0 + i for i, n in enumerate(OP_NAMES) if n != "checksum_large"}
    src.write_text("[costs]\n" + "".join(f"{n} = {v}\n" for n, v in ns.items()))
    c = load_profile(src)
    assert c.ns["checksum_large"] == c.ns["checksum"] == ns["checksum"]
