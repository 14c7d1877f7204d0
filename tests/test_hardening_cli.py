"""Issue 8, the last failure classes of the fuzz campaign: explore with events a thread made
impossible, a schedule naming an unknown strategy, cost profiles with huge numbers, a huge
--batches, bare group commands, and progress from the start of a big run."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

def samepage(*args: str, cwd: Path | None = None, **kw) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("samepage")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120, **kw)


SMALL = """
[ksm]
pages_to_scan = 100
[[process]]
name = "p0"
  [[process.region]]
  name = "r0"
  pages = 16
  fill = { kind = "pattern", distinct = 4 }
"""


def one_error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("samepage: error: ")
    return lines[0]


def test_explore_event_on_a_process_a_thread_ended(tmp_path):
    """Under some schedules a [[thread]] exits p0 before an event acts on it: the event's
    system call fails and changes nothing (as a thread op's does); explore goes on."""
    scen = tmp_path / "s.toml"
    scen.write_text(SMALL + """
[[event]]
after_batch = 2
process = "p0"
op = "write"
region = "r0"
range = [0, 4]
token = 7
[[thread]]
name = "t0"
process = "p0"
ops = [{ op = "exit" }]
[run]
batches = 3
""")
    r = samepage("explore", str(scen), "--schedules", "20", "--budget", "10",
                 "--save", str(tmp_path / "out.json"))
    assert r.returncode == 0, r.stderr
    assert "nothing found" in r.stdout


def test_event_error_names_file_and_event(tmp_path):
    """An event the model cannot carry out (max_page_sharing while KSM pages exist: EBUSY,
    known only at run time) names the file and the event's key."""
    scen = tmp_path / "s.toml"
    scen.write_text(SMALL + """
[[event]]
after_batch = 3
op = "set"
tunable = "max_page_sharing"
value = 16
[run]
batches = 4
""")
    line = one_error_line(samepage("run", str(scen), "-q"))
    assert line.startswith(f"samepage: error: {scen}: event[0] (set after batch 3): ")
    assert "max_page_sharing" in line and "busy" in line.lower()


def test_schedule_with_unknown_strategy_names_the_file(tmp_path):
    """A schedule file whose same_folio this build does not know: its file and key."""
    import json

    repo = Path(__file__).resolve().parents[1]
    scen = repo / "examples" / "seed-same-folio-race.toml"
    saved = tmp_path / "found.json"
    r = samepage("explore", str(scen), "--same-folio", "early-put", "--strategy", "random",
                 "--save", str(saved), cwd=tmp_path)
    assert r.returncode == 1 and saved.exists(), r.stderr
    data = json.loads(saved.read_text())
    data["same_folio"] = "[/]"
    saved.write_text(json.dumps(data))
    line = one_error_line(samepage("explore", str(scen), "--replay", str(saved),
                                   cwd=tmp_path))
    assert f"{saved}: same_folio: unknown strategy" in line


@pytest.mark.parametrize("value,expect", [
    ("9" * 4000, "must be in 0..1e+09 ns"),
    ("9" * 5000, "longer than 4096 characters"),
    ("nan", "must be in 0..1e+09 ns"),
    ("-1", "must be in 0..1e+09 ns"),
])
def test_cost_profile_numbers(tmp_path, value, expect):
    from samepage.ksm.costs import load_default_costs, OP_NAMES  # noqa: F401

    good = tmp_path / "good.toml"
    scen = tmp_path / "s.toml"
    scen.write_text(SMALL + "[run]\nbatches = 2\n")
    lines = ["[costs]"] + [f"{op} = {value if i == 0 else 100}" for i, op in
                           enumerate(OP_NAMES)]
    good.write_text("\n".join(lines) + "\n")
    line = one_error_line(samepage("run", str(scen), "-q", "--costs", str(good)))
    assert str(good) in line and expect in line


def test_cost_profile_long_dotted_key_is_refused_cheaply(tmp_path):
    prof = tmp_path / "p.toml"
    prof.write_text("a." * 60000 + "b = 1\n")
    scen = tmp_path / "s.toml"
    scen.write_text(SMALL + "[run]\nbatches = 2\n")
    t = time.monotonic()
    line = one_error_line(samepage("run", str(scen), "-q", "--costs", str(prof)))
    assert time.monotonic() - t < 20
    assert "(toml)" in line


def test_huge_batches_refused_before_running(tmp_path):
    scen = tmp_path / "s.toml"
    scen.write_text(SMALL + "[run]\nbatches = 2\n")
    line = one_error_line(samepage("run", str(scen), "--batches", "9" * 23))
    assert "--batches" in line and "batches need" in line


@pytest.mark.parametrize("args", [(), ("kernel",), ("snapshot",)])
def test_group_alone_prints_help_and_succeeds(args):
    r = samepage(*args)
    assert r.returncode == 0
    assert r.stdout.startswith("Usage: samepage")
    assert r.stderr == ""


def test_big_run_shows_progress_from_the_start(tmp_path):
    """A run of ~1.5 M pages: on a terminal the progress bar is there before any batch."""
    scen = tmp_path / "big.toml"
    scen.write_text(SMALL.replace("pages = 16", "pages = 1500000") + "[run]\nbatches = 2\n")
    exe = str(Path(sys.executable).with_name("samepage"))
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover (child)
        os.execv(exe, [exe, "run", str(scen)])
    out = b""
    deadline = time.monotonic() + 15
    try:
        while time.monotonic() < deadline and b"setting up the model" not in out:
            r, _, _ = select.select([fd], [], [], 0.2)
            if r:
                try:
                    out += os.read(fd, 65536)
                except OSError:
                    break
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)
    assert b"setting up the model" in out
