"""benchmarks/host_scale.py: the scan_rate workload through 10 full scans at a given size."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "host_scale.py"


def run(tmp_path, *args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)


def test_host_scale_json(tmp_path):
    r = run(tmp_path, "--pages", "4096", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["pages"] == 4096 and out["full_scans"] == 10
    assert set(out["phases_s"]) == {"fill", "scan1", "merge", "steady"}
    assert out["wall_s"] >= sum(out["phases_s"].values()) - 0.05
    assert out["bytes_per_page"] == round(out["peak_rss_growth"] / 4096, 1)
    by_phase = out["bytes_per_page_by_phase"]
    assert list(by_phase) == ["fill", "scan1", "merge", "steady"]
    # a high-water mark: never falls, and ends at the run's figure
    assert all(a <= b for a, b in zip(list(by_phase.values()), list(by_phase.values())[1:]))
    assert by_phase["steady"] == out["bytes_per_page"]
    goals = out["goals"]
    assert goals["bytes_per_page_le_128"] == (out["bytes_per_page"] <= 128)
    assert goals["wall_le_180s"] is True and goals["rss_le_2GiB"] is True
    assert "fill: done" in r.stderr and "merge: done, full_scans 2" in r.stderr


def test_host_scale_table_and_refusals(tmp_path):
    r = run(tmp_path, "--pages", "2048", "--quiet", "--pages-to-scan", "1000")
    assert r.returncode == 0, r.stderr
    assert "2,048 pages" in r.stdout and "pages_to_scan 1000" in r.stdout
    assert "bytes per page" in r.stdout and r.stderr == ""
    # more than the machine has: refused before anything is allocated
    r = run(tmp_path, "--pages", "2048", "--expect-bytes-per-page", "1e15")
    assert r.returncode == 2 and "MemAvailable" in r.stderr and r.stdout == ""
    r = run(tmp_path, "--pages", "10")
    assert r.returncode == 2 and "--pages" in r.stderr
