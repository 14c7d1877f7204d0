#!/usr/bin/env python3
"""Scan rate of the REAL ksmd (live Linux KSM) on the workload of benchmarks/scan_rate.py.

Needs root and a kernel with KSM and THP. Writes benchmarks/kernel_figures.json, which
benchmarks/scan_rate.py prints next to the model's figures.

Workload (as scan_rate.py runs it on the model): one process (the harness's static C worker,
samepage.kernel.worker), one private anonymous region of 262,144 pages (1 GiB) at a 2 MiB
aligned address, page i holding token (i % 1024) + 1 (token t = 8-byte big-endian t repeated
512 times), MADV_MERGEABLE; KSM ``pages_to_scan`` 16384, ``sleep_millisecs`` 0,
``smart_scan`` 0, every other tunable at its kernel default. Phases (pages per second =
pages_scanned delta / wall time between ``full_scans`` increments):

  scan1   the first full scan (checksums only): from the ``run = 1`` write to full_scans 1
  merge   the second full scan (merging): full_scans 1 -> 2
  steady  full scans 3-5 (everything merged): full_scans 2 -> 5
  unique  every page rewritten with a unique token 2**40 + i, one full scan skipped, then
          the next two full scans (unstable tree of 262,144 unique pages, twice)

The workload runs twice per repetition: with the region as 4 KiB pages (MADV_NOHUGEPAGE,
"order0") and backed by 2 MiB THPs (``transparent_hugepage/enabled = madvise``,
hugepages-2048kB ``inherit``, the other mTHP sizes ``never``, MADV_HUGEPAGE; the backing is
checked before KSM starts: AnonHugePages of the region's VMA in /proc/PID/smaps must be the
whole GiB, and /proc/vmstat thp_fault_alloc must have grown by 512). Each repetition starts
from a fresh process and a ``run = 2`` reset; the JSON gets the median of the repetitions.

Timing the phase boundaries
---------------------------
With ``sleep_millisecs = 0`` ksmd does not sleep between batches (``ksm_scan_thread`` calls
``wait_event_freezable_timeout`` with a timeout of 0 jiffies, which returns at once); between
batches it only drops and retakes ``ksm_thread_mutex``, and it calls ``cond_resched()`` before
every page. It is a nice-5 kernel thread, so other load on its CPU slows it down: that is why
its CPU share is measured (below). The counters are plain globals, updated per page
(``pages_scanned``) and at the wrap (``full_scans``), so they can be read at any moment
without waiting for ksmd to pause. The benchmark samples
``full_scans``, ``pages_scanned`` and ksmd's ``/proc/PID/schedstat`` (CPU time) every ~1 ms,
from files kept open and re-read with ``pread`` (a few microseconds per sample), timestamped
with ``time.perf_counter()`` taken just before the ``full_scans`` read:

* the time of the k-th ``full_scans`` increment is the midpoint of the last sample still
  showing k-1 and the first showing k (uncertainty +-half the sampling interval, ~0.55 ms;
  the widest interval of every run is printed, relative to the phase length it is <0.5%);
* the start of scan1 is the ``run = 1`` write itself (ksmd waits for it in an untimed wait and
  the write wakes it at once), taken as the midpoint of the write syscall (microseconds);
* since the region is 16 x ``pages_to_scan`` pages, the batch that processes a scan's last
  page does not wrap; the *next* batch only wraps (``full_scans + 1``, no page) and the batch
  after it starts the next scan with ``lru_add_drain_all()``. So an increment marks the end
  of the scan's last page (plus one reschedule), and every scan's own start-up cost (drain,
  unstable-tree reset) is charged to that scan, as in the model;
* the pages of a phase are exactly (number of scans) x 262,144: with ``smart_scan = 0``
  every full scan processes every page, ``pages_scanned`` counts every processed page, and
  the increment of full scan k happens at ``pages_scanned = P0 + k * 262144`` (P0: its value
  at ``run = 1``). This is checked against the samples bracketing every boundary (and the
  counters are checked: all pages merged after the merge phase, ``pages_unshared`` = all
  pages after the unique phase);
* the rewrite is done with ksmd stopped (``run = 0`` written as soon as full_scans 5 is
  seen, so ksmd stops after at most one batch of scan 6; ``run = 1`` afterwards resumes the
  scan where it was). The rest of that interrupted scan 6 is not timed, scan 7 is the skipped
  scan (the pages scan 6 visited before the pause see their new content there), and
  unique = full_scans 7 -> 9: like the model's two timed scans, both insert all 262,144 pages
  into the unstable tree.

ksmd's CPU time per phase (``/proc/PID/schedstat`` field 1) is reported too: the wall-clock
rate is only the kernel's own speed if ksmd had the CPU (share ~100%); other load on the
machine shows up as a lower share. (The field is updated at scheduler ticks, 4 ms at HZ=250,
so a share can read a few percent above 100%.)

Safety: the machine-wide KSM lock (samepage.kernel.lock) is held for the whole run; every KSM
tunable and THP switch is saved first and restored on every exit path (normal, exception,
Ctrl-C, SIGTERM/SIGHUP; also kept in /run/lock/samepage-ksm.saved.json so a SIGKILLed run is
repaired by the next harness or benchmark run); ``run = 2`` before and after; ``run`` is left
as it was saved (0 on an idle machine); only the worker processes started here are killed.
It refuses to run if another process has mergeable memory (``run = 2`` would unmerge it).

    sudo .venv/bin/python benchmarks/kernel_scan_rate.py [--repeats 3] [--pages 262144]
        [--no-json] [--lock-timeout SECONDS]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path

from samepage.kernel import sysfs
from samepage.kernel.ksmd import find_ksmd_pid
from samepage.kernel.lock import KsmLockTimeout, ksm_lock
from samepage.kernel.runner import (
    clear_saved_state,
    foreign_ksm_users,
    load_saved_state,
    write_saved_state,
)
from samepage.kernel.worker import MADV_MERGEABLE, WINDOW_LO, WorkerSet, worker_executable

PHASES = ("scan1", "merge", "steady", "unique")
#: The reference figures given for the 4 KiB workload (scan_rate.py's KERNEL).
REFERENCE = {"scan1": 1.43e6, "merge": 331e3, "steady": 3.4e6, "unique": 159e3}
FIGURES = Path(__file__).with_name("kernel_figures.json")

PAGES_TO_SCAN = 16384
POLL = 0.001
#: Our tunables; every other writable tunable is set to its kernel default.
TUNABLES = {**{k: v for k, v in sysfs.DEFAULTS.items() if k != "run"},
            "pages_to_scan": PAGES_TO_SCAN, "sleep_millisecs": 0, "smart_scan": 0}


class Terminated(SystemExit):
    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


class BenchError(RuntimeError):
    pass


# --------------------------------------------------------------------------- helpers


def vmstat(*names: str) -> dict[str, int]:
    out = {}
    with open("/proc/vmstat") as f:
        for line in f:
            k, _, v = line.partition(" ")
            if k in names:
                out[k] = int(v)
    return out


def region_smaps(pid: int, addr: int) -> dict[str, int]:
    """The kB fields of the VMA starting at ``addr`` in /proc/PID/smaps."""
    out: dict[str, int] = {}
    inside = False
    head = f"{addr:x}-"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first = line.split(" ", 1)[0]
            if "-" in first and not first.endswith(":"):
                if inside:
                    break
                inside = first.startswith(head)
                continue
            if inside:
                parts = line.split()
                if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                    out[parts[0][:-1]] = int(parts[1])
    if not out:
        raise BenchError(f"no VMA at {addr:#x} in /proc/{pid}/smaps")
    return out


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


class Poller:
    """~1 ms samples of (t, full_scans, pages_scanned, ksmd CPU ns)."""

    def __init__(self, ksmd_pid: int) -> None:
        self.fds = [os.open(os.path.join(sysfs.KSM_DIR, "full_scans"), os.O_RDONLY | os.O_CLOEXEC),
                    os.open(os.path.join(sysfs.KSM_DIR, "pages_scanned"), os.O_RDONLY | os.O_CLOEXEC),
                    os.open(f"/proc/{ksmd_pid}/schedstat", os.O_RDONLY | os.O_CLOEXEC)]

    def sample(self) -> tuple[float, int, int, int]:
        fs_fd, ps_fd, ss_fd = self.fds
        t = time.perf_counter()
        fs = int(os.pread(fs_fd, 32, 0))
        ps = int(os.pread(ps_fd, 32, 0))
        rt = int(os.pread(ss_fd, 128, 0).split()[0])
        return (t, fs, ps, rt)

    def until(self, samples: list, target: int, timeout: float) -> None:
        """Append samples until full_scans >= target."""
        deadline = time.perf_counter() + timeout
        while True:
            s = self.sample()
            samples.append(s)
            if s[1] >= target:
                return
            if s[0] > deadline:
                raise BenchError(f"full_scans stayed at {s[1]} (waiting for {target}) for "
                                 f"{timeout:g} s")
            time.sleep(POLL)

    def wait_stopped(self, timeout: float = 10.0) -> int:
        """After run = 0: wait until pages_scanned and full_scans stop moving (ksmd finished
        its batch). Returns pages_scanned."""
        deadline = time.perf_counter() + timeout
        last = self.sample()
        quiet_since = last[0]
        while True:
            time.sleep(0.005)
            s = self.sample()
            if s[1:3] != last[1:3]:
                quiet_since = s[0]
            elif s[0] - quiet_since > 0.05:
                return s[2]
            if s[0] > deadline:
                raise BenchError("ksmd did not stop after run = 0")
            last = s

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)


def boundary(samples: list, k: int) -> tuple[float, float, int, int, float]:
    """(time, half-width, pages before, pages after, cpu ns) of the k-th full_scans increment."""
    for i, s in enumerate(samples):
        if s[1] >= k:
            break
    else:
        raise BenchError(f"full_scans {k} not seen")
    if i == 0:
        raise BenchError(f"full_scans was already {samples[0][1]} at the first sample (wanted "
                         f"the moment it reached {k})")
    a, b = samples[i - 1], s
    if b[1] > k:
        print(f"    warning: full_scans jumped {a[1]} -> {b[1]} between two samples",
              file=sys.stderr)
    return (a[0] + b[0]) / 2, (b[0] - a[0]) / 2, a[2], b[2], (a[3] + b[3]) / 2


def max_gap(samples: list) -> float:
    return max((b[0] - a[0] for a, b in zip(samples, samples[1:])), default=0.0)


# --------------------------------------------------------------------------- one run


def apply_settings(thp: bool) -> None:
    for name in sysfs.tunable_write_order(list(TUNABLES), TUNABLES["advisor_mode"]):
        if sysfs.exists(name) and sysfs.read_value(name) != TUNABLES[name]:
            sysfs.write_tunable(name, TUNABLES[name])
    for name, value in TUNABLES.items():
        if sysfs.exists(name) and sysfs.read_value(name) != value:
            raise BenchError(f"{name} reads {sysfs.read_value(name)!r} after writing {value!r}")
    enabled = os.path.join(sysfs.THP_DIR, "enabled")
    if sysfs.thp_enabled() != "madvise":
        sysfs.write_thp_file(enabled, "madvise")
    pmd_kb = sysfs.pmd_size_kb()
    for kb in sysfs.mthp_sizes():
        want = "inherit" if kb == pmd_kb else "never"
        if sysfs.read_mthp(kb) != want:
            sysfs.write_thp_file(os.path.join(sysfs.THP_DIR, f"hugepages-{kb}kB", "enabled"), want)


def run_once(exe: str, ksmd_pid: int, n: int, thp: bool) -> dict:
    """One run of the workload; returns pages/s per phase and diagnostics."""
    if n % PAGES_TO_SCAN:
        raise BenchError(f"--pages must be a multiple of {PAGES_TO_SCAN}")
    if sysfs.read_value("run") != 0:
        sysfs.write_tunable("run", 0)
    sysfs.write_tunable("run", 2)                # reset: full_scans 0, no rmap_items
    apply_settings(thp)
    sysfs.write_tunable("run", 0)
    if sysfs.read_value("full_scans") != 0:
        raise BenchError("full_scans is not 0 after run = 2")
    diag: dict = {}
    poller = Poller(ksmd_pid)
    vm_keys = ("thp_fault_alloc", "thp_fault_fallback", "thp_split_page", "thp_collapse_alloc",
               "thp_split_pmd")
    with WorkerSet(exe) as ws:
        try:
            w = ws.spawn("bench")
            vm0 = vmstat(*vm_keys)
            w.map_region("ram", WINDOW_LO, n, "huge" if thp else "nohuge")
            w.write_pages("ram", list(range(n)), [(i % 1024) + 1 for i in range(n)])
            vm1 = vmstat(*vm_keys)
            sm = region_smaps(w.pid, WINDOW_LO)
            huge_kb = sm.get("AnonHugePages", 0)
            diag["thp_fault_alloc"] = vm1["thp_fault_alloc"] - vm0["thp_fault_alloc"]
            diag["anon_huge_kb_start"] = huge_kb
            if sm.get("Rss") != n * 4:
                raise BenchError(f"region Rss {sm.get('Rss')} kB, expected {n * 4}")
            if thp:
                if huge_kb != n * 4 or diag["thp_fault_alloc"] < n // 512:
                    raise BenchError(
                        f"region not fully THP-backed: AnonHugePages {huge_kb} kB of {n * 4}, "
                        f"thp_fault_alloc +{diag['thp_fault_alloc']}")
            elif huge_kb != 0:
                raise BenchError(f"4 KiB run but AnonHugePages = {huge_kb} kB")
            w.madvise("ram", None, MADV_MERGEABLE)

            # ---- scan1, merge, steady
            p0 = int(sysfs.read_value("pages_scanned"))
            time.sleep(0.02)
            if int(sysfs.read_value("pages_scanned")) != p0:
                raise BenchError("pages_scanned moves while run = 0")
            seg_a: list = [poller.sample()]
            t_w0 = time.perf_counter()
            sysfs.write_tunable("run", 1)
            t_w1 = time.perf_counter()
            poller.until(seg_a, 5, timeout=300)
            sysfs.write_tunable("run", 0)
            poller.wait_stopped()
            c_mid = sysfs.read_counters()
            sm = region_smaps(w.pid, WINDOW_LO)
            diag["anon_huge_kb_after_merge"] = sm.get("AnonHugePages", 0)
            diag["merged_after_steady"] = c_mid["pages_shared"] + c_mid["pages_sharing"]
            diag["counters_after_steady"] = c_mid
            vm2 = vmstat(*vm_keys)

            # ---- rewrite (ksmd stopped), then unique
            t_r = time.perf_counter()
            w.write_pages("ram", list(range(n)), [(1 << 40) + i for i in range(n)])
            diag["rewrite_s"] = time.perf_counter() - t_r
            seg_b: list = [poller.sample()]
            fs_pause = seg_b[0][1]
            if fs_pause != 5:
                raise BenchError(f"full_scans {fs_pause} at the pause, expected 5")
            sysfs.write_tunable("run", 1)
            poller.until(seg_b, 9, timeout=600)
            sysfs.write_tunable("run", 0)
            poller.wait_stopped()
            c_end = sysfs.read_counters()
            vm3 = vmstat(*vm_keys)
            sm = region_smaps(w.pid, WINDOW_LO)
            diag["anon_huge_kb_end"] = sm.get("AnonHugePages", 0)
            diag["counters_end"] = c_end
        finally:
            poller.close()
    sysfs.write_tunable("run", 2)

    # ---- figures
    t_start = (t_w0 + t_w1) / 2
    bounds = {k: boundary(seg_a, k) for k in (1, 2, 5)}
    bounds.update({k: boundary(seg_b, k) for k in (7, 9)})
    for k, (_, _, before, after, _) in bounds.items():
        expect = p0 + k * n
        if not before <= expect <= after:
            raise BenchError(f"full_scans {k}: pages_scanned {before - p0}..{after - p0} around "
                             f"the increment, expected {k * n}")
    cpu0 = seg_a[0][3]
    spans = {"scan1": ((t_start, 0.0, 0, 0, cpu0), bounds[1], 1),
             "merge": (bounds[1], bounds[2], 1),
             "steady": (bounds[2], bounds[5], 3),
             "unique": (bounds[7], bounds[9], 2)}
    res: dict = {"rates": {}, "wall_s": {}, "cpu_share": {}, "cpu_rates": {}, "uncert": {}}
    for ph, (a, b, scans) in spans.items():
        dt = b[0] - a[0]
        cpu = (b[4] - a[4]) / 1e9
        res["rates"][ph] = scans * n / dt
        res["wall_s"][ph] = dt
        res["cpu_share"][ph] = cpu / dt
        res["cpu_rates"][ph] = scans * n / cpu if cpu > 0 else float("nan")
        res["uncert"][ph] = (a[1] + b[1]) / dt
    res["max_gap_ms"] = 1000 * max(max_gap(seg_a), max_gap(seg_b))
    res["thp_split_page"] = vm3["thp_split_page"] - vm1["thp_split_page"]
    res["thp_split_merge_phase"] = vm2["thp_split_page"] - vm1["thp_split_page"]
    res["thp_collapse_alloc"] = vm3["thp_collapse_alloc"] - vm1["thp_collapse_alloc"]
    res.update(diag)
    # the model's assertions
    if diag["merged_after_steady"] != n:
        res.setdefault("notes", []).append(
            f"after steady: pages_shared + pages_sharing = {diag['merged_after_steady']} != {n}")
    if c_end["pages_unshared"] != n:
        res.setdefault("notes", []).append(f"at the end: pages_unshared = "
                                           f"{c_end['pages_unshared']} != {n}")
    return res


# --------------------------------------------------------------------------- main


def fmt(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.2f} M"
    return f"{v / 1e3:.0f} k"


def print_run(label: str, r: dict) -> None:
    parts = [f"{ph} {fmt(r['rates'][ph])} ({r['wall_s'][ph] * 1000:.0f} ms, "
             f"ksmd {100 * r['cpu_share'][ph]:.0f}% CPU)" for ph in PHASES]
    print(f"  {label}: " + ", ".join(parts))
    extra = (f"    timing uncertainty <= {100 * max(r['uncert'].values()):.2f}%, longest sample "
             f"gap {r['max_gap_ms']:.1f} ms; rewrite {r['rewrite_s']:.2f} s; merged after "
             f"steady {r['merged_after_steady']}; AnonHugePages start/after merge/end "
             f"{r['anon_huge_kb_start']}/{r['anon_huge_kb_after_merge']}/{r['anon_huge_kb_end']} kB; "
             f"thp_fault_alloc +{r['thp_fault_alloc']}, thp_split_page +{r['thp_split_page']} "
             f"(+{r['thp_split_merge_phase']} by the end of steady), thp_collapse_alloc "
             f"+{r['thp_collapse_alloc']}")
    print(extra)
    for note in r.get("notes", []):
        print(f"    NOTE: {note}")
    sys.stdout.flush()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=262_144)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-json", action="store_true", help=f"do not write {FIGURES.name}")
    ap.add_argument("--figures", type=Path, default=FIGURES, metavar="FILE.json",
                    help=f"write the figures there instead of {FIGURES.name} "
                         "(benchmarks/scan_rate.py --against-kernel)")
    ap.add_argument("--lock-timeout", type=float, default=1800.0,
                    help="seconds to wait for the KSM lock (default 1800)")
    args = ap.parse_args()
    n = args.pages
    if not sysfs.ksm_writable():
        print("needs root and a kernel with KSM (/sys/kernel/mm/ksm/run not writable)",
              file=sys.stderr)
        return 2
    exe = worker_executable()
    ksmd_pid = find_ksmd_pid()

    def on_signal(signum, frame):
        raise Terminated(signum)

    old_term = signal.signal(signal.SIGTERM, on_signal)
    old_hup = signal.signal(signal.SIGHUP, on_signal)
    results: dict[str, list[dict]] = {"order0": [], "thp": []}
    try:
        print(f"waiting for the KSM lock (up to {args.lock_timeout:g} s)...", flush=True)
        with ksm_lock(args.lock_timeout):
            stale = load_saved_state()
            if stale is not None:
                errs = (sysfs.restore_settings(stale.get("ksm", {}))
                        + sysfs.restore_thp(stale.get("thp", {})))
                print("restored the settings a killed earlier run left behind"
                      + (f" (errors: {'; '.join(errs)})" if errs else ""))
                if errs:
                    raise BenchError("could not repair the settings of a killed run")
                clear_saved_state()
            deadline = time.monotonic() + 3
            while True:
                foreign = foreign_ksm_users({os.getpid()})
                if not foreign or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            if foreign:
                raise BenchError("other processes have mergeable memory (run = 2 would unmerge "
                                 "them, ksmd would scan them): " + ", ".join(foreign))
            saved = sysfs.save_settings()
            saved_thp = sysfs.save_thp()
            write_saved_state(saved, saved_thp)
            errors: list[str] = []
            try:
                for rep in range(args.repeats):
                    for mode in ("order0", "thp"):
                        r = run_once(exe, ksmd_pid, n, thp=(mode == "thp"))
                        results[mode].append(r)
                        print_run(f"run {rep + 1} {'4K ' if mode == 'order0' else 'THP'}", r)
            finally:
                old_mask = signal.pthread_sigmask(
                    signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
                try:
                    try:
                        sysfs.write_tunable("run", 0)
                    except OSError as e:
                        errors.append(f"run: {e}")
                    try:
                        sysfs.write_tunable("run", 2)
                    except OSError as e:
                        errors.append(f"run: {e}")
                    errors += sysfs.restore_settings(saved)
                    errors += sysfs.restore_thp(saved_thp)
                    if not errors:
                        clear_saved_state()
                    else:
                        print("could not restore KSM/THP settings: " + "; ".join(errors),
                              file=sys.stderr)
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    except KsmLockTimeout as e:
        print(e, file=sys.stderr)
        return 3
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Terminated as e:
        print(f"terminated by signal {e.signum}; KSM/THP settings restored, worker killed",
              file=sys.stderr)
        raise
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGHUP, old_hup)
    if errors:
        return 1

    med = {m: {ph: statistics.median(r["rates"][ph] for r in rs) for ph in PHASES}
           for m, rs in results.items()}
    print(f"\nreal ksmd scan rate, {n} pages, median of {args.repeats} (min-max), pages/s")
    print(f"  {'phase':7s} {'4K pages/s':>24s} {'THP pages/s':>24s} {'reference 4K':>13s} "
          f"{'4K/ref':>7s}")
    for ph in PHASES:
        cols = []
        for m in ("order0", "thp"):
            vals = [r["rates"][ph] for r in results[m]]
            cols.append(f"{med[m][ph]:>10,.0f} ({fmt(min(vals))}-{fmt(max(vals))})")
        print(f"  {ph:7s} {cols[0]:>24s} {cols[1]:>24s} {REFERENCE[ph]:>13,.0f} "
              f"{med['order0'][ph] / REFERENCE[ph]:>6.2f}x")
    print("  ksmd CPU share per phase (min, all runs): " + ", ".join(
        f"{ph} {100 * min(r['cpu_share'][ph] for rs in results.values() for r in rs):.0f}%"
        for ph in PHASES))
    measured = (f"{datetime.date.today().isoformat()}, kernel {os.uname().release}, "
                f"{cpu_model()}")
    print(f"  measured: {measured}")
    if not args.no_json:
        out = {"measured": measured,
               "order0": {ph: round(med["order0"][ph]) for ph in PHASES},
               "thp": {ph: round(med["thp"][ph]) for ph in PHASES}}
        args.figures.write_text(json.dumps(out, indent=2) + "\n")
        print(f"  wrote {args.figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
