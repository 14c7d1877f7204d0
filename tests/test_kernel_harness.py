"""The live-kernel harness (samepage.kernel). (Its recorded scenarios, and their live re-runs,
are the conformance suite: tests/conformance.)

Tests marked ``kernel`` drive the real KSM of this machine: they need root and a writable
/sys/kernel/mm/ksm/run, and are skipped otherwise. They take the KSM lock (the runner takes it
itself; it is re-entrant within a process), so they never overlap another harness run.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from samepage.kernel import sysfs
from samepage.kernel.lock import KsmLockTimeout, ksm_lock
from samepage.kernel.runner import check_scenario, run_scenario_on_kernel
from samepage.kernel.worker import HUGE_SIZE, WINDOW_LO, pid_alive, region_layout
from samepage.scenario import ScenarioError, load_scenario_text

REPO = Path(__file__).resolve().parent.parent


def _kernel_usable() -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "needs root"
    if not sysfs.ksm_writable():
        return False, "/sys/kernel/mm/ksm/run is not writable (no KSM, or not root)"
    return True, ""


_OK, _WHY = _kernel_usable()
needs_kernel = pytest.mark.skipif(not _OK, reason=_WHY or "live KSM not available")


def _tiny(batches: int = 6, extra: str = "") -> str:
    return f"""
name = "tiny"
[ksm]
pages_to_scan = 100
sleep_millisecs = 100
[[process]]
name = "p"
  [[process.region]]
  name = "ram"
  pages = 40
  thp = "nohuge"
  fill = {{ kind = "pattern", distinct = 2 }}
{extra}
[run]
batches = {batches}
"""


# --------------------------------------------------------------------------- no kernel needed


def test_parse_ksm_stat():
    text = ("ksm_rmap_items 300\nksm_zero_pages 0\nksm_merging_pages 300\n"
            "ksm_process_profit 1209600\nksm_merge_any: no\nksm_mergeable: yes\n")
    assert sysfs.parse_ksm_stat(text) == {
        "ksm_rmap_items": 300, "ksm_zero_pages": 0, "ksm_merging_pages": 300,
        "ksm_process_profit": 1209600, "ksm_merge_any": False, "ksm_mergeable": True}


def test_parse_advisor_mode():
    assert sysfs.parse_value("advisor_mode", "[none] scan-time") == "none"
    assert sysfs.parse_value("advisor_mode", "none [scan-time]") == "scan-time"
    assert sysfs.parse_value("pages_to_scan", "100") == 100


def test_tunable_write_order():
    names = list(sysfs.DEFAULTS)
    off = sysfs.tunable_write_order(names, "none")
    assert off[0] == "advisor_mode" and "run" not in off
    assert off.index("advisor_mode") < off.index("pages_to_scan")
    on = sysfs.tunable_write_order(names, "scan-time")
    assert on[-1] == "advisor_mode" and "pages_to_scan" not in on


def test_region_layout_is_ordered_aligned_and_gapped():
    lay = region_layout([("a", 1), ("b", 512), ("c", 3)])
    assert lay["a"] == WINDOW_LO
    assert lay["a"] < lay["b"] < lay["c"]
    for addr in lay.values():
        assert addr % HUGE_SIZE == 0
    assert lay["b"] - (lay["a"] + 4096) >= HUGE_SIZE
    assert lay["c"] - (lay["b"] + 512 * 4096) >= HUGE_SIZE


def test_check_scenario_refuses_short_sleep():
    sc = load_scenario_text(_tiny().replace("sleep_millisecs = 100", "sleep_millisecs = 20"))
    with pytest.raises(ValueError, match="sleep_millisecs"):
        check_scenario(sc)
    sc = load_scenario_text(_tiny().replace("sleep_millisecs = 100\n", ""))
    with pytest.raises(ValueError, match="sleep_millisecs"):   # kernel default 20
        check_scenario(sc)


def test_check_scenario_refuses_run_left_off():
    ev = """
[[event]]
after_batch = 2
process = "p"
op = "set"
tunable = "run"
value = 0
"""
    # the shared static check (scenario.checks) refuses it when it is loaded
    with pytest.raises(ScenarioError, match="run = 0"):
        load_scenario_text(_tiny(extra=ev))
    # ... and the harness refuses it too if the scenario changed after loading
    sc = load_scenario_text(_tiny(extra=ev.replace("after_batch = 2", "after_batch = 6")))
    sc.run.batches = 7
    with pytest.raises(ValueError, match="run = 0"):
        check_scenario(sc)
    ev_back = ev + ev.replace("value = 0", "value = 1")
    check_scenario(load_scenario_text(_tiny(extra=ev_back)))


def test_check_scenario_sleep_change_must_be_last():
    ev = """
[[event]]
after_batch = 2
process = "p"
op = "set"
tunable = "sleep_millisecs"
value = 150

