#!/usr/bin/env python3
"""ksmd scan rate of the model on the reference workload (issue: the KSM engine).

One process, 262,144 pages, page i holding token (i % 1024) + 1, pages_to_scan 16384,
sleep_millisecs 0, smart_scan 0.  Prints pages per second (wall clock of the model) for:
  scan1   the first full scan (checksums only)
  merge   the second full scan (merging)
  steady  the next ``--steady-scans`` full scans (default 100; everything merged): the
          first is done for real and proves the state quiescent, the others are replayed
          by the fast-forward (samepage.ksm.fastforward; ``--no-fast-forward`` does them
          all for real)
  unique  after rewriting every page with a unique token: the two full scans that insert
          262,144 unique pages into the unstable tree
and the peak memory per simulated page (growth of the process's peak RSS over the run,
divided by the number of pages).  The real ksmd's figures are those of
``benchmarks/kernel_figures.json`` (measured by ``benchmarks/kernel_scan_rate.py``; a
kernel does every scan, so its steady rate is the same over 3 or 100 scans), or, with
``--against-kernel``, measured now by running kernel_scan_rate.py (root, takes the KSM lock,
a few minutes) on the same number of pages; the ratios model/kernel are printed.

``--thp`` also runs the same workload with the region backed by 2 MiB THPs (MADV_HUGEPAGE
under thp=madvise) and prints both side by side.

``--json`` prints one object: scan1, merge, steady, unique, bytes_per_page (and thp), the
interpreter and build, the 11 counters after each phase (``counters``), and, when kernel
figures were measured with --against-kernel, ``kernel`` and ``ratios``.

Run it on PyPy (``make pypy`` sets up ``.venv-pypy``) to measure the same sources on a
JIT: ``.venv-pypy/bin/python benchmarks/scan_rate.py`` (``make bench-pypy``).
``--warmup PAGES`` first runs the whole workload once on PAGES pages in the same process and
discards it, so that a JIT has compiled the model's paths before the timed run (PyPy spends
the first second or so of a process tracing and compiling; a long forecast pays that once).
The default, 0, gives the cold figures; the JSON says which (``warmup_pages``,
``warmup_s``).

    python benchmarks/scan_rate.py [--pages N] [--steady-scans N] [--thp] [--json]
        [--against-kernel [--kernel-repeats N]] [--no-fast-forward] [--warmup PAGES]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from samepage import BUILD, INTERPRETER, Machine

KERNEL = {"scan1": 1.43e6, "merge": 331e3, "steady": 3.4e6, "unique": 159e3}


def rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed_scans(m: Machine, n: int) -> tuple[float, int]:
    before = m.ksm.ksm_pages_scanned
    t = time.perf_counter()
    m.run_full_scans(n)
    dt = time.perf_counter() - t
    return dt, m.ksm.ksm_pages_scanned - before


def run_workload(n: int, thp: bool, steady_scans: int = 100, fast_forward: bool = True) -> dict:
    gc.collect()
    base = rss_bytes()
    m = Machine(thp="madvise", fast_forward=fast_forward)
    p = m.spawn("bench")
    ram = p.mmap(n, name="ram", thp="huge" if thp else "nohuge")
    p.fill(ram, ((i % 1024) + 1 for i in range(n)))
    p.madvise(ram, "mergeable")
    for k, v in (("pages_to_scan", 16384), ("sleep_millisecs", 0), ("smart_scan", 0)):
        m.sysfs_write(k, v)
    m.sysfs_write("run", 1)
    res = {}
    counters = {}          # the 11 counters after each phase: equal on every interpreter
    dt, pages = timed_scans(m, 1)
    res["scan1"] = pages / dt
    counters["scan1"] = m.counters()
    dt, pages = timed_scans(m, 1)
    res["merge"] = pages / dt
    counters["merge"] = m.counters()
    assert m.sysfs_read("pages_sharing") + m.sysfs_read("pages_shared") == n, m.counters()
    dt, pages = timed_scans(m, steady_scans)
    res["steady"] = pages / dt
    counters["steady"] = m.counters()
    p.fill(ram, ((1 << 40) + i for i in range(n)))
    m.run_full_scans(1)            # unmerge on visit, checksums recorded
    dt, pages = timed_scans(m, 2)  # unstable tree of n unique pages, twice
    res["unique"] = pages / dt
    counters["unique"] = m.counters()
    assert m.sysfs_read("pages_unshared") == n, m.counters()
    res["bytes_per_page"] = (rss_bytes() - base) / n
    if thp:
        res["thp_splits"] = m.mem.vmstat["thp_split_page"]
    res["counters"] = counters
    return res


PHASES = ("scan1", "merge", "steady", "unique")


def kernel_figures() -> dict:
    path = Path(__file__).with_name("kernel_figures.json")
    if path.exists():
        return json.loads(path.read_text())
    return {"order0": KERNEL}


def measure_kernel(n: int, repeats: int) -> dict | None:
    """Run kernel_scan_rate.py now (its output goes to stderr); its figures, or None."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "kernel.json"
        script = Path(__file__).with_name("kernel_scan_rate.py")
        r = subprocess.run([sys.executable, str(script), "--pages", str(n), "--repeats",
                            str(repeats), "--figures", str(out)],
                           stdout=sys.stderr, stderr=sys.stderr)
        if r.returncode != 0 or not out.exists():
            print(f"kernel_scan_rate.py failed (exit status {r.returncode}): no ratios",
                  file=sys.stderr)
            return None
        return json.loads(out.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--pages", type=int, default=262_144)
    ap.add_argument("--steady-scans", type=int, default=100, metavar="N",
                    help="full scans in the steady phase (default 100)")
    ap.add_argument("--thp", action="store_true", help="also run the workload on 2 MiB THPs")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--against-kernel", action="store_true",
                    help="also measure the real ksmd now (kernel_scan_rate.py: root, the "
                         "KSM lock) and print the ratios")
    ap.add_argument("--kernel-repeats", type=int, default=1, metavar="N")
    ap.add_argument("--no-fast-forward", action="store_true",
                    help="do every scan for real (samepage.ksm.fastforward off)")
    ap.add_argument("--warmup", type=int, default=0, metavar="PAGES",
                    help="first run the workload once on PAGES pages, untimed (a JIT's "
                         "warm-up); default 0: cold figures")
    args = ap.parse_args()
    n = args.pages
    ff = not args.no_fast_forward
    if args.warmup < 0 or 0 < args.warmup < 1024:
        print("scan_rate: error: --warmup must be 0 or >= 1024 pages", file=sys.stderr)
        return 2
    warmup_s = 0.0
    if args.warmup:
        t = time.perf_counter()
        run_workload(args.warmup, False, 3, ff)
        warmup_s = time.perf_counter() - t
    res = run_workload(n, False, args.steady_scans, ff)
    thp = run_workload(n, True, args.steady_scans, ff) if args.thp else None
    measured = measure_kernel(n, args.kernel_repeats) if args.against_kernel else None
    kf = measured or kernel_figures()
    k0 = kf.get("order0", KERNEL)
    kt = kf.get("thp")
    ratios = {k: round(res[k] / k0[k], 2) for k in PHASES}
    if args.json:
        out = {k: round(v, 1) for k, v in res.items() if k != "counters"}
        out["interpreter"] = INTERPRETER
        out["build"] = BUILD
        out["warmup_pages"] = args.warmup
        out["warmup_s"] = round(warmup_s, 2)
        out["counters"] = res["counters"]
        if thp is not None:
            out["thp"] = {k: round(v, 1) for k, v in thp.items() if k != "counters"}
        if measured is not None:
            out["kernel"] = measured
            out["ratios"] = ratios
            if thp is not None and kt:
                out["thp_ratios"] = {k: round(thp[k] / kt[k], 2) for k in PHASES}
        print(json.dumps(out))
        return 0
    src = "measured now" if measured else "benchmarks/kernel_figures.json"
    print(f"model scan rate ({INTERPRETER}, {BUILD}), {n} pages, steady over "
          f"{args.steady_scans} full scans (fast-forward {'on' if ff else 'off'}); pages/s, "
          f"real ksmd ({src}), ratio")
    print("  " + (f"after an untimed warm-up run on {args.warmup:,} pages ({warmup_s:.1f} s)"
                  if args.warmup else "cold: no warm-up run (--warmup PAGES for one)"))
    for k in PHASES:
        print(f"  {k:7s} {res[k]:>14,.0f}   kernel {k0[k]:>12,.0f}   {res[k] / k0[k]:7.2f}x")
    print(f"  peak memory per simulated page: {res['bytes_per_page']:.0f} bytes")
    if kf.get("measured"):
        print(f"  kernel figures: {kf['measured']}")
    if thp is not None:
        print(f"\nsame workload on 2 MiB THPs ({thp['thp_splits']} THPs split by KSM)")
        print(f"  {'':7s} {'model 4K':>14s} {'model THP':>14s} {'kernel 4K':>12s} "
              f"{'kernel THP':>12s}")
        for k in PHASES:
            kt_v = f"{kt[k]:>12,.0f}" if kt else f"{'n/a':>12s}"
            print(f"  {k:7s} {res[k]:>14,.0f} {thp[k]:>14,.0f} {k0[k]:>12,.0f} {kt_v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
