"""``samepage kernel run/record/status/top`` and ``samepage compare``.

Tests marked ``kernel`` drive the live KSM (root and a writable /sys/kernel/mm/ksm, skipped
otherwise); the others need neither (compare --against, status/top, the refusals).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from samepage.cli.main import app
from samepage.kernel import status as st
from samepage.kernel import sysfs
from samepage.kernel.lock import ksm_lock
from samepage.kernel.worker import pid_alive
from samepage.scenario import COUNTER_NAMES, read_trace

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "tests" / "conformance" / "scenarios"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _kernel_usable() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not sysfs.ksm_writable():
        return "/sys/kernel/mm/ksm/run is not writable"
    return None


needs_kernel = pytest.mark.skipif(_kernel_usable() is not None,
                                  reason=_kernel_usable() or "live KSM available")

TINY = """
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
  fill = { kind = "pattern", distinct = 2 }
[run]
batches = 5
"""


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    p = tmp_path / "tiny.toml"
    p.write_text(TINY)
    return p


def one_error_line(result, code: int = 2) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("samepage: error: ")
    return lines[0]


def _settings() -> tuple[dict, dict]:
    with ksm_lock(900):
        return sysfs.save_settings(), sysfs.save_thp()


# ------------------------------------------------------------------------------ help


def test_help_lists_kernel_and_compare(runner):
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0 and "compare" in r.stdout and "kernel" in r.stdout
    r = runner.invoke(app, ["kernel", "--help"])
    assert r.exit_code == 0
    for cmd in ("run", "record", "status", "top"):
        assert cmd in r.stdout


# ------------------------------------------------------------------------------ compare --against


def test_compare_against_identical_trace(runner):
    toml = SCENARIOS / "late_register.toml"
    r = runner.invoke(app, ["compare", str(toml), "--against", str(toml.with_suffix(".jsonl"))])
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert "identical: all 11 counters of all 16 batches" in r.stdout
    assert "300/300" in r.stdout                       # cells read model/kernel
    assert "!" not in r.stdout.split("each cell")[0]   # no counter marked as differing
    assert "6.18" in r.stdout and "ksm_stat" in r.stdout


def _tampered(tmp_path: Path, name: str, batch: int, counter: str, delta: int) -> Path:
    src = (SCENARIOS / f"{name}.jsonl").read_text().splitlines()
    out = []
    for line in src:
        rec = json.loads(line)
        if rec.get("batch") == batch:
            rec[counter] += delta
        out.append(json.dumps(rec))
    p = tmp_path / f"{name}.jsonl"
    p.write_text("\n".join(out) + "\n")
    return p


def test_compare_against_reports_the_first_difference(runner, tmp_path):
    trace = _tampered(tmp_path, "identical", 5, "pages_sharing", 7)
    r = runner.invoke(app, ["compare", str(SCENARIOS / "identical.toml"), "--against", str(trace)])
    assert r.exit_code == 1, (r.stdout, r.stderr)
    assert r.stderr == ""
    row = next(line for line in r.stdout.splitlines() if "<- first difference" in line)
    assert row.split()[:2] == ["!", "5"]
    model = read_trace(SCENARIOS / "identical.jsonl")[0][4]["pages_sharing"]
    assert f"{model}/{model + 7}!" in row
    assert "differ: first difference at batch 5: pages_sharing model" in r.stdout
    # compact mode: agreeing cells show one number
    r = runner.invoke(app, ["compare", str(SCENARIOS / "identical.toml"), "--against", str(trace),
                            "--compact"])
    assert r.exit_code == 1
    assert "300/300" not in r.stdout and f"{model}/{model + 7}!" in r.stdout


def test_compare_final_record_difference(runner, tmp_path):
    src = SCENARIOS / "two_processes.jsonl"
    lines = src.read_text().splitlines()
    final = json.loads(lines[-1])
    name = next(iter(final["processes"]))
    final["processes"][name]["ksm_rmap_items"] += 1
    p = tmp_path / "t.jsonl"
    p.write_text("\n".join(lines[:-1] + [json.dumps(final)]) + "\n")
    r = runner.invoke(app, ["compare", str(SCENARIOS / "two_processes.toml"), "--against", str(p),
                            "-q"])
    assert r.exit_code == 1
    assert "final ksm_stat differs" in r.stdout and "ksm_rmap_items" in r.stdout


def test_compare_json_tags_both_traces(runner):
    toml = SCENARIOS / "pattern5.toml"
    r = runner.invoke(app, ["compare", str(toml), "--against", str(toml.with_suffix(".jsonl")),
                            "--json"])
    assert r.exit_code == 0, r.stderr
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    kernel_batches, kernel_final = read_trace(toml.with_suffix(".jsonl"))
    n = len(kernel_batches)
    assert [x["source"] for x in recs] == ["model"] * (n + 1) + ["kernel"] * (n + 1) + ["compare"]
    assert recs[n]["final"] is True and recs[2 * n + 1] == {"source": "kernel", **kernel_final}
    assert list(recs[0])[:3] == ["source", "batch", "t_ms"]
    assert recs[-1]["identical"] is True and recs[-1]["first_difference"] is None


def test_compare_plot(runner, tmp_path):
    toml = SCENARIOS / "write_merged.toml"
    png = tmp_path / "cmp.png"
    r = runner.invoke(app, ["compare", str(toml), "--against", str(toml.with_suffix(".jsonl")),
                            "--plot", str(png), "-q"])
    assert r.exit_code == 0
    assert png.read_bytes().startswith(PNG_MAGIC)


def test_compare_errors_are_one_line(runner, tmp_path):
    toml = SCENARIOS / "identical.toml"
    one_error_line(runner.invoke(app, ["compare", str(toml), "--against",
                                       str(tmp_path / "none.jsonl")]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    assert "line 1" in one_error_line(runner.invoke(app, ["compare", str(toml), "--against",
                                                          str(bad)]))
    one_error_line(runner.invoke(app, ["compare", str(tmp_path / "no.toml"), "--against",
                                       str(toml.with_suffix(".jsonl"))]))


# ------------------------------------------------------------------------------ refusals


def test_kernel_run_needs_root(runner, tiny, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    if not os.path.exists("/sys/kernel/mm/ksm/run"):
        pytest.skip("no KSM in this kernel")
    for args in (["kernel", "run", str(tiny)], ["kernel", "record", str(tiny), "-o", "x.jsonl"]):
        line = one_error_line(runner.invoke(app, args))
        assert "needs root" in line
    line = one_error_line(runner.invoke(app, ["compare", str(tiny)]))
    assert "needs root" in line and "--against" in line


def test_kernel_run_needs_writable_ksm(runner, tiny, monkeypatch):
    import samepage.kernel as k

    if not os.path.exists("/sys/kernel/mm/ksm/run"):
        pytest.skip("no KSM in this kernel")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(k, "ksm_writable", lambda: False)
    line = one_error_line(runner.invoke(app, ["kernel", "run", str(tiny)]))
    assert "writable" in line


def test_kernel_run_refuses_short_sleep(runner, tmp_path):
    p = tmp_path / "fast.toml"
    p.write_text(TINY.replace("sleep_millisecs = 100", "sleep_millisecs = 20"))
    line = one_error_line(runner.invoke(app, ["kernel", "run", str(p)]))
    assert "sleep_millisecs = 20" in line and "sleep_millisecs = 150" in line
    assert "samepage run" in line                # says what to use instead
    p.write_text(TINY.replace("sleep_millisecs = 100\n", ""))
    line = one_error_line(runner.invoke(app, ["kernel", "run", str(p)]))
    assert "kernel default 20" in line


# ------------------------------------------------------------------------------ status / top


def test_status_reads_everything(runner):
    if not os.path.isdir("/sys/kernel/mm/ksm"):
        pytest.skip("no KSM in this kernel")
    r = runner.invoke(app, ["kernel", "status", "--interval", "0.2"])
    assert r.exit_code == 0, (r.stdout, r.stderr)
    out = r.stdout
    for name in (*sysfs.TUNABLES, *COUNTER_NAMES):
        assert name in out, name
    for words in ("Memory saved", "Net profit", "Scanning", "pages/s", "THP vs KSM",
                  "processes using KSM", "rmap_items"):
        assert words in out, words
    for meaning in st.COUNTER_MEANINGS.values():
        assert meaning.split()[0] in out


def test_status_json(runner):
    if not os.path.isdir("/sys/kernel/mm/ksm"):
        pytest.skip("no KSM in this kernel")
    r = runner.invoke(app, ["kernel", "status", "--interval", "0.1", "--json"])
    assert r.exit_code == 0
    data = json.loads(r.stdout)
    assert data["kernel"] == os.uname().release
    assert set(COUNTER_NAMES) <= set(data["ksm"])
    assert data["saved_bytes"] == (data["ksm"]["pages_sharing"] + data["ksm"]["ksm_zero_pages"]) \
        * st.PAGE_SIZE
    assert data["pages_scanned_per_s"] is not None and isinstance(data["processes"], list)


def test_status_says_what_it_could_not_read(runner, monkeypatch):
    if not os.path.isdir("/sys/kernel/mm/ksm"):
        pytest.skip("no KSM in this kernel")
    real = st._read

    def denied(path: str) -> str:
        if path.endswith("/ksm_stat") and not path.startswith(f"/proc/{os.getpid()}/"):
            raise PermissionError(13, "Permission denied", path)
        if path.endswith("/sys/kernel/mm/ksm/advisor_mode"):
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(st, "_read", denied)
    r = runner.invoke(app, ["kernel", "status", "--interval", "0"])
    assert r.exit_code == 0, r.stderr
    assert "could not read" in r.stdout
    assert "/proc/PID/ksm_stat of" in r.stdout and "permission denied" in r.stdout
    assert "advisor_mode: permission denied" in r.stdout


def test_status_as_an_unprivileged_user():
    """The real thing: as nobody, other processes' ksm_stat cannot be read. (The interpreter
    may live where nobody cannot read, e.g. under /root: the child imports and warms up as
    root, then drops to nobody before running the command.)"""
    if os.geteuid() != 0 or not os.path.isdir("/sys/kernel/mm/ksm"):
        pytest.skip("needs root (to drop to nobody)")
    code = (
        "import os, sys\n"
        "from typer.testing import CliRunner\n"
        "from samepage.cli.main import app\n"
        "CliRunner().invoke(app, ['kernel', 'status', '--interval', '0'])\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "assert os.geteuid() == 65534\n"
        "app(['kernel', 'status', '--interval', '0.1'])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/",
                       timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    assert "Memory saved" in r.stdout
    assert "could not read" in r.stdout and "only root can read" in r.stdout


def test_top_refreshes_and_stops(runner):
    if not os.path.isdir("/sys/kernel/mm/ksm"):
        pytest.skip("no KSM in this kernel")
    t0 = time.monotonic()
    r = runner.invoke(app, ["kernel", "top", "--interval", "0.1", "--iterations", "3"])
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert time.monotonic() - t0 >= 0.3
    assert "Memory saved" in r.stdout and "pages_sharing" in r.stdout
    assert "tunables" not in r.stdout          # top is the compact view
    # not a terminal: batch mode, every refresh printed (the first view and 3 more)
    assert r.stdout.count("Memory saved") == 4 and r.stdout.count("--- ") == 3


def test_status_analysis_numbers():
    before = st.Snapshot(t=0.0, ksm={"pages_scanned": 1000, "pages_skipped": 0, "full_scans": 3,
                                     "pages_sharing": 0, "ksm_zero_pages": 0,
                                     "general_profit": 0},
                         vmstat={"thp_split_pmd": 5}, ksmd_runtime_ns=0)
    after = st.Snapshot(t=2.0, ksm={"pages_scanned": 3000, "pages_skipped": 200,
                                    "full_scans": 7, "pages_shared": 10, "pages_sharing": 90,
                                    "pages_unshared": 50, "pages_volatile": 50,
                                    "ksm_zero_pages": 10, "general_profit":
                                    100 * st.PAGE_SIZE - 200 * 64, "run": 1},
                        vmstat={"thp_split_pmd": 9}, ksmd_runtime_ns=int(0.1e9),
                        thp_enabled="always",
                        processes=[st.ProcessKsm(1, "qemu", {"ksm_mergeable": True,
                                                             "ksm_process_profit": 5},
                                                 anon_huge_kb=4096)])
    a = st.analyse(after, before)
    assert a.saved_bytes == 100 * st.PAGE_SIZE and a.rmap_items == 200
    assert a.scanned_per_s == 1000 and a.skipped_per_s == 100
    assert a.full_scans_done == 4 and a.full_scan_period_s == 0.5
    assert a.ksmd_cpu_pct == pytest.approx(5.0)
    assert len(a.thp_fight) == 3           # THP memory, enabled = always, splits
    assert any("4.0 MiB" in r for r in a.thp_fight)


# ------------------------------------------------------------------------------ live kernel


@pytest.mark.kernel
@needs_kernel
def test_kernel_run_json_streams_the_trace(runner, tiny):
    before = _settings()
    r = runner.invoke(app, ["kernel", "run", str(tiny), "--json", "--wait", "900"])
    assert r.exit_code == 0, r.stderr
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x.get("batch") for x in recs] == [1, 2, 3, 4, 5, None]
    assert recs[-1]["kernel"] == os.uname().release
    assert recs[-1]["processes"]["p"]["ksm_merging_pages"] == 40
    assert _settings() == before


@pytest.mark.kernel
@needs_kernel
def test_kernel_run_table_record_and_compare(runner, tiny, tmp_path):
    out = tmp_path / "tiny.jsonl"
    png = tmp_path / "k.png"
    r = runner.invoke(app, ["kernel", "record", str(tiny), "-o", str(out), "--wait", "900"])
    assert r.exit_code == 0, r.stderr
    assert "measured time" in r.stdout and f"Linux {os.uname().release}" in r.stdout
    assert "rmap_items" in r.stdout and "trace written to" in r.stdout
    batches, final = read_trace(out)
    assert len(batches) == 5 and final["kernel"] == os.uname().release
    r = runner.invoke(app, ["compare", str(tiny), "--against", str(out)])
    assert r.exit_code == 0, r.stdout
    r = runner.invoke(app, ["compare", str(tiny), "--wait", "900", "--plot", str(png)])
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert "identical" in r.stdout and "the live kernel" in r.stdout
    assert png.read_bytes().startswith(PNG_MAGIC)


@pytest.mark.kernel
@needs_kernel
def test_kernel_run_refuses_when_others_use_ksm(runner, tiny, monkeypatch):
    import samepage.kernel.runner as kr

    before = _settings()
    monkeypatch.setattr(kr, "foreign_ksm_users", lambda ours: ["4242 (qemu-system-x86)"])
    line = one_error_line(runner.invoke(app, ["kernel", "run", str(tiny), "--wait", "900"]))
    assert "4242 (qemu-system-x86)" in line and "--force" in line and "run = 2" in line
    assert _settings() == before
    r = runner.invoke(app, ["kernel", "run", str(tiny), "--wait", "900", "--force", "-q"])
    assert r.exit_code == 0, r.stderr
    assert _settings() == before


@pytest.mark.kernel
@needs_kernel
def test_second_run_fails_or_waits_for_the_lock(tiny):
    exe = [sys.executable, "-c", "from samepage.cli.main import app; app()"]
    with ksm_lock(900):
        t0 = time.monotonic()
        r = subprocess.run(exe + ["kernel", "run", str(tiny), "--wait", "0.5"],
                           capture_output=True, text=True, timeout=60)
        waited = time.monotonic() - t0
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.splitlines()) == 1 and "--wait SECONDS" in r.stderr
    assert "held by another process" in r.stderr and f"pid {os.getpid()}" in r.stderr
    assert waited >= 0.5


_KILL = """
name = "to be killed"
[ksm]
pages_to_scan = 100
sleep_millisecs = 100
use_zero_pages = 1
max_page_sharing = 3
smart_scan = 0
[[process]]
name = "a"
merge_any = true
  [[process.region]]
  name = "ram"
  pages = 50
  thp = "nohuge"
  fill = { kind = "pattern", distinct = 2 }
