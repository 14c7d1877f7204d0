"""Emptying the per-CPU LRU add batches (opt-in: ``run_scenario_on_kernel(drain_lru=True)``).

A page that a process has just faulted in (a first write, or the private copy made by a write
to a KSM page) is put into the per-CPU ``lru_add`` folio batch of the CPU it faulted on, and
that batch holds a reference on it until the batch is drained (when 31 folios have gathered,
or on an explicit drain). While it holds that reference, KSM's ``write_protect_page`` sees
``refcount != mapcount + 1`` and refuses to merge the page. ksmd itself calls
``lru_add_drain_all()`` only at the start of each full scan.

The model reproduces this (one batch of 31), so by default the harness keeps the kernel's
behaviour and only makes it repeatable (all workers on one CPU). ``drain_lru_all_cpus`` is
for experiments: it pins the calling thread to each allowed CPU in turn and issues
``madvise(MADV_COLD)`` on a never-touched private page, whose first step is
``lru_add_drain()`` (the local CPU's batches); no page is deactivated. See
docs/kernel-findings.md.
"""

from __future__ import annotations

import mmap
import os

MADV_COLD = 20

_scratch: mmap.mmap | None = None


def _cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def drain_lru_all_cpus() -> int:
    """Drain the LRU folio batches of every CPU this process may run on. Returns how many
    CPUs were drained. The scratch mapping is never touched, so MADV_COLD has no page to
    deactivate: only the drain happens."""
    global _scratch
    if _scratch is None:
        _scratch = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    allowed = os.sched_getaffinity(0)
    n = 0
    try:
        for cpu in sorted(allowed):
            os.sched_setaffinity(0, {cpu})
            _scratch.madvise(MADV_COLD, 0, mmap.PAGESIZE)
            n += 1
    finally:
        os.sched_setaffinity(0, allowed)
    return n


# --------------------------------------------------------------------------- observing the batch

KPF_LRU = 5
KPF_ANON = 12
KPF_COMPOUND_HEAD = 15
KPF_COMPOUND_TAIL = 16
KPF_NOPAGE = 20
KPF_KSM = 21
KPF_THP = 22
KPF_ZERO_PAGE = 24

#: Capacity of a per-CPU folio batch (PAGEVEC_SIZE): the batch moves to the LRU when full.
LRU_BATCH_SIZE = 31

_PFN_MASK = (1 << 55) - 1


def page_frames(pid: int, addr: int, npages: int) -> list[int | None]:
    """The page frame number behind each page of [addr, addr + npages pages) of process
    ``pid`` (None where nothing is mapped), from /proc/PID/pagemap (needs root for PFNs)."""
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek(addr // mmap.PAGESIZE * 8)
        data = f.read(8 * npages)
    out: list[int | None] = []
    for i in range(0, len(data), 8):
        v = int.from_bytes(data[i:i + 8], "little")
        out.append(v & _PFN_MASK if v >> 63 & 1 and v & _PFN_MASK else None)
    return out


def page_flags(pfns) -> dict[int, int]:
    """/proc/kpageflags of each frame (KPF_* bits), by pfn."""
    out: dict[int, int] = {}
    with open("/proc/kpageflags", "rb") as f:
        for pfn in set(pfns):
            f.seek(pfn * 8)
            out[pfn] = int.from_bytes(f.read(8), "little")
    return out


def observable() -> bool:
    """True if this process can read page frames and their flags (root with /proc/kpageflags)."""
    try:
        page_frames(os.getpid(), id(observable) & ~(mmap.PAGESIZE - 1), 1)
        with open("/proc/kpageflags", "rb") as f:
            f.read(8)
    except OSError:
        return False
    return True


def in_lru_batch(flags: int) -> bool:
    """A small anonymous page that is in no LRU list: it waits in a per-CPU batch (only such
    pages hold the batch's extra reference; KSM pages and large folios never wait there)."""
    return (flags >> KPF_ANON & 1 and not flags >> KPF_LRU & 1 and not flags >> KPF_KSM & 1
            and not flags & ((1 << KPF_COMPOUND_HEAD) | (1 << KPF_COMPOUND_TAIL) | (1 << KPF_THP)
                             | (1 << KPF_ZERO_PAGE) | (1 << KPF_NOPAGE))) != 0


def drain_cpu(cpu: int) -> None:
    """``lru_add_drain()`` on one CPU (see drain_lru_all_cpus)."""
    global _scratch
    if _scratch is None:
        _scratch = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    allowed = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {cpu})
        _scratch.madvise(MADV_COLD, 0, mmap.PAGESIZE)
    finally:
        os.sched_setaffinity(0, allowed)


