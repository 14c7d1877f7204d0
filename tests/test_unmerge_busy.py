"""A KSM page left where run = 2 does not walk (docs/kernel-findings.md, "run = 2 can leave a
KSM page mapped"): a merge_any parent's COW-shared folio becomes a KSM page in place while a
forked child has turned merging off.  After run = 2 pages_shared is 0, yet the stable node
stays (its page is mapped), so max_page_sharing cannot be changed (EBUSY) until the child
exits.  The model predicts it; the live kernel does it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from samepage import Machine
from samepage.kernel import sysfs
from samepage.kernel.lock import ksm_lock
from samepage.kernel.runner import foreign_ksm_users

# the experiment's parent: a fresh interpreter with merge_any, two identical pages, a child
# that turns merging off and one that keeps it; prints the children's pids, then sleeps
PARENT = r"""
import ctypes, mmap, os, time
libc = ctypes.CDLL(None, use_errno=True)
def merge(v):
    if libc.prctl(67, v, 0, 0, 0) != 0:            # PR_SET_MEMORY_MERGE
        raise OSError(ctypes.get_errno(), "prctl")
def child(disable):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            if disable:
                merge(0)
            os.write(w, b"x")
            time.sleep(60)
        finally:
            os._exit(0)
    os.read(r, 1)
    return pid
merge(1)
buf = mmap.mmap(-1, 2 * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
buf[:] = b"\x5a" * 8192
c, d = child(True), child(False)
print(c, d, flush=True)
time.sleep(60)
"""


def _write(name: str, value: int) -> int:
    """0, or the errno of the write (as a shell's echo would see it)."""
    try:
        with open(f"/sys/kernel/mm/ksm/{name}", "w") as f:
            f.write(str(value))
        return 0
    except OSError as e:
        return e.errno


def child_opted_out(sanitize: bool = False):
    """The model side of PARENT, merged: (machine, parent, child that turned merging off,
    child that kept it); the parent's two pages are KSM pages, one of them shared with c."""
    m = Machine(sanitize=sanitize)
    a = m.spawn("a")
    a.prctl_set_memory_merge(True)
    r = a.mmap(2, name="ram")
    a.write(r, range(2), 5)
    m.sysfs_write("pages_to_scan", 1)
    m.sysfs_write("run", 1)
    m.run_batch()                              # a's pages checksummed once
    c = a.fork("c")
    c.prctl_set_memory_merge(False)
    d = a.fork("d")
    m.run_full_scans(2)
    return m, a, c, d


def test_model_keeps_the_busy_node_and_refuses_max_page_sharing():
    m, _, c, _ = child_opted_out()
    m.sysfs_write("run", 2)
    assert m.counters()["pages_shared"] == 0
    with pytest.raises(OSError) as e:
        m.sysfs_write("max_page_sharing", 300)
    assert e.value.errno == 16                          # EBUSY
    c.exit()
    m.sysfs_write("max_page_sharing", 300)             # the page is gone: accepted


@pytest.mark.kernel
@pytest.mark.skipif(os.geteuid() != 0 or not sysfs.ksm_writable(),
                    reason="needs root and a writable /sys/kernel/mm/ksm")
def test_live_kernel_refuses_max_page_sharing_after_run2():
    pids: list[int] = []
    with ksm_lock(timeout=300):
        saved = sysfs.save_settings()
        exp = None
        try:
            if foreign_ksm_users(set()):
                pytest.skip("other processes use KSM: run = 2 would unmerge them")
            sysfs.write_tunable("run", 2)
            sysfs.write_tunable("run", 0)
            sysfs.write_tunable("pages_to_scan", 100)
            sysfs.write_tunable("sleep_millisecs", 20)
            exp = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE)
            pids = [exp.pid] + [int(x) for x in exp.stdout.readline().split()]
            sysfs.write_tunable("run", 1)
            t0 = time.monotonic()
            while time.monotonic() - t0 < 30 and sysfs.read_counters()["full_scans"] < 3:
                time.sleep(0.1)
            assert sysfs.read_counters()["pages_shared"] > 0
            sysfs.write_tunable("run", 2)
            assert sysfs.read_counters()["pages_shared"] == 0
            assert _write("max_page_sharing", 300) == 16              # EBUSY
            for p in pids:
                os.kill(p, signal.SIGKILL)
            exp.wait()
            pids = []
            deadline = time.monotonic() + 5
            while _write("max_page_sharing", 300) and time.monotonic() < deadline:
                time.sleep(0.1)                # the children are reaped by init
            assert sysfs.read_value("max_page_sharing") == 300
        finally:
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
            if exp is not None:
                exp.wait()
            assert sysfs.restore_settings(saved) == []
            sysfs.write_tunable("run", 0)
