"""/sys/kernel/mm/ksm: defaults, valid and invalid writes of every tunable (spec §8.2, §7).

Errnos are the kernel's: ``run`` and most stores answer EINVAL; ``max_page_sharing`` and
``merge_across_nodes`` answer EBUSY while KSM pages exist; read-only files refuse writes.
"""

from __future__ import annotations

import errno

import pytest

from invariants import check_invariants
from samepage import Machine
from samepage.ksm.sysfs import READ_ONLY, WRITABLE

DEFAULTS = {
    "run": 0,
    "pages_to_scan": 100,
    "sleep_millisecs": 20,
    "max_page_sharing": 256,
    "merge_across_nodes": 1,
    "use_zero_pages": 0,
    "smart_scan": 1,
    "stable_node_chains_prune_millisecs": 2000,
    "advisor_max_cpu": 70,
    "advisor_min_pages_to_scan": 500,
    "advisor_max_pages_to_scan": 30000,
    "advisor_target_scan_time": 200,
}


def errno_of(m: Machine, name: str, value) -> int:
    with pytest.raises(OSError) as ei:
        m.sysfs_write(name, value)
    return ei.value.errno


def merged_machine(n: int = 2) -> Machine:
    """A machine with one KSM page shared by ``n`` mappings (pages_shared == 1)."""
    m = Machine()
    p = m.spawn("p")
    r = p.mmap(n, name="r")
    p.write(r, range(n), 7)
    p.madvise(r, "mergeable")
    m.sysfs_write("pages_to_scan", 1000)
    m.sysfs_write("run", 1)
    m.run_full_scans(2)
    assert m.sysfs_read("pages_shared") == 1
    assert m.sysfs_read("pages_sharing") == n - 1
    check_invariants(m)
    return m


# --------------------------------------------------------------------------- defaults
@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_default_value(name):
    m = Machine()
    assert m.sysfs_read(name) == DEFAULTS[name]


def test_default_advisor_mode():
    assert Machine().sysfs_read("advisor_mode") == "[none] scan-time"


def test_every_writable_file_has_a_default_here():
    assert set(WRITABLE) == set(DEFAULTS) | {"advisor_mode"}


@pytest.mark.parametrize("name", READ_ONLY)
def test_read_only_counters_start_at_zero(name):
    assert Machine().sysfs_read(name) == 0


# --------------------------------------------------------------------------- valid writes
VALID = [
    ("run", 1, 1), ("run", 0, 0), ("run", 2, 2), ("run", "1\n", 1),
    ("pages_to_scan", 0, 0), ("pages_to_scan", 1, 1), ("pages_to_scan", 4096, 4096),
    ("pages_to_scan", "17\n", 17), ("pages_to_scan", 2**32 - 1, 2**32 - 1),
    ("sleep_millisecs", 0, 0), ("sleep_millisecs", 1000, 1000),
    ("max_page_sharing", 2, 2), ("max_page_sharing", 3, 3), ("max_page_sharing", 100000, 100000),
    ("max_page_sharing", 256, 256),
    ("merge_across_nodes", 0, 0), ("merge_across_nodes", 1, 1),
    ("use_zero_pages", 1, 1), ("use_zero_pages", 0, 0), ("use_zero_pages", "y", 1),
    ("use_zero_pages", "on", 1), ("use_zero_pages", "N", 0), ("use_zero_pages", True, 1),
    ("smart_scan", 0, 0), ("smart_scan", "off", 0), ("smart_scan", "1\n", 1),
    ("stable_node_chains_prune_millisecs", 0, 0),
    ("stable_node_chains_prune_millisecs", 5000, 5000),
    ("advisor_max_cpu", 0, 0), ("advisor_max_cpu", 100, 100), ("advisor_max_cpu", 1000, 1000),
    ("advisor_max_cpu", 2**32 + 5, 5),          # parsed as unsigned long, stored as uint
    ("max_page_sharing", "+7", 7), ("max_page_sharing", 2**31 - 1, 2**31 - 1),
    ("advisor_max_pages_to_scan", 2**64 - 1, 2**64 - 1),
    ("advisor_min_pages_to_scan", 1, 1), ("advisor_min_pages_to_scan", 1234, 1234),
    ("advisor_max_pages_to_scan", 50000, 50000),
    ("advisor_target_scan_time", 1, 1), ("advisor_target_scan_time", 60, 60),
]


@pytest.mark.parametrize("name,value,expected", VALID)
def test_valid_write(name, value, expected):
    m = Machine()
    m.sysfs_write(name, value)
    assert m.sysfs_read(name) == expected
    check_invariants(m)


def test_advisor_mode_valid_writes():
    m = Machine()
    m.sysfs_write("advisor_mode", "scan-time")
    assert m.sysfs_read("advisor_mode") == "none [scan-time]"
    m.sysfs_write("advisor_mode", "none\n")
    assert m.sysfs_read("advisor_mode") == "[none] scan-time"


