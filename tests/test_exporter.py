"""samepage kernel exporter: scraped over loopback, names and types shared with node_exporter's
ksmd collector (collector/ksmd_linux.go), the samepage_* extras, per-process ksm_stat of a
process this test started (merge_any via samepage.capture.launch), a fake /proc and /sys tree,
the textfile (atomic), and that nothing is ever written to KSM."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from samepage.kernel.exporter import KsmCollector, KsmReader, make_registry, write_textfile

SAMEPAGE = str(Path(sys.executable).parent / "samepage")
KSM = Path("/sys/kernel/mm/ksm")

#: node_exporter's ksmd collector: metric name -> (type, HELP), for its 9 files.
NODE_KSMD = {
    "node_ksmd_full_scans": ("counter", "ksmd 'full_scans' file."),
    "node_ksmd_merge_across_nodes": ("gauge", "ksmd 'merge_across_nodes' file."),
    "node_ksmd_pages_shared": ("gauge", "ksmd 'pages_shared' file."),
    "node_ksmd_pages_sharing": ("gauge", "ksmd 'pages_sharing' file."),
    "node_ksmd_pages_to_scan": ("gauge", "ksmd 'pages_to_scan' file."),
    "node_ksmd_pages_unshared": ("gauge", "ksmd 'pages_unshared' file."),
    "node_ksmd_pages_volatile": ("gauge", "ksmd 'pages_volatile' file."),
    "node_ksmd_run": ("gauge", "ksmd 'run' file."),
    "node_ksmd_sleep_seconds": ("gauge", "ksmd 'sleep_millisecs' file."),
}

FAKE_KSM = {"full_scans": 7, "merge_across_nodes": 1, "pages_shared": 10, "pages_sharing": 90,
            "pages_to_scan": 100, "pages_unshared": 5, "pages_volatile": 3, "run": 1,
            "sleep_millisecs": 20, "general_profit": 360000, "ksm_zero_pages": 4,
            "pages_scanned": 12345, "pages_skipped": 67, "stable_node_chains": 1,
            "stable_node_dups": 2, "max_page_sharing": 256, "use_zero_pages": 0,
            "smart_scan": 1, "stable_node_chains_prune_millisecs": 2000,
            "advisor_mode": "none [scan-time]", "advisor_max_cpu": 70,
            "advisor_min_pages_to_scan": 500, "advisor_max_pages_to_scan": 30000,
            "advisor_target_scan_time": 200}


def fake_tree(root: Path, runtime_ns: int = 5_000_000_000) -> tuple[Path, Path]:
    sysfs, procfs = root / "sys", root / "proc"
    d = sysfs / "kernel/mm/ksm"
    d.mkdir(parents=True)
    for k, v in FAKE_KSM.items():
        (d / k).write_text(f"{v}\n")
    k = procfs / "42"
    k.mkdir(parents=True)
    (k / "comm").write_text("ksmd\n")
    (k / "stat").write_text("42 (ksmd) S 2 0 0 0 -1 0 0 0\n")
    (k / "schedstat").write_text(f"{runtime_ns} 100 7\n")
    for pid, comm, stat in ((1000, "qemu", "ksm_rmap_items 50\nksm_zero_pages 4\n"
                             "ksm_merging_pages 40\nksm_process_profit 160000\n"
                             "ksm_merge_any: yes\nksm_mergeable: yes\n"),
                            (1001, "idle", "ksm_rmap_items 0\nksm_zero_pages 0\n"
                             "ksm_merging_pages 0\nksm_process_profit 0\n"
                             "ksm_merge_any: no\nksm_mergeable: no\n")):
        p = procfs / str(pid)
        p.mkdir()
        (p / "comm").write_text(comm + "\n")
        (p / "ksm_stat").write_text(stat)
    return sysfs, procfs


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_fake_tree_every_metric(tmp_path):
    from prometheus_client import generate_latest

    sysfs, procfs = fake_tree(tmp_path)
    reader = KsmReader(str(sysfs), str(procfs))
    reg = make_registry(reader)
    time.sleep(0.25)
    (procfs / "42" / "schedstat").write_text("5100000000 100 9\n")  # +0.1 s of ksmd CPU
    fams = families(generate_latest(reg).decode())
    for name, (typ, help_) in NODE_KSMD.items():
        assert fams[name].type == typ and fams[name].documentation == help_
    val = lambda n, labels=None: next(s.value for s in fams[n].samples  # noqa: E731
                                      if labels is None or s.labels == labels)
    assert val("node_ksmd_full_scans") == 7
    assert val("node_ksmd_sleep_seconds") == pytest.approx(0.02)
    assert val("node_ksmd_pages_sharing") == 90
    assert val("samepage_ksm_general_profit_bytes") == 360000
    assert val("samepage_ksm_zero_pages") == 4
    assert val("samepage_ksm_pages_skipped") == 67 and fams["samepage_ksm_pages_skipped"].type == "counter"
    assert val("samepage_ksm_stable_node_chains") == 1
    assert val("samepage_ksm_stable_node_dups") == 2
    assert val("samepage_ksm_advisor_max_cpu_ratio") == pytest.approx(0.7)
    assert val("samepage_ksm_advisor_target_scan_time_seconds") == 200
    assert val("samepage_ksm_advisor_mode", {"mode": "scan-time"}) == 1
    assert val("samepage_ksm_advisor_mode", {"mode": "none"}) == 0
    assert val("samepage_ksmd_cpu_seconds") == pytest.approx(5.1)
    ratio = val("samepage_ksmd_cpu_ratio")
    assert 0 < ratio < 0.1 / 0.25 + 1e-9
    # per process: only processes using KSM by default, labelled pid and comm
    assert [s.labels for s in fams["samepage_process_ksm_merging_pages"].samples] == [
        {"pid": "1000", "comm": "qemu"}]
    assert val("samepage_process_ksm_profit_bytes") == 160000
    assert val("samepage_process_ksm_merge_any") == 1
    # --pid restricts (and includes an idle process asked for)
    fams = families(generate_latest(make_registry(KsmReader(str(sysfs), str(procfs),
                                                            [1001]))).decode())
    assert [s.labels["pid"] for s in fams["samepage_process_ksm_rmap_items"].samples] == ["1001"]


def test_textfile_is_written_atomically(tmp_path):
    sysfs, procfs = fake_tree(tmp_path / "t")
    out = tmp_path / "tf"
    out.mkdir()
    path = write_textfile(str(out), make_registry(KsmReader(str(sysfs), str(procfs))))
    assert path == str(out / "samepage_ksm.prom")
    assert os.listdir(out) == ["samepage_ksm.prom"]      # no temporary file left behind
    fams = families(Path(path).read_text())
    assert set(NODE_KSMD) <= set(fams)
    r = subprocess.run([SAMEPAGE, "kernel", "exporter", "--textfile", out, "--once",
                        "--no-node-names", "--path.sysfs", sysfs, "--path.procfs", procfs],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    fams = families((out / "samepage_ksm.prom").read_text())
    assert not any(n.startswith("node_ksmd") for n in fams)
    assert "samepage_ksm_general_profit_bytes" in fams


@pytest.mark.parametrize("args,msg", [
    (["--once"], "--once needs --textfile DIR"),
    (["--textfile", "/nonexistent-dir-xyz", "--once"], "not a directory"),
    (["--path.sysfs", "/nonexistent-sys", "--port", "0"], "no such directory"),
])
def test_bad_options_are_one_line(args, msg):
    r = subprocess.run([SAMEPAGE, "kernel", "exporter", *args], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and msg in r.stderr, r.stderr


@pytest.mark.skipif(not (KSM / "pages_sharing").exists() or not Path("/proc/self/ksm_stat").exists(),
                    reason="no KSM or no /proc/PID/ksm_stat on this kernel")
def test_scrape_live_over_loopback(tmp_path):
    """The real files, only read: the exporter runs as a subprocess, exports our own child
    (merge_any set by samepage.capture.launch) and is scraped on 127.0.0.1."""
    from samepage.capture.launch import start

    before = {k: (KSM / k).read_text() for k in ("run", "pages_to_scan", "sleep_millisecs",
                                                 "max_page_sharing", "advisor_mode")}
    child = start([sys.executable, "-c", "import time; b = bytearray(1 << 20); time.sleep(120)"])
    exp = None
    try:
        exp = subprocess.Popen([SAMEPAGE, "kernel", "exporter", "--port", "0", "--address",
                                "127.0.0.1", "--pid", str(child.pid)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        line = exp.stderr.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line)
        assert m, line
        url = f"http://127.0.0.1:{m.group(1)}/metrics"
        time.sleep(0.3)
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        fams = families(text)
        for name, (typ, help_) in NODE_KSMD.items():
            assert fams[name].type == typ and fams[name].documentation == help_, name
        live = int((KSM / "pages_to_scan").read_text())
        assert fams["node_ksmd_pages_to_scan"].samples[0].value == live
        assert fams["node_ksmd_sleep_seconds"].samples[0].value == pytest.approx(
            int((KSM / "sleep_millisecs").read_text()) / 1000)
        for n in ("samepage_ksm_general_profit_bytes", "samepage_ksm_zero_pages",
                  "samepage_ksm_pages_skipped", "samepage_ksm_stable_node_chains",
                  "samepage_ksm_stable_node_dups", "samepage_ksm_advisor_mode",
                  "samepage_ksm_advisor_max_cpu_ratio", "samepage_ksmd_cpu_seconds"):
            assert n in fams, n
        pids = {s.labels["pid"] for s in fams["samepage_process_ksm_merge_any"].samples}
        assert pids == {str(child.pid)}
        s = fams["samepage_process_ksm_merge_any"].samples[0]
        assert s.value == 1 and s.labels["comm"].startswith("python")
        text2 = urllib.request.urlopen(url, timeout=10).read().decode()
        assert "samepage_ksmd_cpu_ratio" in families(text2)
    finally:
        if exp is not None:
            exp.terminate()
            exp.wait(timeout=20)
            exp.stderr.close()
        child.kill()
        child.wait()
    after = {k: (KSM / k).read_text() for k in before}
    assert after == before


def test_collector_never_opens_for_writing(tmp_path, monkeypatch):
    import builtins

    sysfs, procfs = fake_tree(tmp_path)
    modes = []
    real_open = builtins.open

    def spy(file, mode="r", *a, **k):
        modes.append(mode)
        return real_open(file, mode, *a, **k)

    monkeypatch.setattr(builtins, "open", spy)
    list(KsmCollector(KsmReader(str(sysfs), str(procfs))).collect())
    assert modes and all(m in ("r", "rb") for m in modes)
