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

``--thp`` also runs the same workload with the region backed by 2 MiB THPs (MADV_HUGEPAGE
under thp=madvise) and prints both side by side, with the kernel's figures for both from
``benchmarks/kernel_figures.json`` when present (``benchmarks/kernel_scan_rate.py`` measures
them on a live kernel).

    python benchmarks/scan_rate.py [--pages N] [--thp] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from pathlib import Path

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


def run_workload(n: int, thp: bool) -> dict:
    gc.collect()
    base = rss_bytes()
    m = Machine(thp="madvise")
    p = m.spawn("bench")
    ram = p.mmap(n, name="ram", thp="huge" if thp else "nohuge")
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
    if thp:
        res["thp_splits"] = m.mem.vmstat["thp_split_page"]
    return res


def kernel_figures() -> dict:
    path = Path(__file__).with_name("kernel_figures.json")
    if path.exists():
        return json.loads(path.read_text())
    return {"order0": KERNEL}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=262_144)
    ap.add_argument("--thp", action="store_true", help="also run the workload on 2 MiB THPs")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    n = args.pages
    res = run_workload(n, thp=False)
    thp = run_workload(n, thp=True) if args.thp else None
    if args.json:
        out = {k: round(v, 1) for k, v in res.items()}
        if thp is not None:
            out["thp"] = {k: round(v, 1) for k, v in thp.items()}
        print(json.dumps(out))
        return 0
    kf = kernel_figures()
    k0 = kf.get("order0", KERNEL)
    print(f"model scan rate, {n} pages (pages/s; the issue's reference kernel figures; ratio)")
    for k in ("scan1", "merge", "steady", "unique"):
        print(f"  {k:7s} {res[k]:>12,.0f}   kernel {KERNEL[k]:>12,.0f}   "
              f"{res[k] / KERNEL[k]:6.2f}x")
    print(f"  peak memory per simulated page: {res['bytes_per_page']:.0f} bytes")
    if thp is not None:
        kt = kf.get("thp")
        print(f"\nsame workload on 2 MiB THPs ({thp['thp_splits']} THPs split by KSM)")
        print(f"  {'':7s} {'model 4K':>12s} {'model THP':>12s} {'kernel 4K':>12s} "
              f"{'kernel THP':>12s}   (kernel: measured here, benchmarks/kernel_scan_rate.py)")
        for k in ("scan1", "merge", "steady", "unique"):
            kt_v = f"{kt[k]:>12,.0f}" if kt else f"{'n/a':>12s}"
            print(f"  {k:7s} {res[k]:>12,.0f} {thp[k]:>12,.0f} {k0[k]:>12,.0f} {kt_v}")
        if kf.get("measured"):
            print(f"  kernel figures: {kf['measured']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
