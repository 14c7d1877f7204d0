#!/usr/bin/env python3
"""A 64 GiB host in the model: the scan_rate workload at host scale (issue 10).

One process, ``--pages`` pages (default 16,777,216: 64 GiB of 4 KiB pages), page i holding
token (i % 1024) + 1 as in ``benchmarks/scan_rate.py``, smart_scan 0, pages_to_scan 16384
(``--pages-to-scan``), sleep_millisecs 0, run through 10 full scans: scan1 (checksums),
merge (the merging scan) and 8 steady scans (everything merged; the first done for real, the
others replayed by the fast-forward unless ``--no-fast-forward``).

Prints the wall time of each phase (fill, scan1, merge, steady), the peak RSS growth of the
process over the run (``ru_maxrss`` after minus before), bytes per simulated page (also at
the end of each phase: where the memory goes), and
whether the goals are met: peak RSS growth <= 2 GiB, total wall time <= 180 s, <= 128 bytes
per page, and the wall time spent in the cyclic garbage collector.  A progress line goes to
stderr.  ``--json`` prints one object instead.

The run is refused (exit 2) when MemAvailable is below the memory it is expected to need
(``--expect-bytes-per-page``, default 400, the model's figure before issue 10's compaction,
plus 1 GiB), unless ``--force``: the machine is shared.

    python benchmarks/host_scale.py [--pages N] [--pages-to-scan N] [--json]
        [--no-fast-forward] [--expect-bytes-per-page B] [--force]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time

from samepage import BUILD, INTERPRETER, Machine

GOAL_RSS = 2 << 30          # bytes of peak RSS growth
GOAL_WALL = 180.0           # seconds, fill and 10 full scans
GOAL_BYTES_PER_PAGE = 128   # struct page + rmap_item in the kernel
FULL_SCANS = 10             # scan1, merge, then steady scans
CHUNK_BATCHES = 64          # batches between progress lines inside a long scan


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


class Progress:
    """One progress line on stderr, rewritten in place when stderr is a terminal."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.t0 = time.perf_counter()

    def __call__(self, msg: str, final: bool = False) -> None:
        if self.quiet:
            return
        line = (f"[{time.perf_counter() - self.t0:7.1f} s, RSS {current_rss() / 2**20:7.0f} MiB]"
                f" {msg}")
        if self.tty:
            sys.stderr.write("\r\x1b[K" + line + ("\n" if final else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def scan(m: Machine, n_scans: int, progress: Progress, label: str, chunked: bool) -> None:
    """Run ``n_scans`` full scans, with a progress line every CHUNK_BATCHES batches
    (``chunked``) or once (so that whole quiescent scans can be fast-forwarded)."""
    ksm = m.ksm
    target = ksm.ksm_scan.seqnr + n_scans
    if not chunked:
        m.run_full_scans(n_scans)
    else:
        while ksm.ksm_scan.seqnr < target:
            if not m.run_full_scans(target - ksm.ksm_scan.seqnr, max_batches=CHUNK_BATCHES):
                break
            progress(f"{label}: {m.sysfs_read('pages_scanned'):,} pages scanned, "
                     f"{m.sysfs_read('pages_sharing'):,} sharing")
    progress(f"{label}: done, full_scans {m.sysfs_read('full_scans')}", final=True)


class GcTimer:
    """Wall time spent in the cyclic garbage collector (gc.callbacks), per generation."""

    def __init__(self):
        self.total = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self._t = 0.0
        # PyPy has no gc.callbacks: its collector's time is not measured (reported as 0)
        self.hooked = hasattr(gc, "callbacks")
        if self.hooked:
            gc.callbacks.append(self)

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            g = info["generation"]
            self.total[g] += time.perf_counter() - self._t
            self.count[g] += 1

    def close(self) -> None:
        if self.hooked:
            gc.callbacks.remove(self)


def run(n: int, pages_to_scan: int, fast_forward: bool, progress: Progress) -> dict:
    gc.collect()
    gct = GcTimer()
    base = peak_rss()
    base_cur = current_rss()
    phases: dict[str, float] = {}
    phase_bpp: dict[str, float] = {}     # peak RSS growth per page at the end of each phase
    t_all = time.perf_counter()

    t = time.perf_counter()
    m = Machine(thp="madvise", fast_forward=fast_forward)
    p = m.spawn("host")
    ram = p.mmap(n, name="ram", thp="nohuge")
    step = max(1, n // 16)

    def tokens():
        for i in range(n):
            if i % step == 0 and i:
                progress(f"fill: {i:,} of {n:,} pages")
            yield (i % 1024) + 1

    p.fill(ram, tokens())
    p.madvise(ram, "mergeable")
    for k, v in (("pages_to_scan", pages_to_scan), ("sleep_millisecs", 0), ("smart_scan", 0)):
        m.sysfs_write(k, v)
    m.sysfs_write("run", 1)
    phases["fill"] = time.perf_counter() - t
    phase_bpp["fill"] = round((peak_rss() - base) / n, 1)
    progress(f"fill: done, {n:,} pages", final=True)

    for label, k, chunked in (("scan1", 1, True), ("merge", 1, True),
                              ("steady", FULL_SCANS - 2, False)):
        t = time.perf_counter()
        scan(m, k, progress, label, chunked)
        phases[label] = time.perf_counter() - t
        phase_bpp[label] = round((peak_rss() - base) / n, 1)
    wall = time.perf_counter() - t_all
    gct.close()

    shared = m.sysfs_read("pages_sharing") + m.sysfs_read("pages_shared")
    full_scans = m.sysfs_read("full_scans")
    if shared != n or full_scans != FULL_SCANS:
        raise SystemExit(f"host_scale: unexpected state: {shared} pages merged of {n}, "
                         f"full_scans {full_scans}")
    growth = peak_rss() - base
    res = {
        "pages": n,
        "pages_to_scan": pages_to_scan,
        "build": BUILD,
        "interpreter": INTERPRETER,
        "fast_forward": fast_forward,
        "full_scans": full_scans,
        "phases_s": {k: round(v, 2) for k, v in phases.items()},
        "wall_s": round(wall, 2),
        "gc_s": round(sum(gct.total), 2),
        "gc_collections": gct.count,
        "peak_rss_growth": growth,
        "rss_growth_now": current_rss() - base_cur,
        "bytes_per_page": round(growth / n, 1),
        "bytes_per_page_by_phase": phase_bpp,
    }
    res["goals"] = {
        "rss_le_2GiB": growth <= GOAL_RSS,
        "wall_le_180s": wall <= GOAL_WALL,
        "bytes_per_page_le_128": growth / n <= GOAL_BYTES_PER_PAGE,
    }
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=16 << 20)
    ap.add_argument("--pages-to-scan", type=int, default=16384, metavar="N")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--no-fast-forward", action="store_true",
                    help="do every steady scan for real")
    ap.add_argument("--expect-bytes-per-page", type=float, default=400.0, metavar="B",
                    help="memory the run is expected to need, for the MemAvailable check")
    ap.add_argument("--force", action="store_true", help="skip the MemAvailable check")
    ap.add_argument("--quiet", action="store_true", help="no progress line")
    args = ap.parse_args()
    n = args.pages
    if n < 1024 or args.pages_to_scan < 1:
        print("host_scale: error: --pages must be >= 1024 and --pages-to-scan >= 1",
              file=sys.stderr)
        return 2
    need = int(n * args.expect_bytes_per_page) + (1 << 30)
    avail = mem_available()
    if not args.force and avail < need:
        print(f"host_scale: error: MemAvailable {avail / 2**30:.1f} GiB < "
              f"{need / 2**30:.1f} GiB expected for {n:,} pages (--force to run anyway)",
              file=sys.stderr)
        return 2
    res = run(n, args.pages_to_scan, not args.no_fast_forward, Progress(args.quiet))
    if args.json:
        print(json.dumps(res))
        return 0
    g = res["goals"]
    ok = lambda b: "met" if b else "NOT met"  # noqa: E731
    print(f"host scale: {n:,} pages ({n * 4096 / 2**30:.1f} GiB), {FULL_SCANS} full scans, "
          f"pages_to_scan {args.pages_to_scan}, {res['interpreter']} {res['build']}, "
          f"fast-forward {'on' if res['fast_forward'] else 'off'}")
    for k, v in res["phases_s"].items():
        print(f"  {k:7s} {v:9.2f} s   peak RSS growth after it: "
              f"{res['bytes_per_page_by_phase'][k]:6.1f} bytes a page")
    print(f"  total   {res['wall_s']:9.2f} s        goal <= {GOAL_WALL:.0f} s: "
          f"{ok(g['wall_le_180s'])}")
    if res["interpreter"].startswith("pypy"):
        print("  (PyPy: its garbage collector's time is not measured separately)")
    else:
        print(f"  (of which cyclic GC {res['gc_s']:.2f} s, collections per generation "
              f"{res['gc_collections']})")
    print(f"  peak RSS growth {res['peak_rss_growth'] / 2**20:9.0f} MiB  goal <= 2048 MiB: "
          f"{ok(g['rss_le_2GiB'])}")
    print(f"  bytes per page  {res['bytes_per_page']:9.1f}      goal <= "
          f"{GOAL_BYTES_PER_PAGE}: {ok(g['bytes_per_page_le_128'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
