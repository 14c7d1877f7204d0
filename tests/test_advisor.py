"""The scan-time advisor (spec §7, mm/ksm.c scan_time_advisor): its integer arithmetic,
worked by hand, and its effect between full scans."""

from __future__ import annotations

from samepage import Machine


def _advised_machine() -> Machine:
    m = Machine()
    m.sysfs_write("advisor_mode", "scan-time")
    return m


def test_switching_to_scan_time_sets_the_initial_pages_to_scan():
    m = _advised_machine()
    assert m.sysfs_read("pages_to_scan") == 500          # advisor_min_pages_to_scan
    m.sysfs_write("advisor_mode", "none")
    assert m.sysfs_read("pages_to_scan") == 100


def test_first_advice_worked_by_hand():
    """10 s scan, 2 s of ksmd CPU (20 %), fresh context: the EWMA starts from 0, so
    pages = 500*100/2000 * 30/100 = 7, raised to the CPU floor 500/20*10 = 250."""
    m = _advised_machine()
    ksm = m.ksm
    ksm._batch_cpu_start = 0
    ksm.cpu_ns = 0
    ksm.advisor_ctx = {"start_scan": 0, "scan_time": 0, "change": 0, "cpu_time": 0}
    ksm.clock_ns = 10_000_000_000
    ksm.cpu_ns = 2_000_000_000.0
    ksm._batch_cpu_start = ksm.cpu_ns                  # no CPU used in the current batch
    ksm.scan_time_advisor()
    assert ksm.ksm_thread_pages_to_scan == 250
    assert ksm.advisor_ctx == {"start_scan": 0, "scan_time": 10, "change": 30,
                               "cpu_time": 2_000_000_000}


def test_second_advice_uses_the_ewma_and_the_cpu_cap():
    """Next scan: 4 s long, 3.6 s more CPU (90 %): change = 4*100/10 = 40, ewma = (70*30 +
    30*40)/100 = 33; pages = 250*100/5000 * 33/100 = 1; per_page_cost = 250/90 = 2, so the
    floor 2*10 = 20 wins."""
    m = _advised_machine()
    ksm = m.ksm
    ksm.ksm_thread_pages_to_scan = 250
    ksm.advisor_ctx = {"start_scan": 10_000_000_000, "scan_time": 10, "change": 30,
                       "cpu_time": 2_000_000_000}
    ksm.clock_ns = 14_000_000_000
    ksm.cpu_ns = 5_600_000_000.0
    ksm._batch_cpu_start = ksm.cpu_ns
    ksm.scan_time_advisor()
    assert ksm.advisor_ctx["change"] == 33
    assert ksm.ksm_thread_pages_to_scan == 20


def test_advisor_changes_pages_to_scan_between_full_scans_within_its_bounds():
    m = _advised_machine()
    p = m.spawn("p")
    ram = p.mmap(4000, name="ram")
    p.fill(ram, ((i % 50) + 1 for i in range(4000)))
    p.madvise(ram, "mergeable")
    m.sysfs_write("sleep_millisecs", 1000)
    m.sysfs_write("run", 1)
    seen = set()
    for _ in range(6):
        m.run_full_scans(1)
        pts = m.sysfs_read("pages_to_scan")
        seen.add(pts)
        assert 1 <= pts <= m.sysfs_read("advisor_max_pages_to_scan")
    assert len(seen) > 1 or 500 not in seen       # the advisor acted
    assert m.sysfs_read("pages_sharing") + m.sysfs_read("pages_shared") == 4000