[[event]]
after_batch = 2
process = "p"
op = "write"
region = "ram"
pages = [0]
token = 9
"""
    with pytest.raises(ValueError, match="last event"):
        check_scenario(load_scenario_text(_tiny(extra=ev)))


# --------------------------------------------------------------------------- live kernel


def _settings_now() -> tuple[dict, dict]:
    with ksm_lock(120):
        return sysfs.save_settings(), sysfs.save_thp()


@pytest.mark.kernel
@needs_kernel
def test_record_tiny_scenario():
    before = _settings_now()
    sc = load_scenario_text(_tiny(batches=6))
    info: dict = {}
    seen = []
    with ksm_lock(120):
        records, final = run_scenario_on_kernel(sc, info=info,
                                                progress=lambda k, d: seen.append(k))
    assert [r["batch"] for r in records] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(records, records[1:]):
        for key in ("pages_scanned", "pages_skipped", "full_scans", "t_ms"):
            assert b[key] >= a[key], key
    assert records[0]["pages_scanned"] == 40          # one batch covers the whole region
    assert records[0]["full_scans"] == 1              # ... and wraps in the same batch
    assert all(r["pages_shared"] + r["pages_sharing"] <= 40 for r in records)
    assert records[-1]["pages_shared"] == 2 and records[-1]["pages_sharing"] == 38
    t = [r["t_ms"] for r in records]
    assert t[0] < 20
    assert all(95 <= b - a <= 130 for a, b in zip(t, t[1:])), t
    assert final["final"] is True and final["kernel"] == os.uname().release
    assert final["processes"]["p"]["ksm_merging_pages"] == 40
    assert final["processes"]["p"]["ksm_rmap_items"] == 40
    assert "batch" in seen and "pid" in seen
    assert info["restore_errors"] == []
    assert not any(pid_alive(p) for p in info["pids"].values())
    assert _settings_now() == before


@pytest.mark.kernel
@needs_kernel
def test_lock_excludes_a_second_run(tmp_path):
    toml = tmp_path / "tiny.toml"
    toml.write_text(_tiny())
    with ksm_lock(120):
        r = subprocess.run([sys.executable, "-m", "samepage.kernel.record", str(toml),
                            "-o", str(tmp_path / "t.jsonl"), "--lock-timeout", "0.3"],
                           capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 1
    assert "held by another process" in r.stderr
    assert not (tmp_path / "t.jsonl").exists()


_KILL_SCENARIO = """
name = "to be killed"
[ksm]
pages_to_scan = 100
sleep_millisecs = 100
use_zero_pages = 1
max_page_sharing = 3
smart_scan = 0
[machine]
thp = "{thp}"
[[process]]
name = "a"
merge_any = true
  [[process.region]]
  name = "ram"
  pages = 50
  thp = "nohuge"
  fill = {{ kind = "pattern", distinct = 2 }}
[[process]]
name = "z"
  [[process.region]]
  name = "zeros"
  pages = 20
  thp = "nohuge"
  fill = {{ kind = "zero" }}
[[event]]
after_batch = 2
process = "a"
op = "fork"
child = "b"
[run]
batches = 200
"""


@pytest.mark.kernel
@needs_kernel
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_killed_midway_restores_everything(tmp_path, sig):
    before_ksm, before_thp = _settings_now()
    cur = sysfs.thp_enabled()
    other = "never" if cur != "never" else "madvise"
    toml = tmp_path / "kill.toml"
    toml.write_text(_KILL_SCENARIO.format(thp=other))
    out = tmp_path / "kill.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "samepage.kernel.record", str(toml),
                             "-o", str(out)], stderr=subprocess.PIPE, text=True, cwd=REPO,
                            # SIGINT must raise KeyboardInterrupt in the child even when the
                            # suite runs with SIGINT ignored (a background job of a script)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr] and None,
                     daemon=True).start()
    pids: dict[str, int] = {}
    batches = 0
    changed_seen = False
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail("the recorder made no progress")
            if line.startswith("# pid "):
                _, _, name, pid = line.split()
                pids[name] = int(pid)
            elif line.strip()[:1].isdigit():
                batches += 1
                if batches == 3:      # mid-run, after the fork: KSM is visibly reconfigured
                    changed_seen = (sysfs.read_value("run") == 1
                                    and sysfs.read_value("max_page_sharing") == 3
                                    and sysfs.thp_enabled() == other)
                if batches >= 6:
                    break
        proc.send_signal(sig)
        rc = proc.wait(timeout=30)
        time.sleep(0.1)
        rest = ""
        while not lines.empty():
            rest += lines.get()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert changed_seen, "the run never reached its configured state"
    assert set(pids) == {"a", "z", "b"}, pids
    assert rc == (143 if sig == signal.SIGTERM else 130), rest
    assert "restored" in rest
    assert not out.exists()
    for name, pid in pids.items():          # every worker is gone (zombies count as gone)
        for _ in range(200):
            if not pid_alive(pid):
                break
            time.sleep(0.01)
        assert not pid_alive(pid), f"worker {name} (pid {pid}) is still alive"
    after_ksm, after_thp = _settings_now()
    assert after_ksm == before_ksm
    assert after_thp == before_thp
    assert sysfs.read_value("run") == before_ksm["run"]


def test_lock_timeout_within_process_threads():
    """A second thread of the same process cannot take the lock while the first holds it."""
    got = []
    try:
        held = ksm_lock(120)
        held.__enter__()
    except PermissionError:
        pytest.skip("cannot create the lock file")
    try:
        def other():
            try:
                with ksm_lock(0.1):
                    got.append("taken")
            except KsmLockTimeout:
                got.append("timeout")
        t = threading.Thread(target=other)
        t.start()
        t.join()
    finally:
        held.__exit__(None, None, None)
    assert got == ["timeout"]
