"""The live state of KSM on this machine, for an operator (``samepage kernel status/top``).

Only reads: /sys/kernel/mm/ksm/*, /proc/PID/ksm_stat and comm, /proc/PID/smaps_rollup
(AnonHugePages of the processes with mergeable memory), /proc/vmstat, /proc/meminfo,
/sys/kernel/mm/transparent_hugepage/*, and ksmd's /proc/PID/schedstat. It needs no root and
no lock: whatever cannot be read (another user's /proc/PID/ksm_stat without root, a file
this kernel does not have) is listed in ``Snapshot.unreadable`` instead.

:func:`take_snapshot` reads everything once; :func:`analyse` turns two snapshots taken an
interval apart into the numbers an operator wants (memory saved, net profit, scan rate,
full-scan period, ksmd's CPU share, whether THP is fighting KSM).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from .sysfs import KSM_DIR, THP_DIR, parse_ksm_stat, parse_value

PROC = "/proc"
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
#: sizeof(struct ksm_rmap_item) on 64-bit kernels: the per-page cost in general_profit.
RMAP_ITEM_SIZE = 64

#: Every file of /sys/kernel/mm/ksm that is a tunable, with what it means.
TUNABLE_MEANINGS: dict[str, str] = {
    "run": "0: ksmd stopped (merged pages stay merged); 1: ksmd scans and merges; "
           "2: ksmd stopped after unmerging every KSM page",
    "pages_to_scan": "pages ksmd looks at in one batch, before it sleeps",
    "sleep_millisecs": "how long ksmd sleeps between batches (ms)",
    "max_page_sharing": "most mappings of one KSM page; more identical pages get another "
                        "KSM page (a dup of a stable node chain)",
    "merge_across_nodes": "1: pages of different NUMA nodes may merge; 0: one stable tree "
                          "per node",
    "use_zero_pages": "1: zero-filled pages are mapped to the kernel's zero page instead of "
                      "a KSM page",
    "smart_scan": "1: pages that keep failing to merge are skipped on more and more visits",
    "stable_node_chains_prune_millisecs": "how often ksmd drops stale dups from stable node "
                                          "chains (ms)",
    "advisor_mode": "none: pages_to_scan is fixed; scan-time: the advisor sets pages_to_scan "
                    "to finish a full scan in advisor_target_scan_time",
    "advisor_max_cpu": "scan-time advisor: most % of one CPU ksmd may use",
    "advisor_min_pages_to_scan": "scan-time advisor: lower bound of pages_to_scan",
    "advisor_max_pages_to_scan": "scan-time advisor: upper bound of pages_to_scan",
    "advisor_target_scan_time": "scan-time advisor: target seconds per full scan",
}

#: Every counter of /sys/kernel/mm/ksm, with what it means.
COUNTER_MEANINGS: dict[str, str] = {
    "pages_shared": "KSM pages in use: the one physical copy behind merged pages",
    "pages_sharing": "further mappings of those KSM pages: the pages saved",
    "pages_unshared": "unique pages KSM keeps checking (in the unstable tree)",
    "pages_volatile": "pages that change too fast to be merged",
    "ksm_zero_pages": "zero-filled pages now mapping the kernel's zero page (use_zero_pages)",
    "general_profit": "bytes saved minus KSM's own metadata (one rmap_item per tracked page)",
    "full_scans": "times ksmd has gone through all mergeable memory",
    "pages_scanned": "pages ksmd has looked at (since boot)",
    "pages_skipped": "pages smart scan skipped (since boot)",
    "stable_node_chains": "contents with more than max_page_sharing mappings (chains)",
    "stable_node_dups": "KSM pages in those chains",
}

#: /proc/vmstat counters worth watching next to KSM.
VMSTAT_KEYS = ("thp_split_page", "thp_split_page_failed", "thp_split_pmd",
               "thp_deferred_split_page", "thp_fault_alloc", "thp_collapse_alloc", "cow_ksm",
               "ksm_swpin_copy")
THP_SPLIT_KEYS = ("thp_split_page", "thp_split_pmd")


@dataclass
class ProcessKsm:
    """One process's /proc/PID/ksm_stat (and its AnonHugePages, if readable)."""

    pid: int
    comm: str
    stat: dict[str, Any]
    anon_huge_kb: int | None = None

    @property
    def profit(self) -> int:
        return int(self.stat.get("ksm_process_profit", 0))

    @property
    def uses_ksm(self) -> bool:
        s = self.stat
        return bool(s.get("ksm_mergeable") or s.get("ksm_merge_any")
                    or s.get("ksm_rmap_items", 0) or s.get("ksm_merging_pages", 0)
                    or s.get("ksm_zero_pages", 0))