# --------------------------------------------------------------------------- invalid writes
INVALID = [
    ("run", 3, errno.EINVAL), ("run", 4, errno.EINVAL), ("run", -1, errno.EINVAL),
    ("run", "abc", errno.EINVAL), ("run", "", errno.EINVAL),
    ("pages_to_scan", -1, errno.EINVAL), ("pages_to_scan", "x", errno.EINVAL),
    ("sleep_millisecs", "1.5", errno.EINVAL),
    ("max_page_sharing", 1, errno.EINVAL), ("max_page_sharing", 0, errno.EINVAL),
    ("max_page_sharing", -5, errno.EINVAL), ("max_page_sharing", "x", errno.EINVAL),
    ("merge_across_nodes", 2, errno.EINVAL),
    ("use_zero_pages", "maybe", errno.EINVAL), ("smart_scan", "2", errno.EINVAL),
    ("stable_node_chains_prune_millisecs", "-3", errno.EINVAL),
    ("advisor_target_scan_time", 0, errno.EINVAL),
    ("advisor_mode", "bogus", errno.EINVAL), ("advisor_mode", "", errno.EINVAL),
    ("advisor_mode", "scan_time", errno.EINVAL), ("advisor_mode", " none", errno.EINVAL),
    # kstrto*: no blanks, no base prefixes, at most one trailing newline
    ("pages_to_scan", " 5", errno.EINVAL), ("pages_to_scan", "5 ", errno.EINVAL),
    ("pages_to_scan", "0x10", errno.EINVAL), ("pages_to_scan", "5\n\n", errno.EINVAL),
    ("use_zero_pages", "", errno.EINVAL), ("use_zero_pages", "\n", errno.EINVAL),
    # overflow: kstrto* says ERANGE; every store maps it to EINVAL except
    # merge_across_nodes and max_page_sharing, which return the kstrto* error (§8.2)
    ("run", 2**32, errno.EINVAL), ("pages_to_scan", 2**32, errno.EINVAL),
    ("sleep_millisecs", 2**32, errno.EINVAL),
    ("stable_node_chains_prune_millisecs", 2**32, errno.EINVAL),
    ("max_page_sharing", 2**31, errno.ERANGE), ("max_page_sharing", -2**31 - 1, errno.ERANGE),
    ("merge_across_nodes", 2**64, errno.ERANGE),
    ("advisor_max_cpu", 2**64, errno.EINVAL), ("advisor_max_cpu", "x", errno.EINVAL),
    ("advisor_min_pages_to_scan", 2**64, errno.EINVAL),
    ("advisor_min_pages_to_scan", "-1", errno.EINVAL),
    ("advisor_max_pages_to_scan", 2**64, errno.EINVAL),
    ("advisor_max_pages_to_scan", "x", errno.EINVAL),
    ("advisor_target_scan_time", 2**64, errno.EINVAL),
    ("advisor_target_scan_time", "x", errno.EINVAL),
]


@pytest.mark.parametrize("name,value,err", INVALID)
def test_invalid_write(name, value, err):
    m = Machine()
    before = m.sysfs_read(name)
    assert errno_of(m, name, value) == err
    assert m.sysfs_read(name) == before        # a failed store changes nothing


def test_pages_to_scan_rejected_while_advisor_active():
    m = Machine()
    m.sysfs_write("advisor_mode", "scan-time")
    assert errno_of(m, "pages_to_scan", 100) == errno.EINVAL
    assert m.sysfs_read("pages_to_scan") == 500
    m.sysfs_write("advisor_mode", "none")
    m.sysfs_write("pages_to_scan", 42)
    assert m.sysfs_read("pages_to_scan") == 42


# --------------------------------------------------------------------------- EBUSY
def test_max_page_sharing_ebusy_while_pages_shared():
    m = merged_machine()
    assert errno_of(m, "max_page_sharing", 3) == errno.EBUSY
    assert m.sysfs_read("max_page_sharing") == 256
    assert m.sysfs_read("pages_shared") == 1          # nothing was unmerged
    check_invariants(m)


def test_max_page_sharing_same_value_succeeds_while_busy():
    m = merged_machine()
    m.sysfs_write("max_page_sharing", 256)
    assert m.sysfs_read("max_page_sharing") == 256
    assert m.sysfs_read("pages_shared") == 1


def test_max_page_sharing_einval_checked_before_ebusy():
    m = merged_machine()
    assert errno_of(m, "max_page_sharing", 1) == errno.EINVAL


def test_merge_across_nodes_ebusy_while_pages_shared():
    m = merged_machine()
    assert errno_of(m, "merge_across_nodes", 0) == errno.EBUSY
    assert m.sysfs_read("merge_across_nodes") == 1
    m.sysfs_write("merge_across_nodes", 1)             # unchanged value: no check
    assert errno_of(m, "merge_across_nodes", 2) == errno.EINVAL