class LruInterference(RuntimeError):
    """Pages of other processes went through the workers' CPU's LRU batch."""


class LruWatch:
    """Keeps the LRU add batch of the workers' CPU (``cpu``) free of other processes' pages
    while it matters, and notices when it was not.

    The model has one LRU add batch that only the scenario's pages enter. On a real machine
    other processes on the same CPU add their pages too, which moves the batch to the LRU
    early and releases scenario pages the model still holds. So:

    * before a group of events that writes pages, if no scenario page is waiting in the batch
      (as in the model's batch then), the batch is drained: only foreign pages can be in it;
    * after the events, the scenario pages waiting in the batch must be exactly the last
      ``new_pages mod 31`` new ones -- else foreign pages came in meanwhile;
    * until ksmd's next ``lru_add_drain_all`` (start of the next full scan) no waiting
      scenario page may leave the batch: ``check()`` raises LruInterference if one did.
    """

    def __init__(self, cpu: int) -> None:
        self.cpu = cpu
        self.held: set[int] = set()       # pfns of scenario pages waiting in the batch
        self.predrained = False
        self._pre: dict = {}
        self.checks = 0

    @staticmethod
    def snapshot(workers) -> dict[tuple[int, int], int | None]:
        """(pid, page address) -> pfn for every page of every live worker's regions."""
        out: dict[tuple[int, int], int | None] = {}
        for w in workers:
            for addr, npages in w.regions.values():
                try:
                    frames = page_frames(w.pid, addr, npages)
                except OSError:
                    continue
                for i, pfn in enumerate(frames):
                    out[(w.pid, addr + i * mmap.PAGESIZE)] = pfn
        return out

    def before_events(self, workers) -> None:
        self.predrained = not self.held
        if self.predrained:
            drain_cpu(self.cpu)
        self._pre = self.snapshot(workers)

    def after_events(self, workers, what: str) -> dict:
        """Check the batch after a group of events; returns a summary for diagnostics."""
        post = self.snapshot(workers)
        old = {p for p in self._pre.values() if p is not None}
        # A page is new where an address now maps another frame than before the events (a
        # frame freed by the events -- e.g. a KSM page whose last mapping was written to --
        # is reused at once by the next fault, so "a frame not seen before" would miss it);
        # at addresses that did not exist before (a forked child), a frame not seen before.
        new = set()
        for key, pfn in post.items():
            if pfn is None:
                continue
            if key in self._pre:
                if self._pre[key] != pfn:
                    new.add(pfn)
            elif pfn not in old:
                new.add(pfn)
        big = ((1 << KPF_COMPOUND_HEAD) | (1 << KPF_COMPOUND_TAIL) | (1 << KPF_THP)
               | (1 << KPF_ZERO_PAGE))
        new_flags = page_flags(new)
        small_new = {p for p in new if not new_flags[p] & big}
        candidates = self.held | small_new
        flags = page_flags(candidates)
        waiting = {p for p in candidates if in_lru_batch(flags[p])}
        total = len(self.held) + len(small_new)
        expected = total % LRU_BATCH_SIZE
        if len(waiting) != expected:
            raise LruInterference(
                f"{what}: {len(waiting)} scenario pages wait in the LRU batch of CPU {self.cpu}, "
                f"expected {expected} ({len(self.held)} waiting before + {len(small_new)} new, "
                f"batch size {LRU_BATCH_SIZE}): other processes faulted pages on that CPU meanwhile")
        summary = {"new_pages": len(small_new), "waiting": len(waiting),
                   "predrained": self.predrained}
        self.held = waiting
        return summary

    def check(self) -> None:
        """Raise LruInterference if a waiting scenario page has reached the LRU."""
        if not self.held:
            return
        self.checks += 1
        for pfn, fl in page_flags(self.held).items():
            if fl >> KPF_LRU & 1:
                raise LruInterference(
                    f"a scenario page waiting in the LRU batch of CPU {self.cpu} was moved to "
                    "the LRU before ksmd's next full scan: other processes' pages filled the "
                    "batch (the machine is busy); the trace would not be repeatable")

    def scan_drain(self) -> None:
        """ksmd's lru_add_drain_all at the start of a full scan empties every batch."""
        self.held = set()
