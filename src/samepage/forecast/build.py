"""The model machine of a snapshot (samepage.capture): the captured processes, their anonymous
VMAs (and private file-backed VMAs with anonymous pages) at their addresses (scan order is address order), present pages by token, holes left
unfaulted, THP backing, mergeable flags, and the volatile pages as rewrite sets.

What KSM sees, and how the snapshot maps onto it:

* a private file-backed VMA (flag 128) is built as the others, in address order: its
  captured pages are its anonymous (COW'd) folios, which ksmd scans; the rest of it is holes.
  Approximate: ksmd's walk over the VMA's present page-cache pages (folio_walk_start finds a
  non-anon folio and skips it) is priced like a walk over a hole;
* a page mapping the shared zero page (page flag 1) is skipped by ksmd's scan
  (``folio_walk_start`` without FW_ZEROPAGE), exactly as a hole: it stays unfaulted;
* a swapped-out page is not scanned either (no present PTE): a hole too;
* a VMA marked ``mg`` (VM_MERGEABLE) gets MADV_MERGEABLE; a process with ``merge_any`` (or
  all, with ``merge_any_all``) gets prctl(PR_SET_MEMORY_MERGE) before its first mapping;
* processes join KSM's mm list in pid order (the order ``samepage launch`` started them);
* ``vma_thp_kb`` of AnonHugePages is replayed as that many 2 MiB PMD-mapped folios, on the
  first fully present, 2 MiB-aligned blocks of the VMA (a THP is always wholly present);
  ``thp_always`` backs every such block (as transparent_hugepage/enabled = always would);
* a page that changed in c of the ``samples - 1`` later looks of a K-sample capture taken
  ``interval_s`` apart is rewritten with fresh contents every ``(samples - 1) interval_s / c``
  seconds; pages of one VMA with the same c form one rewrite set, written at that rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from samepage.capture.procfs import PAGE_ZERO_PFN
from samepage.capture.snapshot import Snapshot
from samepage.machine import Machine, Process
from samepage.mm.content import PAGE_SHIFT
from samepage.scenario.dynamics import Dynamics, RewriteSet

HPAGE_PAGES = 512
VMA_FLAGS_UNKNOWN = 64


class ForecastError(ValueError):
    """The snapshot or the settings cannot be forecast (one line for the CLI)."""


@dataclass
class BuiltProcess:
    name: str               # the model process's name: "comm[pid]"
    pid: int
    comm: str
    process: Process
    present_pages: int      # pages faulted in the model (what KSM may scan)
    mergeable_pages: int    # of which in VM_MERGEABLE VMAs
    volatile_pages: int


@dataclass
class Built:
    machine: Machine
    dynamics: Dynamics
    processes: list[BuiltProcess] = field(default_factory=list)
    tunables: dict = field(default_factory=dict)
    thp_pages: int = 0

    @property
    def mergeable_pages(self) -> int:
        return sum(p.mergeable_pages for p in self.processes)


def _name(comm: str, pid: int, used: set[str]) -> str:
    base = f"{comm or 'process'}[{pid}]"
    name, k = base, 1
    while name in used:
        k += 1
        name = f"{base}#{k}"
    used.add(name)
    return name


def _huge_blocks(vma, present: np.ndarray, want: int) -> list[int]:
    """Offsets of up to ``want`` fully present, 2 MiB-aligned blocks of ``vma``."""
    if want <= 0:
        return []
    dense = np.zeros(vma.pages, bool)
    dense[present] = True
    first = (-(vma.start >> PAGE_SHIFT)) % HPAGE_PAGES
    out = []
    for b in range(first, vma.pages - HPAGE_PAGES + 1, HPAGE_PAGES):
        if dense[b:b + HPAGE_PAGES].all():
            out.append(b)
            if len(out) == want:
                break
    return out


def build_machine(snap: Snapshot, *, tunables: dict | None = None, merge_any_all: bool = False,
                  thp_always: bool = False, costs=None, volatile: bool = True,
                  fast_forward: bool | None = None) -> Built:
    """The model machine of ``snap``, with ``tunables`` written to its /sys/kernel/mm/ksm and
    ``run = 1`` (ksmd not run yet). Raises ForecastError for a write the kernel would refuse
    or a snapshot with nothing KSM could scan."""
    m = Machine(costs=costs, thp="never", fast_forward=fast_forward)
    tunables = dict(tunables or {})
    for k, v in tunables.items():
        if k == "run":
            raise ForecastError("--set run: the forecast sets run itself")
        try:
            m.sysfs_write(k, v)
        except KeyError:
            raise ForecastError(f"--set {k}: unknown tunable") from None
        except (OSError, ValueError) as e:
            raise ForecastError(f"--set {k}={v}: refused: {getattr(e, 'strerror', None) or e}") from None
    dyn = Dynamics(m)
    built = Built(m, dyn, tunables=tunables)
    period_s = (snap.meta.samples - 1) * snap.meta.interval_s
    used: set[str] = set()
    order = sorted(snap.processes, key=lambda p: (p.pid == 0, p.pid, p.index))
    mem = m.mem
    pending_madvise = []
    for sp in order:
        merge_any = bool(sp.merge_any) or merge_any_all
        name = _name(sp.comm, sp.pid, used)
        p = m.spawn(name, merge_any=merge_any)
        bp = BuiltProcess(name, sp.pid, sp.comm, p, 0, 0, 0)
        for v in sp.vmas:
            vma = p.mm.mmap(v.pages, name=v.name or None, addr=v.start)
            keep = (v.page_flags & PAGE_ZERO_PFN) == 0
            offs = v.offsets[keep].astype(np.int64)
            toks = v.tokens[keep]
            want = v.pages // HPAGE_PAGES if thp_always else v.thp_kb // (HPAGE_PAGES * 4)
            blocks = _huge_blocks(v, offs, int(want))
            huge = np.zeros(v.pages, bool)
            for b in blocks:
                huge[b:b + HPAGE_PAGES] = True
            sel = huge[offs] if offs.size else np.zeros(0, bool)
            start = vma.start
            write = p.mm.write_page
            if blocks:                     # THP faults first: the block is empty then
                mem.thp.enabled = "always"
                for o, t in zip(offs[sel].tolist(), toks[sel].tolist()):
                    write(start + (o << PAGE_SHIFT), t)
                mem.thp.enabled = "never"
                built.thp_pages += len(blocks) * HPAGE_PAGES
            for o, t in zip(offs[~sel].tolist(), toks[~sel].tolist()):
                write(start + (o << PAGE_SHIFT), t)
            # a merge_any process's VMA the capture saw without VM_MERGEABLE is one the
            # kernel refused (vma_ksm_compatible: VM_SHARED, VM_IO, ...): keep it out
            refused = bool(sp.merge_any) and not v.mergeable and not v.flags & VMA_FLAGS_UNKNOWN
            if refused:
                p.madvise(vma, "unmergeable")
            mergeable = (merge_any or v.mergeable) and not refused
            bp.present_pages += int(offs.size)
            if mergeable:
                bp.mergeable_pages += int(offs.size)
                if not merge_any:
                    pending_madvise.append((p, vma))
            if volatile and period_s > 0:
                ch = v.changes[keep]
                for c in np.unique(ch[ch > 0]).tolist():
                    idx = offs[ch == c].tolist()
                    rate = len(idx) * c / period_s        # page writes per second
                    dyn.add(RewriteSet(p, vma, idx, rate_per_s=rate))
                    bp.volatile_pages += len(idx)
        built.processes.append(bp)
    for p, vma in pending_madvise:
        p.madvise(vma, "mergeable")
    if not any(bp.mergeable_pages for bp in built.processes):
        raise ForecastError("no captured page is in a mergeable VMA and no process has "
                            "merge_any: KSM would scan nothing (try --merge-any)")
    mem.thp.enabled = "always" if thp_always else "madvise"
    m.sysfs_write("run", 1)
    return built