@dataclass
class Snapshot:
    """Everything read at one moment (``t``: time.monotonic())."""

    t: float
    ksm: dict[str, int | str] = field(default_factory=dict)
    vmstat: dict[str, int] = field(default_factory=dict)
    ksmd_pid: int | None = None
    ksmd_runtime_ns: int | None = None
    processes: list[ProcessKsm] = field(default_factory=list)
    procs_seen: int = 0
    procs_unreadable: int = 0
    thp_enabled: str | None = None
    thp_defrag: str | None = None
    anon_huge_kb: int | None = None          # AnonHugePages of /proc/meminfo (all processes)
    unreadable: list[str] = field(default_factory=list)
    release: str = field(default_factory=lambda: os.uname().release)

    def get(self, name: str, default: int = 0) -> int:
        v = self.ksm.get(name, default)
        return v if isinstance(v, int) else default


def _read(path: str) -> str:
    """Read a text file (the one place that touches the file system: tests replace it)."""
    with open(path) as f:
        return f.read()


def _why(e: OSError) -> str:
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, FileNotFoundError):
        return "not on this kernel"
    return e.strerror or str(e)


def _read_ksm(snap: Snapshot) -> None:
    try:
        names = sorted(os.listdir(KSM_DIR))
    except OSError as e:
        snap.unreadable.append(f"{KSM_DIR}: {_why(e)} (no KSM in this kernel?)")
        return
    for name in names:
        try:
            snap.ksm[name] = parse_value(name, _read(os.path.join(KSM_DIR, name)).strip())
        except OSError as e:
            snap.unreadable.append(f"{KSM_DIR}/{name}: {_why(e)}")
        except ValueError:
            snap.ksm[name] = _read(os.path.join(KSM_DIR, name)).strip()


def _read_vmstat(snap: Snapshot) -> None:
    try:
        for line in _read(f"{PROC}/vmstat").splitlines():
            k, _, v = line.partition(" ")
            if k in VMSTAT_KEYS:
                snap.vmstat[k] = int(v)
    except (OSError, ValueError) as e:
        snap.unreadable.append(f"{PROC}/vmstat: {_why(e) if isinstance(e, OSError) else e}")
    try:
        for line in _read(f"{PROC}/meminfo").splitlines():
            if line.startswith("AnonHugePages:"):
                snap.anon_huge_kb = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        snap.unreadable.append(f"{PROC}/meminfo")


def _read_thp(snap: Snapshot) -> None:
    for name in ("enabled", "defrag"):
        try:
            value = parse_value("advisor_mode", _read(os.path.join(THP_DIR, name)).strip())
        except OSError as e:
            if name == "enabled":
                snap.unreadable.append(f"{THP_DIR}/{name}: {_why(e)}")
            continue
        setattr(snap, f"thp_{name}", value)


def find_ksmd() -> int | None:
    try:
        from .ksmd import find_ksmd_pid

        return find_ksmd_pid()
    except Exception:  # noqa: BLE001 - no ksmd: reported as unreadable
        return None


def _read_ksmd(snap: Snapshot, ksmd_pid: int | None) -> None:
    pid = ksmd_pid if ksmd_pid is not None else find_ksmd()
    snap.ksmd_pid = pid
    if pid is None:
        snap.unreadable.append("ksmd: no such kernel thread")
        return
    try:
        snap.ksmd_runtime_ns = int(_read(f"{PROC}/{pid}/schedstat").split()[0])
    except (OSError, ValueError, IndexError) as e:
        why = _why(e) if isinstance(e, OSError) else "unexpected format"
        snap.unreadable.append(f"{PROC}/{pid}/schedstat (ksmd's CPU time): {why}")


