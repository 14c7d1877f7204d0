"""Tuning policies (samepage.policy) and host memory (samepage.mm.meminfo): each policy's
decisions on recorded meminfo, the meminfo the model derives from its frames, the policy
runner in simulated time, and the command line (--policy NAME|FILE.py:Class|all)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from samepage.mm.meminfo import HostMemory, meminfo, used_frames
from samepage.policy import load_policy
from samepage.policy.base import ProcInfo
from samepage.policy.view import TraceView
from samepage.scenario.loader import load_scenario_text
from samepage.scenario.errors import ScenarioError
from samepage.scenario.policy_runner import run_with_policy, scenario_policy

ROOT = Path(__file__).resolve().parent.parent
GIB_KB = 1024 * 1024

SMALL = """
name = "small host"
[ksm]
pages_to_scan = 100
sleep_millisecs = 20
[machine]
memory_mb = 64
baseline_mb = {baseline}
[[process]]
name = "a"
  [[process.region]]
  name = "ram"
  pages = 1024
  thp = "nohuge"
  fill = {{ kind = "pattern", distinct = 16 }}
[[process]]
name = "b"
  [[process.region]]
  name = "ram"
  pages = 1024
  thp = "nohuge"
  fill = {{ kind = "pattern", distinct = 16 }}
{extra}
[run]
batches = 1
"""


def small(baseline=50, extra="") -> object:
    return load_scenario_text(SMALL.format(baseline=baseline, extra=extra), "small.toml")


def view(total_kb, free_kb, avail_kb=None, pts=100, run=0, procs=()):
    mi = {"MemTotal": total_kb, "MemFree": free_kb, "Buffers": 0, "Cached": 0,
          "MemAvailable": free_kb if avail_kb is None else avail_kb, "AnonPages": 40_000}
    v = TraceView(mi, list(procs))
    v.sysfs.update(pages_to_scan=pts, run=run)
    return v


# ------------------------------------------------------------------------ meminfo


def test_meminfo_follows_the_frames_and_a_merge_frees_memory():
    sc = small()
    from samepage.scenario.model_runner import setup_machine
    m = setup_machine(sc)
    host = HostMemory(64 * 1024, 50 * 1024)
    mi = meminfo(m._mem, host)
    assert used_frames(m._mem) == 2048
    assert mi["MemTotal"] == 65536 and mi["AnonPages"] == 2048 * 4
    assert mi["MemFree"] == 65536 - 51200 - 8192
    m.run_full_scans(3)
    after = meminfo(m._mem, host)
    # 2048 pages with 16 contents: 16 KSM pages remain
    assert after["MemFree"] - mi["MemFree"] == (2048 - 16) * 4
    assert after["MemAvailable"] < after["MemFree"]        # the reserve is not available
    procs = {p.name: p for p in _machine_view(m, host).processes()}
    assert procs["a"].rss_kb == 4096 and procs["a"].vsz_kb == 4096    # RSS keeps KSM pages
    assert procs["a"].pss_kb < 100                         # 1024 pages over 16 shared ones


def _machine_view(m, host):
    from samepage.policy.view import MachineView
    return MachineView(m, host)


# ------------------------------------------------------------------------ policies


def test_ksmtuned_constants_and_branches():
    p = load_policy("ksmtuned")
    v = view(16 * GIB_KB, 10 * GIB_KB)
    p.start(v)
    assert (p.sleep, p.thres) == (10, 16 * GIB_KB * 20 // 100)
    p.step(v)                                     # plenty free, nothing committed: stop
    assert v.writes == [(0.0, "run", 0)]
    v.meminfo_now["MemFree"] = p.thres - 1        # pressure: boost from 0
    p.step(v)
    assert [w[1:] for w in v.writes[1:]] == [("pages_to_scan", 300), ("sleep_millisecs", 10),
                                             ("run", 1)]
    v.meminfo_now["MemFree"] = p.thres            # not above the threshold: decay
    p.step(v)
    assert v.sysfs["pages_to_scan"] == 250
    small_host = load_policy("ksmtuned")
    small_host.start(view(2 * GIB_KB, GIB_KB))
    assert small_host.sleep == 80                 # 10 ms * 16 GiB / 2 GiB
    prox = load_policy("proxmox")
    prox.start(view(2 * GIB_KB, GIB_KB))
    assert prox.sleep == 800 and prox.metric == "pss"


def test_ksmtuned_committed_memory_counts_only_guests():
    p = load_policy("ksmtuned")
    guest = ProcInfo(1, "g", 14 * GIB_KB, 0, 0, comm="qemu-system-x86",
                     cmdline="qemu-system-x86_64 -enable-kvm")
    other = ProcInfo(2, "o", 14 * GIB_KB, 0, 0, comm="bash", cmdline="bash")
    v = view(16 * GIB_KB, 10 * GIB_KB, procs=[other])
    p.start(v)
    p.step(v)
    assert v.sysfs["run"] == 0
    v.procs_now = [guest]                         # committed + thres >= total: run at min
    p.step(v)
    assert v.sysfs["run"] == 1 and v.sysfs["pages_to_scan"] == 64


def test_kubevirt_starts_at_init_boosts_and_stops_below_min():
    p = load_policy("kubevirt")
    v = view(16 * GIB_KB, GIB_KB, avail_kb=GIB_KB, run=0)
    p.step(v)
    assert v.sysfs["run"] == 1 and v.sysfs["pages_to_scan"] == 100
    assert v.sysfs["sleep_millisecs"] == 100 * 16 * 1024 * 1024 // (15 * GIB_KB)
    p.step(v)
    assert v.sysfs["pages_to_scan"] == 400
    v.meminfo_now["MemAvailable"] = 8 * GIB_KB    # no pressure: decay, then stop at min
    v.sysfs["pages_to_scan"] = 400
    p.step(v)                                     # 400 - 50, still running
    assert v.sysfs["run"] == 1 and v.sysfs["pages_to_scan"] == 350
    v.sysfs["pages_to_scan"] = 100
    v.sysfs["run"] = 1
    n = len(v.writes)
    p.step(v)                                     # 100 - 50 = 50 < 64: min, stopped
    assert [w[1:] for w in v.writes[n:]] == [("run", 0)]
    assert p.interval_ms == 180_000 and p.first() == 0


def test_mom_writes_only_changes_and_averages_free_memory():
    p = load_policy("mom")
    guest = ProcInfo(1, "g", 0, 14 * GIB_KB, 0, comm="qemu-kvm", cmdline="qemu-kvm")
    v = view(16 * GIB_KB, 1 * GIB_KB, pts=100, run=0, procs=[guest])
    v.sysfs["sleep_millisecs"] = 10
    p.step(v)
    assert [w[1:] for w in v.writes] == [("run", 1), ("pages_to_scan", 400)]   # sleep is 10
    v.meminfo_now["MemFree"] = 15 * GIB_KB        # one sample of plenty: the mean is not
    p.step(v)                                     # above 20 % yet: (1 + 15) / 2 = 8 > 3.2
    assert v.sysfs["pages_to_scan"] == 350        # decay (committed VSZ keeps it running)


def test_harvester_stops_when_available_and_sleep_is_always_10():
    p = load_policy("harvester", {"mode": "high"})
    v = view(64 * GIB_KB, GIB_KB, avail_kb=GIB_KB)
    p.step(v)
    assert v.sysfs["run"] == 1 and v.sysfs["pages_to_scan"] == 300
    assert v.sysfs["sleep_millisecs"] == 10
    v.meminfo_now["MemAvailable"] = 32 * GIB_KB
    p.step(v)
    assert v.sysfs["run"] == 0 and v.sysfs["pages_to_scan"] == 250


def test_kata_walks_aggressive_standard_slow_then_restores():
    p = load_policy("kata")
    v = view(16 * GIB_KB, GIB_KB, pts=100, run=0)
    v.sysfs["sleep_millisecs"] = 20
    p.start(v)
    p.step(v)
    assert (v.sysfs["pages_to_scan"], v.sysfs["sleep_millisecs"]) == (1000, 1)
    seen = []
    t = p.next_ms(0.0)
    while t is not None:
        v.now_ms = t
        p.step(v)
        seen.append((t, v.sysfs["pages_to_scan"], v.sysfs["sleep_millisecs"], v.sysfs["run"]))
        t = p.next_ms(t)
    assert seen == [(30_000.0, 100, 10, 1), (150_000.0, 20, 100, 1), (270_000.0, 100, 20, 0)]


def test_unknown_option_suggests_and_bad_values_fail():
    with pytest.raises(Exception, match='did you mean "npages_max"'):
        load_policy("ksmtuned", {"npages_mx": 3})
    with pytest.raises(Exception, match="variant"):
        load_policy("ksmtuned", {"variant": "gentoo"})


# ------------------------------------------------------------------------ the runner


def test_policy_run_in_simulated_time():
    # baseline 50 MiB of 64: free 5.9 MiB < 20 % (12.8): ksmtuned boosts at 60 s
    sc = small(extra='[policy]\nname = "ksmtuned"\nduration_s = 200\nsample_s = 10')
    r = run_with_policy(sc, scenario_policy(sc))
    assert [s["t_s"] for s in r.samples][:3] == [0, 10, 20]
    assert r.samples[5]["run"] == 0 and r.samples[5]["saved_mib"] == 0   # before 60 s
    assert r.writes[0] == (60_000.0, "pages_to_scan", 300)
    assert r.samples[-1]["saved_mib"] == pytest.approx((2048 - 16) * 4 / 1024, abs=0.1)
    assert r.converged_s() is not None and r.converged_s() > 60
    # sleep = 10 ms * 16 GiB / 64 MiB = 2560 ms between batches once running
    assert r.samples[-1]["sleep_millisecs"] == 2560
    none = run_with_policy(sc, None)
    assert none.writes == [] and none.converged_s() < r.converged_s()


def test_no_pressure_keeps_ksm_stopped():
    sc = small(baseline=10, extra='[policy]\nname = "ksmtuned"\nduration_s = 200')
    r = run_with_policy(sc, scenario_policy(sc))
    assert r.batches == 0 and r.samples[-1]["saved_mib"] == 0
    assert {w[1:] for w in r.writes} == {("run", 0)}


def test_host_memory_errors():
    with pytest.raises(ScenarioError, match="machine.baseline_mb"):
        load_scenario_text(SMALL.format(baseline=64, extra=""), "x.toml")
    with pytest.raises(ScenarioError, match="policy.npages_mx.*did you mean"):
        small(extra='[policy]\nname = "ksmtuned"\nnpages_mx = 3')


# ------------------------------------------------------------------------ CLI


def _cli(*args, cwd=None):
    return subprocess.run([str(Path(sys.executable).parent / "samepage"), *args],
                          capture_output=True, text=True, cwd=cwd, timeout=600)


def test_cli_policy_json_user_class_and_errors(tmp_path):
    scen = tmp_path / "s.toml"
    scen.write_text(SMALL.format(baseline=50, extra=""))
    r = _cli("run", str(scen), "--policy", "ksmtuned", "--duration", "120", "--json")
    assert r.returncode == 0, r.stderr
    recs = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert recs[-1]["policy"] == "ksmtuned" and recs[-1]["run"] == 1
    pol = tmp_path / "mine.py"
    pol.write_text(textwrap.dedent("""
        from samepage.policy import Policy
        class Eager(Policy):
            name = "eager"
            first_ms = 0.0
            interval_ms = 10_000.0
            def step(self, view):
                view.sysfs_write("pages_to_scan", 2048)
                view.sysfs_write("run", 1)
    """))
    r = _cli("run", str(scen), "--policy", f"{pol}:Eager", "--duration", "30", "-q")
    assert r.returncode == 0, r.stderr
    assert "eager: saved 7.9 MiB" in r.stdout and "6 sysfs writes" in r.stdout   # at 0, 10 and 20 s
    for spec, msg in ((f"{pol}:Nope", "no class 'Nope'"), ("missing.py:X", "no such file"),
                      ("bogus", "unknown policy")):
        r = _cli("run", str(scen), "--policy", spec)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith("samepage: error: ") and msg in r.stderr


def test_cli_policy_all_compares(tmp_path):
    scen = tmp_path / "s.toml"
    scen.write_text(SMALL.format(baseline=50, extra=""))
    png = tmp_path / "p.png"
    r = _cli("run", str(scen), "--policy", "all", "--duration", "300", "--plot", str(png))
    assert r.returncode == 0, r.stderr
    for name in ("none", "ksmtuned", "proxmox", "mom", "kubevirt", "harvester", "kata",
                 "advisor"):
        assert f"\n{name}" in r.stdout or f" {name} " in r.stdout
    assert png.stat().st_size > 1000


def test_the_live_harness_refuses_a_policy(tmp_path):
    """The harness records scenarios on the real KSM; a tuning daemon is the operator's:
    check_scenario refuses a [policy] in one line (before touching the kernel)."""
    from samepage.kernel.runner import check_scenario
    from samepage.scenario import load_scenario_text

    sc = load_scenario_text("""
[machine]
memory_mb = 64
baseline_mb = 40
[policy]
name = "ksmtuned"
[[process]]
name = "a"
  [[process.region]]
  name = "r"
  pages = 8
  fill = { kind = "pattern", distinct = 2 }
[run]
batches = 2
""")
    with pytest.raises(ValueError, match=r"^policy: .*runs on the model only"):
        check_scenario(sc)