[[process]]
name = "z"
  [[process.region]]
  name = "zeros"
  pages = 20
  thp = "nohuge"
  fill = { kind = "zero" }
[[event]]
after_batch = 2
process = "a"
op = "fork"
child = "b"
[run]
batches = 200
"""


def _default_sigint() -> None:
    """In the child: SIGINT back to its default, so that Python turns it into
    KeyboardInterrupt even when the test suite runs where SIGINT is ignored (a background job
    of a non-interactive shell)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        ppid = int(data[data.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


@pytest.mark.kernel
@needs_kernel
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP],
                         ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_samepage_kernel_run_killed_midway(tmp_path, sig):
    before = _settings()
    toml = tmp_path / "kill.toml"
    toml.write_text(_KILL)
    proc = subprocess.Popen([sys.executable, "-c", "from samepage.cli.main import app; app()",
                             "kernel", "run", str(toml), "--json", "--wait", "900"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] and None,
                     daemon=True).start()
    started: set[int] = set()
    changed = False
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail("samepage kernel run made no progress: " + proc.stderr.read())
            rec = json.loads(line)
            if rec["batch"] == 4:          # after the fork: three workers
                started = _descendants(proc.pid)
                changed = (sysfs.read_value("run") == 1
                           and sysfs.read_value("max_page_sharing") == 3
                           and sysfs.read_value("use_zero_pages") == 1)
            if rec["batch"] >= 6:
                break
        proc.send_signal(sig)
        rc = proc.wait(timeout=60)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert changed, "the run never reached its configured state"
    assert len(started) == 3, started             # workers a, z and a's child b
    assert rc == 128 + sig if sig != signal.SIGINT else rc == 130, (rc, err)
    assert len(err.splitlines()) == 1 and "restored" in err and "Traceback" not in err, err
    for pid in started:
        for _ in range(200):
            if not pid_alive(pid):
                break
            time.sleep(0.01)
        assert not pid_alive(pid), f"pid {pid} started by the run is still alive"
    assert _settings() == before
    assert sysfs.read_value("run") == before[0]["run"]