def _anon_huge_kb(pid: int) -> int | None:
    try:
        for line in _read(f"{PROC}/{pid}/smaps_rollup").splitlines():
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return 0


def _read_processes(snap: Snapshot) -> None:
    try:
        pids = [int(n) for n in os.listdir(PROC) if n.isdigit()]
    except OSError as e:
        snap.unreadable.append(f"{PROC}: {_why(e)}")
        return
    smaps_denied = 0
    for pid in sorted(pids):
        try:
            text = _read(f"{PROC}/{pid}/ksm_stat")
        except FileNotFoundError:
            continue                     # gone meanwhile (or a kernel without ksm_stat)
        except OSError:
            snap.procs_seen += 1
            snap.procs_unreadable += 1
            continue
        snap.procs_seen += 1
        p = ProcessKsm(pid, "?", parse_ksm_stat(text))
        if not p.uses_ksm:
            continue
        try:
            p.comm = _read(f"{PROC}/{pid}/comm").strip()
        except OSError:
            pass
        p.anon_huge_kb = _anon_huge_kb(pid)
        if p.anon_huge_kb is None:
            smaps_denied += 1
        snap.processes.append(p)
    if snap.procs_unreadable:
        snap.unreadable.append(
            f"/proc/PID/ksm_stat of {snap.procs_unreadable} of {snap.procs_seen} processes: "
            "permission denied" + (" (only root can read other users' processes)"
                                   if os.geteuid() != 0 else ""))
    if smaps_denied:
        snap.unreadable.append(f"/proc/PID/smaps_rollup (AnonHugePages) of {smaps_denied} "
                               "process(es) with mergeable memory")
    snap.processes.sort(key=lambda p: (-p.profit, p.pid))


