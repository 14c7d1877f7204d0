"""Randomised whole-system test: a hypothesis state machine that drives processes (spawn,
mmap, write, zap, munmap, madvise, fork, exit, prctl, GUP-style pins), sysfs writes and ksmd
batches, and after every step checks

* every invariant of ``tests/invariants.py`` (counters vs. trees vs. page tables vs. folios),
* that every process still reads exactly what it wrote: KSM must never change what a
  program sees, whatever it merges, copies on write or unshares.

``KsmThpSystem`` runs the same rules on a machine with large folios (``thp = madvise``, now
and then ``always``; sometimes with 16 and 64 KiB mTHP enabled; any same-folio strategy; with
or without the split zero-page remap) and adds 512-page MADV_HUGEPAGE regions (PMD-mapped
THPs), small MADV_HUGEPAGE regions (mTHP), patterned fills that give a THP many identical
subpages, and partial munmap, so faults, zaps, forks, writes, pins and KSM merges and splits
all meet large folios.
"""

from __future__ import annotations

import errno
import os

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from invariants import check_invariants
from samepage import Machine
from samepage.mm.content import PAGE_SHIFT, PAGE_SIZE
from samepage.mm.folio import PG_ANON, PG_KSM
from samepage.mm.mm import (MADV_DONTNEED, MADV_HUGEPAGE, MADV_MERGEABLE, MADV_NOHUGEPAGE,
                            MADV_UNMERGEABLE, PTE_SPECIAL, VM_MERGEABLE, VM_READ, VM_SHARED,
                            VM_WRITE)

TOKENS = st.sampled_from([0, 0, 1, 1, 2, 3])
PICK = st.integers(min_value=0, max_value=10_000)
MAX_LIVE = 4


class Region:
    __slots__ = ("start", "npages", "shared", "huge")

    def __init__(self, start: int, npages: int, shared: bool, huge: bool = False):
        self.start = start
        self.npages = npages
        self.shared = shared
        self.huge = huge

    def addr(self, i: int) -> int:
        return self.start + (i << PAGE_SHIFT)

    def copy(self) -> "Region":
        return Region(self.start, self.npages, self.shared, self.huge)