def test_tunables_writable_again_after_run_2():
    m = merged_machine()
    m.sysfs_write("run", 2)
    assert m.sysfs_read("pages_shared") == 0
    m.sysfs_write("max_page_sharing", 3)
    m.sysfs_write("merge_across_nodes", 0)
    assert m.sysfs_read("max_page_sharing") == 3
    assert m.sysfs_read("merge_across_nodes") == 0
    check_invariants(m)


def test_max_page_sharing_ebusy_when_a_node_cannot_be_removed():
    """pages_shared == 0 but a stable node's page is still mapped (by a forked child that
    ksmd has not scanned yet): remove_all_stable_nodes() fails -> EBUSY (§8.2)."""
    m = Machine()
    a = m.spawn("a")
    b = m.spawn("b")
    ra = a.mmap(2, name="r")
    rb = b.mmap(1, name="r")
    a.write(ra, 0, 99)        # unique page, so the child's first visited page is not KSM
    a.write(ra, 1, 7)
    b.write(rb, 0, 7)
    a.madvise(ra, "mergeable")
    b.madvise(rb, "mergeable")
    m.sysfs_write("pages_to_scan", 1000)
    m.sysfs_write("run", 1)
    m.run_full_scans(2)
    assert (m.sysfs_read("pages_shared"), m.sysfs_read("pages_sharing")) == (1, 1)
    c = a.fork("c")
    a.munmap(ra)
    b.munmap(rb)
    m.sysfs_write("pages_to_scan", 1)
    m.run_batch()             # drops a and b (freeing their items), then visits c's page 0
    check_invariants(m)
    assert m.sysfs_read("pages_shared") == 0
    assert c.ksm_merging_pages == 0
    assert errno_of(m, "max_page_sharing", 3) == errno.EBUSY
    assert m.sysfs_read("max_page_sharing") == 256


# --------------------------------------------------------------------------- advisor defaults
def test_advisor_defaults_when_switching_modes():
    m = Machine()
    m.sysfs_write("pages_to_scan", 42)
    m.sysfs_write("advisor_min_pages_to_scan", 700)
    m.sysfs_write("advisor_mode", "scan-time")
    assert m.sysfs_read("pages_to_scan") == 700       # set_advisor_defaults
    m.sysfs_write("advisor_min_pages_to_scan", 800)
    m.sysfs_write("advisor_mode", "scan-time")         # same mode: nothing reset
    assert m.sysfs_read("pages_to_scan") == 700
    m.sysfs_write("advisor_mode", "none")
    assert m.sysfs_read("pages_to_scan") == 100        # back to DEFAULT_PAGES_TO_SCAN
    m.sysfs_write("pages_to_scan", 33)
    m.sysfs_write("advisor_mode", "none")              # same mode: nothing reset
    assert m.sysfs_read("pages_to_scan") == 33
    m.sysfs_write("advisor_mode", "scan-time")
    assert m.sysfs_read("pages_to_scan") == 800
    # the other advisor tunables are untouched by mode switches
    assert m.sysfs_read("advisor_max_cpu") == 70
    assert m.sysfs_read("advisor_target_scan_time") == 200
    assert m.sysfs_read("advisor_max_pages_to_scan") == 30000


def test_advisor_mode_bogus_keeps_mode():
    m = Machine()
    m.sysfs_write("advisor_mode", "scan-time")
    assert errno_of(m, "advisor_mode", "bogus") == errno.EINVAL
    assert m.sysfs_read("advisor_mode") == "none [scan-time]"


# --------------------------------------------------------------------------- read-only files
@pytest.mark.parametrize("name", READ_ONLY)
def test_read_only_file_refuses_writes(name):
    m = Machine()
    assert errno_of(m, name, 0) == errno.EACCES
    assert m.sysfs_read(name) == 0


def test_unknown_file():
    m = Machine()
    assert errno_of(m, "no_such_file", 1) == errno.ENOENT


# --------------------------------------------------------------------------- run semantics
def test_run_acts_only_on_change():
    m = merged_machine()
    calls = []
    orig = m.ksm.unmerge_and_remove_all_rmap_items

    def spy():
        calls.append(1)
        return orig()

    m.ksm.unmerge_and_remove_all_rmap_items = spy
    m.sysfs_write("run", 2)
    m.sysfs_write("run", 2)
    assert len(calls) == 1
    assert m.sysfs_read("run") == 2
    m.sysfs_write("run", 1)
    m.sysfs_write("run", 1)
    assert m.sysfs_read("run") == 1
    assert len(calls) == 1
    check_invariants(m)


def test_run_0_stops_ksmd_and_keeps_merged_pages():
    m = merged_machine()
    m.sysfs_write("run", 0)
    scanned = m.sysfs_read("pages_scanned")
    assert m.run_batch() is None
    assert m.sysfs_read("pages_scanned") == scanned
    assert m.sysfs_read("pages_shared") == 1
    check_invariants(m)