def take_snapshot(ksmd_pid: int | None = None) -> Snapshot:
    """Read everything readable once."""
    snap = Snapshot(t=time.monotonic())
    _read_ksmd(snap, ksmd_pid)
    _read_ksm(snap)
    _read_vmstat(snap)
    _read_thp(snap)
    _read_processes(snap)
    if snap.ksmd_pid is not None and snap.ksmd_runtime_ns is not None:
        # the runtime read first and the counters after: read the runtime once more, so the
        # CPU share covers the same span as the counters
        try:
            snap.ksmd_runtime_ns = int(_read(f"{PROC}/{snap.ksmd_pid}/schedstat").split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return snap


# --------------------------------------------------------------------------- analysis


@dataclass
class Analysis:
    """What a snapshot (and the interval before it) means."""

    snap: Snapshot
    interval_s: float | None
    saved_bytes: int
    rmap_items: int
    metadata_bytes: int
    profit_bytes: int
    tracked: dict[str, int]                  # shared/sharing/unshared/volatile
    scanned_per_s: float | None = None
    skipped_per_s: float | None = None
    full_scans_done: int | None = None
    full_scan_period_s: float | None = None
    full_scan_period_estimated: bool = False
    ksmd_cpu_pct: float | None = None
    vmstat_delta: dict[str, int] = field(default_factory=dict)
    thp_fight: list[str] = field(default_factory=list)       # reasons THP works against KSM
    thp_notes: list[str] = field(default_factory=list)       # neutral THP facts
    anon_huge_mergeable_kb: int | None = None
    advice: list[str] = field(default_factory=list)


def analyse(snap: Snapshot, before: Snapshot | None = None) -> Analysis:
    g = snap.get
    sharing, zero = g("pages_sharing"), g("ksm_zero_pages")
    saved = (sharing + zero) * PAGE_SIZE
    profit = g("general_profit")
    # general_profit = (pages_sharing + ksm_zero_pages) * PAGE_SIZE - rmap_items * 64
    rmap_items = max(0, (saved - profit) // RMAP_ITEM_SIZE) if "general_profit" in snap.ksm else 0
    tracked = {k: g(f"pages_{k}") for k in ("shared", "sharing", "unshared", "volatile")}
    a = Analysis(snap, None, saved, rmap_items, rmap_items * RMAP_ITEM_SIZE, profit, tracked)

    if before is not None and snap.t > before.t:
        dt = snap.t - before.t
        a.interval_s = dt
        d = lambda k: g(k) - before.get(k)  # noqa: E731
        a.scanned_per_s = d("pages_scanned") / dt
        a.skipped_per_s = d("pages_skipped") / dt
        a.full_scans_done = d("full_scans")
        visits = a.scanned_per_s + a.skipped_per_s
        if a.full_scans_done >= 1:
            a.full_scan_period_s = dt / a.full_scans_done
        elif visits > 0 and rmap_items > 0:
            # one full scan visits about every tracked page once
            a.full_scan_period_s = rmap_items / visits
            a.full_scan_period_estimated = True
        if snap.ksmd_runtime_ns is not None and before.ksmd_runtime_ns is not None:
            a.ksmd_cpu_pct = 100 * (snap.ksmd_runtime_ns - before.ksmd_runtime_ns) / 1e9 / dt
        a.vmstat_delta = {k: snap.vmstat[k] - before.vmstat[k]
                          for k in snap.vmstat if k in before.vmstat}

    # ---- THP against KSM
    mode = snap.thp_enabled
    if mode is not None:
        a.thp_notes.append(f"transparent_hugepage/enabled = {mode}"
                           + {"always": " (every large enough anonymous region may get huge "
                                        "pages)",
                              "madvise": " (only MADV_HUGEPAGE regions get huge pages)",
                              "never": " (no huge pages)"}.get(mode, ""))
    mergeable = [p for p in snap.processes if p.stat.get("ksm_mergeable")
                 or p.stat.get("ksm_merge_any")]
    kbs = [p.anon_huge_kb for p in mergeable if p.anon_huge_kb is not None]
    if kbs:
        a.anon_huge_mergeable_kb = sum(kbs)
    if a.anon_huge_mergeable_kb:
        a.thp_fight.append(
            f"processes with mergeable memory hold {a.anon_huge_mergeable_kb / 1024:.1f} MiB of "
            "huge pages (AnonHugePages): KSM must split a THP before it can merge its pages, "
            "and khugepaged may collapse merged pages back")
    if mode == "always" and mergeable:
        a.thp_fight.append("THP is enabled = always while processes have mergeable memory: "
                           "their pages may be backed by huge pages that KSM has to split")
    splits = sum(a.vmstat_delta.get(k, 0) for k in THP_SPLIT_KEYS)
    if splits and a.scanned_per_s:
        a.thp_fight.append(f"{splits} THP splits during the interval while ksmd was scanning "
                           f"({', '.join(f'{k} +{a.vmstat_delta[k]}' for k in THP_SPLIT_KEYS if a.vmstat_delta.get(k))})")
    elif splits:
        a.thp_notes.append(f"{splits} THP splits during the interval (ksmd was not scanning)")

    # ---- plain advice
    run = snap.ksm.get("run")
    total = sum(tracked.values())
    if run == 1 and total == 0 and not snap.processes and not snap.procs_unreadable:
        a.advice.append("no process has mergeable memory: ksmd has nothing to scan "
                        "(madvise(MADV_MERGEABLE) or prctl(PR_SET_MEMORY_MERGE) opts memory in)")
    if tracked["sharing"] and tracked["unshared"] > 10 * tracked["sharing"]:
        a.advice.append("pages_unshared is much larger than pages_sharing: most scanned memory "
                        "is unique, KSM spends CPU for little gain")
    if total and tracked["volatile"] > total / 2:
        a.advice.append("more than half of the tracked pages are volatile: they change faster "
                        "than ksmd comes back to them")
    if profit < 0:
        a.advice.append("general_profit is negative: KSM's metadata costs more memory than it "
                        "saves")
    return a
