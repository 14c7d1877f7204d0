#!/usr/bin/env python3
"""ksmd scan rate of the model on the reference workload (issue: the KSM engine).

One process, 262,144 pages, page i holding token (i % 1024) + 1, pages_to_scan 16384,
sleep_millisecs 0, smart_scan 0.  Prints pages per second (wall clock of the model) for:
  scan1   the first full scan (checksums only)
  merge   the second full scan (merging)
  steady  full scans 3-5 (everything merged)
  unique  after rewriting every page with a unique token: the two full scans that insert
          262,144 unique pages into the unstable tree
and the peak memory per simulated page (growth of the process's peak RSS over the run,
divided by the number of pages).  The real ksmd on the reference machine (Linux 6.18)
does 1.43 M, 331 k, 3.4 M and 159 k pages/s on the same workload.

    python benchmarks/scan_rate.py [--pages N] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time

from samepage import Machine

KERNEL = {"scan1": 1.43e6, "merge": 331e3, "steady": 3.4e6, "unique": 159e3}


def rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed_scans(m: Machine, n: int) -> tuple[float, int]:
    before = m.ksm.ksm_pages_scanned
    t = time.perf_counter()
    m.run_full_scans(n)
    dt = time.perf_counter() - t
    return dt, m.ksm.ksm_pages_scanned - before


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=262_144)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    n = args.pages
    gc.collect()
    base = rss_bytes()
    m = Machine()
    p = m.spawn("bench")
    ram = p.mmap(n, name="ram")
    p.fill(ram, ((i % 1024) + 1 for i in range(n)))
    p.madvise(ram, "mergeable")
    for k, v in (("pages_to_scan", 16384), ("sleep_millisecs", 0), ("smart_scan", 0)):
        m.sysfs_write(k, v)
    m.sysfs_write("run", 1)
    res = {}
    dt, pages = timed_scans(m, 1)
    res["scan1"] = pages / dt
    dt, pages = timed_scans(m, 1)
    res["merge"] = pages / dt
    assert m.sysfs_read("pages_sharing") + m.sysfs_read("pages_shared") == n, m.counters()
    dt, pages = timed_scans(m, 3)
    res["steady"] = pages / dt
    p.fill(ram, ((1 << 40) + i for i in range(n)))
    m.run_full_scans(1)            # unmerge on visit, checksums recorded
    dt, pages = timed_scans(m, 2)  # unstable tree of n unique pages, twice
    res["unique"] = pages / dt
    assert m.sysfs_read("pages_unshared") == n, m.counters()
    res["bytes_per_page"] = (rss_bytes() - base) / n
    if args.json:
        print(json.dumps({k: round(v, 1) for k, v in res.items()}))
        return 0
    print(f"model scan rate, {n} pages (pages/s; kernel on the reference machine; ratio)")
    for k in ("scan1", "merge", "steady", "unique"):
        print(f"  {k:7s} {res[k]:>12,.0f}   kernel {KERNEL[k]:>12,.0f}   "
              f"{res[k] / KERNEL[k]:6.2f}x")
    print(f"  peak memory per simulated page: {res['bytes_per_page']:.0f} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
