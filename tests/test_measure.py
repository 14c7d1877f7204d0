"""samepage kernel measure: refusals (one line, exit 2) and, on the live kernel, agreement
with the forecast of a snapshot taken just before (docs/forecast-accuracy.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from samepage.cli.main import app
from samepage.kernel.measure import MeasureError, check_pids

SAMEPAGE = os.path.join(os.path.dirname(sys.executable), "samepage")


def _ksm_writable() -> bool:
    try:
        from samepage.kernel import ksm_writable
        return os.geteuid() == 0 and ksm_writable()
    except Exception:
        return False


def test_refuses_a_process_that_did_not_opt_in(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.2)
        if not os.path.exists(f"/proc/{p.pid}/ksm_stat"):
            pytest.skip("no /proc/PID/ksm_stat (kernel without KSM)")
        with pytest.raises(MeasureError, match="has not opted in"):
            check_pids([p.pid])
        r = CliRunner().invoke(app, ["kernel", "measure", "--pid", str(p.pid)])
        assert r.exit_code == 2 and r.stderr.count("\n") == 1
        assert r.stderr.startswith("samepage: error: ")
    finally:
        p.kill()
        p.wait()


def test_refuses_a_missing_pid_and_bad_options():
    with pytest.raises(MeasureError, match="no such process"):
        check_pids([2 ** 22 + 12345])
    r = CliRunner().invoke(app, ["kernel", "measure", "--pid", "1", "--set", "nope=1"])
    assert r.exit_code == 2 and 'unknown tunable "nope"' in r.stderr
    r = CliRunner().invoke(app, ["kernel", "measure", "--pid", "1", "--forecast", "/nonexistent.npz"])
    assert r.exit_code == 2 and "/nonexistent.npz: (file): file not found" in r.stderr


WORKER = ("import os, time\n"
          "buf = bytearray(open({path!r}, 'rb').read())\n"
          "time.sleep(600)\n")


@pytest.mark.kernel
@pytest.mark.skipif(not _ksm_writable(), reason="needs root and a writable /sys/kernel/mm/ksm")
def test_forecast_agrees_with_the_kernel(tmp_path):
    """Three merge_any workers holding the same 4 MiB: pages_sharing of the forecast and the
    kernel within 2% (or 50 pages) at every full scan, the same convergence scan; and the
    same pages_scanned: the capture holds every page ksmd scans, the copied-on-write pages
    of the interpreter's private file mappings (libpython's data) included."""
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(4 << 20))
    pids = []
    try:
        for _ in range(3):
            out = tmp_path / f"pid{len(pids)}"
            with open(out, "w") as f:
                subprocess.run([SAMEPAGE, "launch", "--merge-any", "--detach", "--", sys.executable,
                                "-c", WORKER.format(path=str(data))], stdout=f, check=True,
                               timeout=30)
            pids.append(int(out.read_text().split()[0]))
        time.sleep(3)
        args = [a for p in pids for a in ("--pid", str(p))]
        snap = tmp_path / "s.npz"
        r = subprocess.run([SAMEPAGE, "capture", *args, "-o", str(snap)], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        from samepage.capture import load_snapshot
        assert load_snapshot(snap).summary()["total"]["file_anon_pages"] > 0
        r = subprocess.run([SAMEPAGE, "kernel", "measure", *args, "--set", "pages_to_scan=1000",
                            "--set", "sleep_millisecs=100", "--until", "converged",
                            "--forecast", str(snap), "--json", "--wait", "900"],
                           capture_output=True, text=True, timeout=1200)
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        k, f = doc["kernel"], doc["forecast"]
        fs = {s["full_scans"]: s for s in f["scans"]}
        assert len(k["scans"]) >= 3
        for s in k["scans"][:5]:
            m = fs[s["full_scans"]]
            assert abs(s["pages_sharing"] - m["pages_sharing"]) <= \
                max(50, 0.02 * s["pages_sharing"]), (s, m)
            assert s["pages_scanned"] == m["pages_scanned"], (s, m)
        assert k["converged_full_scans"] == f["converged_full_scans"]
        assert k["final"]["pages_sharing"] >= 2 * 1024 - 50
    finally:
        for p in pids:
            try:
                os.kill(p, 9)
            except ProcessLookupError:
                pass