class KsmSystem(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.m = Machine(sanitize=True)
        self.procs: dict[str, object] = {}          # live processes
        self.regions: dict[str, list[Region]] = {}
        self.expected: dict[tuple[str, int], int | None] = {}
        self.pins: list = []
        self.counter = 0

    # ------------------------------------------------------------------ helpers
    def _name(self) -> str:
        self.counter += 1
        return f"p{self.counter}"

    def _pick_proc(self, k: int):
        names = sorted(self.procs)
        return names[k % len(names)]

    def _pick_region(self, k: int):
        pairs = [(n, r) for n in sorted(self.procs) for r in self.regions[n]]
        if not pairs:
            return None, None
        return pairs[k % len(pairs)]

    def _has_region(self) -> bool:
        return any(self.regions[n] for n in self.procs)

    # ------------------------------------------------------------------ setup
    @initialize(pages_to_scan=st.integers(1, 8), use_zero=st.booleans(),
                smart=st.booleans(), mps=st.sampled_from([2, 3, 256]),
                init_a=st.lists(st.one_of(st.none(), TOKENS), min_size=1, max_size=6),
                init_b=st.lists(st.one_of(st.none(), TOKENS), min_size=1, max_size=6),
                prune_ms=st.sampled_from([0, 2000]))
    def setup(self, pages_to_scan, use_zero, smart, mps, init_a, init_b, prune_ms):
        m = self.m
        m.sysfs_write("pages_to_scan", pages_to_scan)
        m.sysfs_write("use_zero_pages", int(use_zero))
        m.sysfs_write("smart_scan", int(smart))
        m.sysfs_write("max_page_sharing", mps)
        m.sysfs_write("sleep_millisecs", 500)     # lets chain pruning happen now and then
        m.sysfs_write("stable_node_chains_prune_millisecs", prune_ms)
        m.sysfs_write("run", 1)
        for tokens in (init_a, init_b):
            name = self._name()
            p = self.procs[name] = m.spawn(name)
            vma = p.mm.mmap(len(tokens))
            r = Region(vma.start, len(tokens), False)
            self.regions[name] = [r]
            for i, t in enumerate(tokens):
                a = r.addr(i)
                if t is None:
                    self.expected[(name, a)] = None
                else:
                    p.mm.write_page(a, t)
                    self.expected[(name, a)] = t
            assert p.mm.madvise(r.start, r.npages * PAGE_SIZE, MADV_MERGEABLE) == 0

    # ------------------------------------------------------------------ processes
    @precondition(lambda self: len(self.procs) < MAX_LIVE)
    @rule(merge_any=st.booleans())
    def spawn(self, merge_any):
        name = self._name()
        self.procs[name] = self.m.spawn(name, merge_any=merge_any)
        self.regions[name] = []

    @precondition(lambda self: self.procs and len(self.procs) < MAX_LIVE)
    @rule(k=PICK)
    def fork(self, k):
        parent = self._pick_proc(k)
        name = self._name()
        self.procs[name] = self.procs[parent].fork(name)
        self.regions[name] = [r.copy() for r in self.regions[parent]]
        for r in self.regions[parent]:
            if r.shared:
                continue
            for i in range(r.npages):
                self.expected[(name, r.addr(i))] = self.expected.get((parent, r.addr(i)))

    @precondition(lambda self: len(self.procs) > 1)
    @rule(k=PICK)
    def exit(self, k):
        name = self._pick_proc(k)
        self.procs.pop(name).exit()
        self.regions.pop(name)
        for key in [key for key in self.expected if key[0] == name]:
            del self.expected[key]

    @precondition(lambda self: self.procs)
    @rule(k=PICK, on=st.booleans())
    def prctl(self, k, on):
        self.procs[self._pick_proc(k)].prctl_set_memory_merge(on)

    # ------------------------------------------------------------------ memory
    @precondition(lambda self: self.procs)
    @rule(k=PICK, npages=st.integers(1, 6), shared=st.sampled_from([False] * 5 + [True]),
          mergeable=st.booleans())
    def mmap(self, k, npages, shared, mergeable):
        name = self._pick_proc(k)
        p = self.procs[name]
        flags = VM_READ | VM_WRITE | (VM_SHARED if shared else 0)
        vma = p.mm.mmap(npages, flags=flags)
        self.regions[name].append(Region(vma.start, npages, shared))
        if mergeable:
            assert p.mm.madvise(vma.start, npages * PAGE_SIZE, MADV_MERGEABLE) == 0
        for i in range(npages):
            if not shared:
                self.expected[(name, vma.start + (i << PAGE_SHIFT))] = None

    @precondition(lambda self: self._has_region())
    @rule(k=PICK, i=PICK, token=TOKENS)
    def write(self, k, i, token):
        name, r = self._pick_region(k)
        a = r.addr(i % r.npages)
        self.procs[name].mm.write_page(a, token)
        if not r.shared:
            self.expected[(name, a)] = token

    @precondition(lambda self: self._has_region())
    @rule(k=PICK, token=TOKENS)
    def write_all(self, k, token):
        name, r = self._pick_region(k)
        for i in range(r.npages):
            self.procs[name].mm.write_page(r.addr(i), token)
            if not r.shared:
                self.expected[(name, r.addr(i))] = token

    @precondition(lambda self: self._has_region())
    @rule(k=PICK, i=PICK, n=st.integers(1, 3))
    def zap(self, k, i, n):
        self._zap(k, i, n)

    def _zap(self, k, i, n):
        name, r = self._pick_region(k)
        lo = i % r.npages
        hi = min(r.npages, lo + n)
        assert self.procs[name].mm.madvise(r.addr(lo), (hi - lo) * PAGE_SIZE,
                                           MADV_DONTNEED) == 0
        if not r.shared:
            for j in range(lo, hi):
                self.expected[(name, r.addr(j))] = None

    @precondition(lambda self: self._has_region())
    @rule(k=PICK)
    def munmap(self, k):
        name, r = self._pick_region(k)
        self.procs[name].mm.munmap(r.start, r.npages * PAGE_SIZE)
        self.regions[name].remove(r)
        for i in range(r.npages):
            self.expected.pop((name, r.addr(i)), None)

    @precondition(lambda self: self._has_region())
    @rule(k=PICK, i=PICK, n=st.integers(1, 6), mergeable=st.booleans())
    def madvise(self, k, i, n, mergeable):
        name, r = self._pick_region(k)
        lo = i % r.npages
        hi = min(r.npages, lo + n)
        adv = MADV_MERGEABLE if mergeable else MADV_UNMERGEABLE
        assert self.procs[name].mm.madvise(r.addr(lo), (hi - lo) * PAGE_SIZE, adv) == 0

    @precondition(lambda self: self._has_region())
    @rule(k=PICK, i=PICK)
    def pin(self, k, i):
        """A GUP pin (e.g. O_DIRECT): an extra reference on an ordinary anon folio."""
        name, r = self._pick_region(k)
        mm = self.procs[name].mm
        a = r.addr(i % r.npages)
        vma = mm.find_vma(a)
        j = (a - vma.start) >> PAGE_SHIFT
        pfn = vma.pte[j]
        if pfn < 0 or vma.ptef[j] & PTE_SPECIAL:
            return
        folio = self.m.mem.page_folio[pfn]
        if folio.flags & PG_KSM or not folio.flags & PG_ANON:
            return
        self.m.mem.folio_get(folio)
        folio.pincount += 1
        self.pins.append(folio)

    @precondition(lambda self: self.pins)
    @rule(k=PICK)
    def unpin(self, k):
        folio = self.pins.pop(k % len(self.pins))
        folio.pincount -= 1
        self.m.mem.folio_put(folio)

    # ------------------------------------------------------------------ sysfs
    @rule(value=st.booleans())
    def use_zero_pages(self, value):
        self.m.sysfs_write("use_zero_pages", int(value))

    @rule(value=st.booleans())
    def smart_scan(self, value):
        self.m.sysfs_write("smart_scan", int(value))

    @rule(value=st.sampled_from([2, 3, 4, 256]))
    def max_page_sharing(self, value):
        cur = self.m.sysfs_read("max_page_sharing")
        busy = self.m.sysfs_read("pages_shared") > 0
        try:
            self.m.sysfs_write("max_page_sharing", value)
        except OSError as e:
            assert e.errno == errno.EBUSY
            assert value != cur and self.m.sysfs_read("max_page_sharing") == cur
        else:
            assert self.m.sysfs_read("max_page_sharing") == value
            assert value == cur or not busy

    @rule(value=st.sampled_from([0, 1, 1, 1, 2]))
    def run(self, value):
        was = self.m.sysfs_read("run")
        self.m.sysfs_write("run", value)
        if value == 2 and was != 2:
            assert self.m.sysfs_read("pages_shared") == 0
            assert self.m.sysfs_read("pages_sharing") == 0
            assert self.m.sysfs_read("pages_unshared") == 0
            assert self.m.sysfs_read("full_scans") == 0
            assert self.m.ksm.ksm_rmap_items == 0
            assert self.m.sysfs_read("ksm_zero_pages") == 0
            # (stable nodes -- even chains -- may survive: a KSM page still mapped where
            # run=2 does not unmerge, e.g. in a non-mergeable VMA of an unregistered child
            # forked before its parent enabled merging, keeps its node busy)
            # every KSM page mapped in a mergeable VMA was unshared
            for p in self.procs.values():
                for vma in p.mm.vmas:
                    if not vma.flags & VM_MERGEABLE:
                        continue
                    for pfn, f in zip(vma.pte, vma.ptef):
                        if pfn >= 0 and not f & PTE_SPECIAL:
                            assert not self.m.mem.page_folio[pfn].flags & PG_KSM

    # ------------------------------------------------------------------ ksmd
    @rule(n=st.integers(1, 3), pages_to_scan=st.sampled_from([1, 2, 3, 5, 8, 64]))
    def ksmd(self, n, pages_to_scan):
        self.m.sysfs_write("pages_to_scan", pages_to_scan)
        self.m.run_batches(n)

    # (hypothesis picks rules uniformly: two more ksmd rules make scanning as frequent as
    # the mutations it has to catch up with)
    @rule(n=st.integers(1, 3))
    def ksmd_default_budget(self, n):
        self.m.run_batches(n)

    @precondition(lambda self: self.m.sysfs_read("run") == 1)
    @rule(n=st.integers(1, 3))
    def full_scans(self, n):
        self.m.sysfs_write("pages_to_scan", 64)
        self.m.run_full_scans(n, max_batches=50)

    # ------------------------------------------------------------------ checks
    @invariant()
    def whole_state(self):
        check_invariants(self.m)

    @invariant()
    def programs_read_what_they_wrote(self):
        for (name, a), want in self.expected.items():
            got = self.procs[name].mm.read_page(a)
            assert got == want, f"{name} reads {got!r} at {a:#x}, wrote {want!r}"


KsmSystem.TestCase.settings = settings(max_examples=200, stateful_step_count=60,
                                       deadline=None,
                                       suppress_health_check=[HealthCheck.too_slow])
TestKsmSystem = KsmSystem.TestCase


MAX_HUGE_REGIONS = 3


class KsmThpSystem(KsmSystem):
    """The same system on a machine with THP and sometimes mTHP, plus large regions.  A
    THP is 512 pages, so the fills are patterned (few distinct tokens) to give KSM
    same-folio pairs, pairs across folios and zero-filled subpages to split and remap."""

    def _huge_regions(self) -> int:
        return sum(1 for n in self.procs for r in self.regions[n] if r.npages >= 512)

    def _pick_huge(self, k: int):
        pairs = [(n, r) for n in sorted(self.procs) for r in self.regions[n] if r.huge]
        if not pairs:
            return None, None
        return pairs[k % len(pairs)]

    @initialize(pages_to_scan=st.integers(1, 8), use_zero=st.booleans(),
                smart=st.booleans(), mps=st.sampled_from([2, 3, 256]),
                init_a=st.lists(st.one_of(st.none(), TOKENS), min_size=1, max_size=6),
                init_b=st.lists(st.one_of(st.none(), TOKENS), min_size=1, max_size=6),
                prune_ms=st.sampled_from([0, 2000]), mthp=st.booleans(),
                zero_remap=st.sampled_from([True, True, False]),
                strategy=st.sampled_from(["v6.18", "v6.18", "early-put", "split-retry"]),
                huge_tokens=st.lists(TOKENS, min_size=1, max_size=4),
                thp=st.sampled_from(["madvise", "madvise", "madvise", "always"]))
    def setup(self, pages_to_scan, use_zero, smart, mps, init_a, init_b, prune_ms, mthp,
              zero_remap, strategy, huge_tokens, thp):
        self.m = Machine(sanitize=True, thp=thp, mthp_kb=[16, 64] if mthp else (),
                         split_zero_remap=zero_remap, same_folio=strategy)
        KsmSystem.setup(self, pages_to_scan, use_zero, smart, mps, init_a, init_b, prune_ms)
        # the first process starts with one THP region, filled with a short pattern
        name = sorted(self.procs)[0]
        self._new_region(name, 512, True, huge_tokens)

    def _new_region(self, name, npages, mergeable, tokens=None):
        mm = self.procs[name].mm
        vma = mm.mmap(npages)
        assert mm.madvise(vma.start, npages * PAGE_SIZE, MADV_HUGEPAGE) == 0
        r = Region(vma.start, npages, False, True)
        self.regions[name].append(r)
        for i in range(npages):
            self.expected[(name, r.addr(i))] = None
        if tokens:
            self._fill(name, r, tokens, 1, 0, npages)
        if mergeable:
            assert mm.madvise(vma.start, npages * PAGE_SIZE, MADV_MERGEABLE) == 0
        return r

    def _fill(self, name, r, tokens, stride, lo, hi):
        mm = self.procs[name].mm
        for j, i in enumerate(range(lo, hi, stride)):
            t = tokens[j % len(tokens)]
            mm.write_page(r.addr(i), t)
            self.expected[(name, r.addr(i))] = t

    @precondition(lambda self: self.procs and self._huge_regions() < MAX_HUGE_REGIONS)
    @rule(k=PICK, mergeable=st.sampled_from([True, True, False]),
          tokens=st.lists(TOKENS, min_size=1, max_size=4))
    def mmap_thp(self, k, mergeable, tokens):
        """A 2 MiB MADV_HUGEPAGE region: the first write faults a PMD-mapped THP."""
        self._new_region(self._pick_proc(k), 512, mergeable, tokens)

    @precondition(lambda self: self.procs)
    @rule(k=PICK, npages=st.sampled_from([4, 16, 20, 40]), mergeable=st.booleans(),
          tokens=st.lists(TOKENS, min_size=1, max_size=3))
    def mmap_mthp(self, k, npages, mergeable, tokens):
        """A small MADV_HUGEPAGE region: mTHP folios when 16/64 KiB are enabled."""
        self._new_region(self._pick_proc(k), npages, mergeable, tokens)

    @precondition(lambda self: any(r.huge for n in self.procs for r in self.regions[n]))
    @rule(k=PICK, tokens=st.lists(TOKENS, min_size=1, max_size=4),
          stride=st.sampled_from([1, 1, 2, 7, 64]), start=PICK, length=st.integers(1, 512))
    def write_pattern(self, k, tokens, stride, start, length):
        """Store a repeating pattern into (part of) a large region."""
        name, r = self._pick_huge(k)
        lo = start % r.npages
        hi = min(r.npages, lo + length)
        self._fill(name, r, tokens, stride, lo, hi)

    @precondition(lambda self: self._has_region())
    @rule(k=PICK, i=PICK, n=st.sampled_from([1, 5, 100, 300, 512]))
    def zap_range(self, k, i, n):
        """MADV_DONTNEED of a longer range: whole PMD mappings or parts of them."""
        self._zap(k, i, n)

    @precondition(lambda self: self._has_region())
    @rule(k=PICK, i=PICK, n=st.sampled_from([1, 3, 100, 256]))
    def munmap_part(self, k, i, n):
        """munmap of part of a region: the VMA is split, a straddling PMD mapping too."""
        name, r = self._pick_region(k)
        lo = i % r.npages
        hi = min(r.npages, lo + n)
        self.procs[name].mm.munmap(r.addr(lo), (hi - lo) * PAGE_SIZE)
        regions = self.regions[name]
        regions.remove(r)
        if lo > 0:
            regions.append(Region(r.start, lo, r.shared, r.huge))
        if hi < r.npages:
            regions.append(Region(r.addr(hi), r.npages - hi, r.shared, r.huge))
        for j in range(lo, hi):
            self.expected.pop((name, r.addr(j)), None)

    @precondition(lambda self: self._has_region())
    @rule(k=PICK, i=PICK, n=st.sampled_from([1, 50, 512]), huge=st.booleans())
    def madvise_hugepage(self, k, i, n, huge):
        name, r = self._pick_region(k)
        lo = i % r.npages
        hi = min(r.npages, lo + n)
        assert self.procs[name].mm.madvise(r.addr(lo), (hi - lo) * PAGE_SIZE,
                                           MADV_HUGEPAGE if huge else MADV_NOHUGEPAGE) == 0


    @invariant()
    def programs_read_what_they_wrote(self):
        # a fault maps a whole large folio: pages never written read as zeros, whether they
        # are unmapped (None), zero-filled subpages or remapped to the shared zero page
        for (name, a), want in self.expected.items():
            got = self.procs[name].mm.read_page(a)
            assert (got or 0) == (want or 0), f"{name} reads {got!r} at {a:#x}, wrote {want!r}"


# Shrinking a failure of this machine can take hypothesis several minutes (every step walks
# thousands of frames), so by default a failure is reported unshrunk; set
# SAMEPAGE_SHRINK=1 to get a minimal example.
KsmThpSystem.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=tuple(Phase) if os.environ.get("SAMEPAGE_SHRINK") else
    tuple(p for p in Phase if p is not Phase.shrink))
TestKsmThpSystem = KsmThpSystem.TestCase
