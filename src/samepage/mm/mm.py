"""Address spaces, VMAs, page tables and faults.

Models the pieces of ``mm/mmap.c``, ``mm/vma.c``, ``mm/madvise.c``, ``mm/memory.c``
(``handle_mm_fault``, ``do_anonymous_page``, ``do_wp_page``, ``wp_can_reuse_anon_folio``,
``wp_page_copy``, ``wp_page_reuse``, ``zap_pte_range``, ``copy_present_pte``),
``kernel/fork.c`` (``dup_mmap``), ``kernel/exit.c``/``__mmput``, the mm lifetime counts
(``mm_users``, ``mm_count`` with ``mmgrab``/``mmdrop``) and the prctl of ``kernel/sys.c``
that KSM interacts with.  ``find_vma`` keeps the pre-6.1 ``mm/vmacache.c`` idea: the last
VMA found, one entry per mm.

A VMA's page table is two flat arrays, one slot per virtual page: ``pte[i]`` is the pfn
mapped there (-1: none) and ``ptef[i]`` its PTE bits (``PTE_WRITE``, ``PTE_DIRTY``,
``PTE_SPECIAL`` for the zero page, ``PTE_PMD`` when the entry is part of a PMD mapping).
Addresses are byte addresses, as in the kernel.
"""

from __future__ import annotations

import errno
import sys
from array import array
from bisect import bisect_right, insort
from operator import attrgetter

if sys.version_info < (3, 10):          # Debian's PyPy 3.9: bisect has no key=
    from .compat import bisect_right, insort  # noqa: F811
from .content import PAGE_SHIFT, PAGE_SIZE, Content, make_content
from .huge import HPAGE_PMD_NR, HPAGE_PMD_ORDER
from .folio import (PAGE_ANON_EXCLUSIVE, PG_ANON, PG_KSM, PG_LRU, PG_SWAPCACHE, PG_ZERO,
                    ZERO_PFN, Folio, Memory)

# vma->vm_flags
VM_READ = 0x1
VM_WRITE = 0x2
VM_SHARED = 0x8
VM_MAYSHARE = 0x80
VM_PFNMAP = 0x400
VM_LOCKED = 0x2000
VM_IO = 0x4000
VM_DONTEXPAND = 0x40000
VM_HUGETLB = 0x400000
VM_HUGEPAGE = 0x20000000
VM_NOHUGEPAGE = 0x40000000
VM_MERGEABLE = 0x80000000
VM_MIXEDMAP = 0x10000000
VM_DROPPABLE = 0x1_0000_0000
VM_SPECIAL = VM_IO | VM_DONTEXPAND | VM_PFNMAP | VM_MIXEDMAP

# mm->flags
MMF_VM_MERGEABLE = 1
MMF_VM_MERGE_ANY = 2

# PTE bits
PTE_WRITE = 1
PTE_DIRTY = 2
PTE_SPECIAL = 4
PTE_PMD = 8

# madvise advice values (uapi)
MADV_DONTNEED = 4
MADV_MERGEABLE = 12
MADV_UNMERGEABLE = 13
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15

PR_SET_MEMORY_MERGE = 67
PR_GET_MEMORY_MERGE = 68

# fault flags
FAULT_FLAG_WRITE = 1
FAULT_FLAG_UNSHARE = 2

VA_BASE = 0x7F00_0000_0000
PMD_SIZE = 2 << 20


class VmFault(Exception):
    """SIGSEGV: an access outside any VMA or against its protection."""


class FaultOOM(OSError):
    """VM_FAULT_OOM: a fault could not allocate its folio (``-ENOMEM``)."""

    def __init__(self, what: str):
        super().__init__(errno.ENOMEM, f"{what}: out of memory")


class AnonVma:
    """``struct anon_vma``: finds every VMA that may map a folio faulted under it."""

    __slots__ = ("parent", "vmas")

    def __init__(self, parent: "AnonVma | None" = None):
        self.parent = parent
        self.vmas: list[Vma] = []

    def link(self, vma: "Vma") -> None:
        av = self
        while av is not None:            # the anon_vma_chain reaches every ancestor
            av.vmas.append(vma)
            av = av.parent

    def unlink(self, vma: "Vma") -> None:
        av = self
        while av is not None:
            try:
                av.vmas.remove(vma)
            except ValueError:
                pass
            av = av.parent


class Vma:
    """``struct vm_area_struct`` with its slice of the page table."""

    __slots__ = ("mm", "start", "end", "flags", "anon_vma", "pte", "ptef", "name", "pgoff",
                 "file", "dead", "__weakref__")

    def __init__(self, mm: "MM", start: int, end: int, flags: int, name: str | None = None):
        self.mm = mm
        self.start = start
        self.end = end
        self.flags = flags
        self.anon_vma: AnonVma | None = None
        n = (end - start) >> PAGE_SHIFT
        self.pte = array("i", [-1]) * n        # pfns fit 31 bits: 8 TiB of frames
        self.ptef = bytearray(n)
        self.name = name
        self.pgoff = start >> PAGE_SHIFT
        self.file = None
        self.dead = None           # why it is gone ("munmap", "exit"): vm_area_free()d

    @property
    def nr_pages(self) -> int:
        return (self.end - self.start) >> PAGE_SHIFT

    def pmd_base(self, i: int) -> int:
        """Slot of the first page of the 2 MiB block that holds slot ``i``."""
        vpn0 = self.start >> PAGE_SHIFT
        return ((vpn0 + i) & ~(HPAGE_PMD_NR - 1)) - vpn0

    def contains(self, addr: int) -> bool:
        return self.start <= addr < self.end

    def __repr__(self) -> str:
        return f"<vma {self.name or ''} {self.start:#x}-{self.end:#x} flags={self.flags:#x}>"


class MM:
    """``struct mm_struct`` of one process."""

    __slots__ = ("mem", "name", "pid", "vmas", "vma_names", "flags", "mm_users", "mm_count",
                 "nid",
                 "ksm_merging_pages", "ksm_rmap_items", "ksm_zero_pages", "anon_rss",
                 "next_addr", "pte_tables", "vmacache", "__weakref__")

    def __init__(self, mem: Memory, name: str, nid: int = 0):
        self.mem = mem
        self.name = name
        # pids count per machine (Memory), so that a replayed schedule names the same mm
        mem.next_pid += 1
        self.pid = mem.next_pid
        # Sorted by start and never overlapping: lookups bisect it, O(log N) as the
        # kernel's maple tree gives (vma_lookup, vma_iter_init).
        self.vmas: list[Vma] = []
        self.vma_names: dict[str, Vma] = {}   # name -> its lowest VMA (a split keeps the name)
        self.flags = 0
        self.mm_users = 1          # the address space's users (0: exited, ksm_test_exit)
        self.mm_count = 1          # references to the struct: mm_users' one, mmgrab()s
        self.nid = nid
        self.ksm_merging_pages = 0
        self.ksm_rmap_items = 0
        self.ksm_zero_pages = 0
        self.anon_rss = 0
        self.next_addr = VA_BASE
        self.pte_tables: set[int] = set()   # 2 MiB blocks (vpn >> 9) that have a PTE table
        self.vmacache: Vma | None = None    # the VMA find_vma found last (vmacache_find)

    def __repr__(self) -> str:
        return f"<mm {self.name} pid={self.pid}>"

    # -- VMAs ---------------------------------------------------------------------------
    def vma_index(self, addr: int) -> int:
        """Index in ``vmas`` of the first VMA ending above ``addr`` (``vma_iter_init``:
        where a walk from ``addr`` starts); ``len(vmas)`` if there is none."""
        vmas = self.vmas
        i = bisect_right(vmas, addr, key=_vma_start) - 1
        if i < 0 or vmas[i].end <= addr:
            i += 1
        return i

    def find_vma(self, addr: int) -> Vma | None:
        """The VMA containing ``addr`` (``vma_lookup``), or None.

        The last VMA found is tried first: the kernel had this, a per-thread
        ``vmacache`` (mm/vmacache.c, 4 entries), until 6.1 replaced it by the maple tree.
        Here it is one entry per mm, for ksmd's unstable-tree walk, which looks up the VMA
        of every node it passes.  Any change of ``vmas`` or of a VMA's bounds calls
        ``vmacache_invalidate`` (the bounds are also checked on every hit)."""
        vma = self.vmacache
        if vma is not None and vma.start <= addr < vma.end:
            return vma
        vmas = self.vmas
        i = bisect_right(vmas, addr, key=_vma_start) - 1
        if i >= 0 and addr < vmas[i].end:
            vma = self.vmacache = vmas[i]
            return vma
        return None

    def vmacache_invalidate(self) -> None:
        """Forget the cached VMA (the kernel bumped ``mm->vmacache_seqnum``)."""
        self.vmacache = None

    def vma_by_name(self, name: str) -> Vma:
        vma = self.vma_names.get(name)
        if vma is None:
            raise KeyError(name)
        return vma

    def mmap(self, pages: int, *, name: str | None = None, flags: int = VM_READ | VM_WRITE,
             align: int = PMD_SIZE, addr: int | None = None) -> Vma:
        """Map ``pages`` anonymous private pages.  Each mapping gets its own VMA: the
        address grows upwards with a guard gap, so file order is scan order."""
        if self.mm_users == 0:
            raise VmFault("mmap on an exited mm")
        if pages <= 0:
            raise ValueError("pages must be >= 1")
        length = pages << PAGE_SHIFT
        if addr is None:
            addr = (self.next_addr + align - 1) & ~(align - 1)
        i = self.vma_index(addr)
        if i < len(self.vmas) and self.vmas[i].start < addr + length:
            raise ValueError(f"mapping at {addr:#x} overlaps an existing VMA")
        self.next_addr = max(self.next_addr, addr + length + PMD_SIZE)
        vma = Vma(self, addr, addr + length, flags, name)
        self._insert_vma(vma)
        self.mem.ksm.ksm_vma_flags(self, vma)
        return vma

    def _insert_vma(self, vma: Vma) -> None:
        self.vmacache_invalidate()
        insort(self.vmas, vma, key=_vma_start)
        name = vma.name
        if name is not None:
            first = self.vma_names.get(name)
            if first is None or vma.start < first.start:
                self.vma_names[name] = vma

    def _remove_vma(self, vma: Vma) -> None:
        vmas = self.vmas
        i = bisect_right(vmas, vma.start, key=_vma_start) - 1
        assert vmas[i] is vma
        self.vmacache_invalidate()
        del vmas[i]
        vma.dead = "munmap"
        if self.mem.sanitizer is not None:
            self.mem.sanitizer.vma_freed(vma)
        name = vma.name
        if name is not None and self.vma_names.get(name) is vma:
            # rare (munmap of a named region's first part): find the next of that name
            del self.vma_names[name]
            for v in vmas:
                if v.name == name:
                    self.vma_names[name] = v
                    break

    def split_vma(self, vma: Vma, addr: int) -> Vma:
        """Split ``vma`` at ``addr``; returns the upper part (``__split_vma``).  A PMD
        mapping that straddles ``addr`` is split first (``vma_adjust_trans_huge``)."""
        i = (addr - vma.start) >> PAGE_SHIFT
        if addr & (PMD_SIZE - 1) and vma.ptef[i] & PTE_PMD:
            self.split_huge_pmd(vma, i)
        new = Vma.__new__(Vma)
        new.mm = self
        new.start = addr
        new.end = vma.end
        new.flags = vma.flags
        new.anon_vma = vma.anon_vma
        new.pte = vma.pte[i:]
        new.ptef = vma.ptef[i:]
        new.name = vma.name
        new.pgoff = vma.pgoff + i
        new.file = vma.file
        new.dead = None
        self.vmacache_invalidate()
        vma.end = addr
        del vma.pte[i:]
        del vma.ptef[i:]
        if vma.anon_vma is not None:
            vma.anon_vma.link(new)
        self._insert_vma(new)
        return new

    def vmas_in_range(self, start: int, end: int, split: bool = True) -> list[Vma]:
        """The VMAs covering [start, end), split at the boundaries when ``split``."""
        out = []
        vmas = self.vmas
        i = self.vma_index(start)
        while i < len(vmas) and vmas[i].start < end:
            vma = vmas[i]
            i += 1
            if split and vma.start < start:
                i += 1                     # the upper part is inserted after vma
                vma = self.split_vma(vma, start)
            if split and vma.end > end:
                self.split_vma(vma, end)
            out.append(vma)
        return out

    # -- faults -------------------------------------------------------------------------
    def anon_vma_prepare(self, vma: Vma) -> AnonVma:
        if vma.anon_vma is None:
            vma.anon_vma = AnonVma()
            vma.anon_vma.link(vma)
        return vma.anon_vma

    def handle_mm_fault(self, vma: Vma, addr: int, fault_flags: int) -> int:
        """Resolve a write (or unshare) fault at ``addr``; returns the pfn now mapped."""
        i = (addr - vma.start) >> PAGE_SHIFT
        pfn = vma.pte[i]
        if pfn < 0:
            if fault_flags & FAULT_FLAG_UNSHARE:
                return -1
            return self.do_anonymous_page(vma, i)
        f = vma.ptef[i]
        if fault_flags & FAULT_FLAG_WRITE and f & PTE_WRITE:
            return pfn                          # nothing to do
        return self.do_wp_page(vma, i, fault_flags)

    def do_anonymous_page(self, vma: Vma, i: int) -> int:
        """A write fault on an empty PTE: a PMD-mapped THP if the policy allows it and the
        aligned 2 MiB block has no page table yet (``do_huge_pmd_anonymous_page``), else the
        largest allowed mTHP whose aligned range is empty (``alloc_anon_folio``), else one
        page."""
        if not vma.flags & VM_WRITE:
            raise VmFault(f"write to a read-only mapping {vma!r}")
        mem = self.mem
        self.anon_vma_prepare(vma)
        orders = mem.thp.allowable_orders(vma.flags, VM_HUGEPAGE, VM_NOHUGEPAGE,
                                          anon=not vma.flags & VM_SHARED)
        vpn0 = vma.start >> PAGE_SHIFT
        for order in orders:
            n = 1 << order
            base = ((vpn0 + i) & ~(n - 1)) - vpn0
            if base < 0 or base + n > len(vma.pte):
                continue
            if order == HPAGE_PMD_ORDER:
                if (vpn0 + base) >> HPAGE_PMD_ORDER in self.pte_tables:
                    continue                      # pmd_none() is false: PTE-level fault
            elif any(vma.pte[j] >= 0 for j in range(base, base + n)):
                continue                          # pte_range_none() is false
            pfn = self._map_new_large_folio(vma, base, order, i)
            if pfn is not None:
                return pfn                        # else fall back to a smaller order
        folio = mem.folio_alloc(0, self.nid)
        if folio is None:
            raise FaultOOM("do_anonymous_page")
        self.pte_tables.add((vpn0 + i) >> HPAGE_PMD_ORDER)
        self._add_new_anon_rmap(folio, vma, i)
        mem.folio_add_lru(folio)
        vma.pte[i] = folio.pfn
        vma.ptef[i] = PTE_WRITE | PTE_DIRTY
        return folio.pfn

    def _map_new_large_folio(self, vma: Vma, base: int, order: int, i: int) -> int | None:
        mem = self.mem
        n = 1 << order
        folio = mem.folio_alloc(order, self.nid)
        if folio is None:
            return None
        folio.flags |= PG_ANON | PG_LRU
        folio.mapping = vma.anon_vma
        mem.page_index[folio.pfn] = vma.pgoff + base
        pflags = mem.page_flags
        pmd = order == HPAGE_PMD_ORDER
        bits = PTE_WRITE | PTE_DIRTY | (PTE_PMD if pmd else 0)
        for k in range(n):
            vma.pte[base + k] = folio.pfn + k
            vma.ptef[base + k] = bits
            pflags[folio.pfn + k] |= PAGE_ANON_EXCLUSIVE
        if pmd:
            folio.mapcount = 1                    # one PMD mapping, one reference
            mem.vmstat["thp_fault_alloc"] += 1
        else:
            self.pte_tables.add((vma.start >> PAGE_SHIFT) + base >> HPAGE_PMD_ORDER)
            folio.mapcount = n                    # one reference per PTE mapping
            folio.refcount = n
            for k in range(n):
                folio.page_mapcount[k] = 1
            key = f"mthp_{4 << order}kB_fault_alloc"
            mem.vmstat[key] = mem.vmstat.get(key, 0) + 1
        self.anon_rss += n
        return folio.pfn + (i - base)

    def split_huge_pmd(self, vma: Vma, i: int) -> None:
        """``__split_huge_pmd``: the PMD mapping around slot ``i`` becomes 512 PTEs."""
        base = vma.pmd_base(i)
        ptef = vma.ptef
        if not ptef[base] & PTE_PMD:
            return
        folio = self.mem.page_folio[vma.pte[base]]
        for k in range(HPAGE_PMD_NR):
            ptef[base + k] &= ~PTE_PMD
            folio.page_mapcount[k] += 1
        folio.mapcount += HPAGE_PMD_NR - 1
        folio.refcount += HPAGE_PMD_NR - 1
        self.pte_tables.add(((vma.start >> PAGE_SHIFT) + base) >> HPAGE_PMD_ORDER)

    def _add_new_anon_rmap(self, folio: Folio, vma: Vma, i: int) -> None:
        """``folio_add_new_anon_rmap`` for an order-0 folio mapped exclusively at ``i``."""
        folio.flags |= PG_ANON
        folio.anon_vma = vma.anon_vma
        self.mem.page_index[folio.pfn] = vma.pgoff + i
        folio.mapcount = 1
        self.mem.page_flags[folio.pfn] |= PAGE_ANON_EXCLUSIVE
        self.anon_rss += 1

    def wp_can_reuse_anon_folio(self, folio: Folio) -> bool:
        mem = self.mem
        if folio.flags & PG_KSM or folio.refcount > 3:
            return False
        if not folio.flags & PG_LRU:
            mem.lru_add_drain()
        if folio.refcount > 1 + (1 if folio.flags & PG_SWAPCACHE else 0):
            return False
        if not mem.folio_trylock(folio):
            return False
        ok = not folio.flags & PG_KSM and folio.refcount == 1
        mem.folio_unlock(folio)
        return ok

    def do_huge_pmd_wp_page(self, vma: Vma, i: int) -> bool:
        """Write to a write-protected PMD-mapped THP: reuse it when exclusive (or only
        this mapping holds it), else split the PMD so the PTE-level fault copies one page.
        Returns True when the PMD was reused."""
        mem = self.mem
        base = vma.pmd_base(i)
        head = vma.pte[base]
        folio = mem.page_folio[head]
        if mem.page_flags[head] & PAGE_ANON_EXCLUSIVE or folio.refcount == 1:
            for k in range(HPAGE_PMD_NR):
                vma.ptef[base + k] |= PTE_WRITE | PTE_DIRTY
                mem.page_flags[head + k] |= PAGE_ANON_EXCLUSIVE
            return True
        self.split_huge_pmd(vma, i)
        return False

    def _wp_can_reuse_large_anon_folio(self, folio: Folio) -> bool:
        """Reuse a PTE-mapped large folio only if this mm alone maps it and only its
        mappings reference it (an approximation of the kernel's mm-id tracking)."""
        if folio.mapcount <= 1 or folio.refcount != folio.mapcount:
            return False
        av = folio.anon_vma
        return av is not None and all(v.mm is self for v in av.vmas)

    def do_wp_page(self, vma: Vma, i: int, fault_flags: int) -> int:
        mem = self.mem
        unshare = bool(fault_flags & FAULT_FLAG_UNSHARE)
        if not unshare and not vma.flags & VM_WRITE:
            raise VmFault(f"write to a read-only mapping {vma!r}")
        if vma.ptef[i] & PTE_PMD:
            if not unshare and self.do_huge_pmd_wp_page(vma, i):
                return vma.pte[i]
            self.split_huge_pmd(vma, i)
        pfn = vma.pte[i]
        f = vma.ptef[i]
        if f & PTE_SPECIAL:
            folio = None
        else:
            folio = mem.page_folio[pfn]
        if folio is not None and folio.flags & PG_ANON and not folio.flags & PG_KSM and (
                mem.page_flags[pfn] & PAGE_ANON_EXCLUSIVE or (
                    self._wp_can_reuse_large_anon_folio(folio) if folio.order
                    else self.wp_can_reuse_anon_folio(folio))):
            mem.page_flags[pfn] |= PAGE_ANON_EXCLUSIVE
            if unshare:
                return pfn
            vma.ptef[i] = f | PTE_WRITE | PTE_DIRTY          # wp_page_reuse
            return pfn
        if folio is not None and folio.flags & PG_KSM:
            mem.vmstat["cow_ksm"] += 1
        return self.wp_page_copy(vma, i, unshare)

    def wp_page_copy(self, vma: Vma, i: int, unshare: bool) -> int:
        mem = self.mem
        self.anon_vma_prepare(vma)
        old_pfn = vma.pte[i]
        old_f = vma.ptef[i]
        if old_f & PTE_SPECIAL:
            new = mem.folio_alloc(0, self.nid, 0)      # a zeroed page replaces the zero page
            old = None
        else:
            old = mem.page_folio[old_pfn]
            new = mem.folio_alloc(0, self.nid, mem.page_content[old_pfn])
        if new is None:
            raise FaultOOM("wp_page_copy")
        self._add_new_anon_rmap(new, vma, i)
        mem.folio_add_lru(new)
        vma.pte[i] = new.pfn
        vma.ptef[i] = 0 if unshare else PTE_WRITE | PTE_DIRTY
        if old is None:
            if old_f & PTE_DIRTY:
                mem.ksm.ksm_might_unmap_zero_page(self, old_f)
        else:
            self.folio_remove_rmap_pte(old, old_pfn)
            mem.folio_put(old)
        return new.pfn

    def folio_remove_rmap_pte(self, folio: Folio, pfn: int) -> None:
        folio.mapcount -= 1
        if folio.page_mapcount is not None:
            folio.page_mapcount[pfn - folio.pfn] -= 1
        if folio.flags & PG_ANON:
            self.anon_rss -= 1

    # -- user-level operations -----------------------------------------------------------
    def write_page(self, addr: int, content: Content) -> int:
        """A store that fills the page at ``addr`` with ``content`` (faulting as needed)."""
        content = make_content(content)
        vma = self.find_vma(addr)
        if vma is None:
            raise VmFault(f"{self.name}: no mapping at {addr:#x}")
        i = (addr - vma.start) >> PAGE_SHIFT
        pfn = vma.pte[i]
        if pfn < 0 or not vma.ptef[i] & PTE_WRITE:
            pfn = self.handle_mm_fault(vma, addr, FAULT_FLAG_WRITE)
        vma.ptef[i] |= PTE_DIRTY
        self.mem.set_page_content(pfn, content)
        return pfn

    def read_page(self, addr: int) -> Content | None:
        """The content seen at ``addr`` (None when nothing is mapped: reads would fault in
        the zero page)."""
        vma = self.find_vma(addr)
        if vma is None:
            raise VmFault(f"{self.name}: no mapping at {addr:#x}")
        pfn = vma.pte[(addr - vma.start) >> PAGE_SHIFT]
        return None if pfn < 0 else self.mem.page_content[pfn]

    def zap_pte_range(self, vma: Vma, lo: int, hi: int) -> None:
        """Unmap page slots [lo, hi) of ``vma`` (``zap_pte_range``; a PMD mapping wholly
        inside the range goes at once, one partly inside is split first)."""
        mem = self.mem
        pte, ptef = vma.pte, vma.ptef
        pf = mem.page_folio
        i = lo
        while i < hi:
            pfn = pte[i]
            if pfn < 0:
                i += 1
                continue
            f = ptef[i]
            if f & PTE_PMD:
                base = vma.pmd_base(i)
                if base >= lo and base + HPAGE_PMD_NR <= hi:
                    folio = pf[pte[base]]
                    for k in range(base, base + HPAGE_PMD_NR):
                        pte[k] = -1
                        ptef[k] = 0
                    folio.mapcount -= 1
                    self.anon_rss -= HPAGE_PMD_NR
                    mem.folio_put(folio)
                    i = base + HPAGE_PMD_NR
                    continue
                self.split_huge_pmd(vma, i)
                f = ptef[i]
            pte[i] = -1
            ptef[i] = 0
            i += 1
            if f & PTE_SPECIAL:
                if f & PTE_DIRTY:
                    mem.ksm.ksm_might_unmap_zero_page(self, f)
                continue
            folio = pf[pfn]
            self.folio_remove_rmap_pte(folio, pfn)
            mem.folio_put(folio)

    def madvise(self, start: int, length: int, advice: int) -> int:
        """``madvise(2)``: returns 0 or -errno (ENOMEM for unmapped parts)."""
        end = start + length
        if start & (PAGE_SIZE - 1) or length < 0:
            return -errno.EINVAL
        vmas = self.vmas_in_range(start, end, split=advice not in (MADV_DONTNEED,))
        covered = sum(min(v.end, end) - max(v.start, start) for v in vmas)
        ret = 0
        for vma in vmas:
            lo = (max(vma.start, start) - vma.start) >> PAGE_SHIFT
            hi = (min(vma.end, end) - vma.start) >> PAGE_SHIFT
            if advice == MADV_DONTNEED:
                self.zap_pte_range(vma, lo, hi)
            elif advice in (MADV_MERGEABLE, MADV_UNMERGEABLE):
                r = self.mem.ksm.ksm_madvise(vma, vma.start, vma.end, advice)
                if r:
                    return r
            elif advice == MADV_HUGEPAGE:
                vma.flags = (vma.flags | VM_HUGEPAGE) & ~VM_NOHUGEPAGE
            elif advice == MADV_NOHUGEPAGE:
                vma.flags = (vma.flags | VM_NOHUGEPAGE) & ~VM_HUGEPAGE
            else:
                return -errno.EINVAL
        if covered < length:
            ret = -errno.ENOMEM
        return ret

    def munmap(self, start: int, length: int) -> None:
        for vma in self.vmas_in_range(start, start + length):
            self.zap_pte_range(vma, 0, vma.nr_pages)
            self._remove_vma(vma)
            if vma.anon_vma is not None:
                vma.anon_vma.unlink(vma)

    def prctl(self, option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0,
              arg5: int = 0) -> int:
        if option == PR_SET_MEMORY_MERGE:
            if arg3 or arg4 or arg5:
                return -errno.EINVAL
            if arg2:
                return self.mem.ksm.ksm_enable_merge_any(self)
            return self.mem.ksm.ksm_disable_merge_any(self)
        if option == PR_GET_MEMORY_MERGE:
            if arg2 or arg3 or arg4 or arg5:
                return -errno.EINVAL
            return 1 if self.flags & MMF_VM_MERGE_ANY else 0
        return -errno.EINVAL

    # -- process lifetime ------------------------------------------------------------------
    def fork(self, child_name: str) -> "MM":
        """``dup_mm``/``dup_mmap``: the child shares every anonymous page copy-on-write."""
        mem = self.mem
        child = MM(mem, child_name, self.nid)
        child.flags = self.flags & MMF_VM_MERGE_ANY          # MMF_INIT_MASK
        child.ksm_zero_pages = self.ksm_zero_pages           # copied with the mm struct
        child.next_addr = self.next_addr
        child.pte_tables = set(self.pte_tables)
        mem.ksm.ksm_fork(child, self)
        pf = mem.page_folio
        pflags = mem.page_flags
        for vma in self.vmas:
            new = Vma(child, vma.start, vma.end, vma.flags, vma.name)
            new.pgoff = vma.pgoff
            new.file = vma.file
            if vma.anon_vma is not None:
                new.anon_vma = AnonVma(vma.anon_vma)
                new.anon_vma.link(new)
            child.vmas.append(new)                # in order: self.vmas is sorted
            if new.name is not None and new.name not in child.vma_names:
                child.vma_names[new.name] = new
            pte, ptef = vma.pte, vma.ptef
            cpte, cptef = new.pte, new.ptef
            cow = not vma.flags & VM_SHARED and vma.flags & VM_WRITE
            i = 0
            n = len(pte)
            while i < n:
                pfn = pte[i]
                if pfn < 0:
                    i += 1
                    continue
                f = ptef[i]
                if f & PTE_PMD:
                    # copy_huge_pmd: one more PMD mapping of the THP, write-protected in both
                    folio = pf[pfn]
                    folio.refcount += 1
                    folio.mapcount += 1
                    for k in range(i, i + HPAGE_PMD_NR):
                        pflags[pte[k]] &= ~PAGE_ANON_EXCLUSIVE
                        if cow:
                            ptef[k] &= ~PTE_WRITE
                        cpte[k] = pte[k]
                        cptef[k] = ptef[k]
                    child.anon_rss += HPAGE_PMD_NR
                    i += HPAGE_PMD_NR
                    continue
                if not f & PTE_SPECIAL:
                    folio = pf[pfn]
                    folio.refcount += 1
                    folio.mapcount += 1
                    if folio.page_mapcount is not None:
                        folio.page_mapcount[pfn - folio.pfn] += 1
                    pflags[pfn] &= ~PAGE_ANON_EXCLUSIVE       # folio_try_dup_anon_rmap
                    child.anon_rss += 1
                    if cow and f & PTE_WRITE:
                        f &= ~PTE_WRITE
                        ptef[i] = f
                cpte[i] = pfn
                cptef[i] = f
                i += 1
        return child

    def exit(self) -> None:
        """``exit_mm`` → ``mmput`` → ``__mmput``: KSM is told first, then everything is
        unmapped.  The mm struct lives on while KSM still holds it."""
        if self.mm_users == 0:
            return
        self.mm_users = 0
        self.mem.ksm.ksm_exit(self)
        san = self.mem.sanitizer
        for vma in self.vmas:
            self.zap_pte_range(vma, 0, vma.nr_pages)
            if vma.anon_vma is not None:
                vma.anon_vma.unlink(vma)
            vma.dead = "exit"
            if san is not None:
                san.vma_freed(vma)
        self.vmacache_invalidate()
        self.vmas = []
        self.vma_names = {}
        self.pte_tables = set()              # free_pgtables
        mmdrop(self)                         # mm_users' reference on the struct

    # -- inspection ----------------------------------------------------------------------
    def iter_present(self):
        """(address, pfn, pte bits) of every present PTE, in address order."""
        for vma in self.vmas:
            pte, ptef = vma.pte, vma.ptef
            for i in range(len(pte)):
                if pte[i] >= 0:
                    yield vma.start + (i << PAGE_SHIFT), pte[i], ptef[i]


_vma_start = attrgetter("start")


def mmgrab(mm: MM) -> None:
    """Pin the mm struct (not the address space): ``mm_count++``."""
    san = mm.mem.sanitizer
    if san is not None:
        san.mm_op("mmgrab", mm)
    mm.mm_count += 1


def mmdrop(mm: MM) -> None:
    """``mm_count--``; at 0 the struct is freed (``__mmdrop``)."""
    san = mm.mem.sanitizer
    if san is not None:
        san.mm_op("mmdrop", mm)
    mm.mm_count -= 1
    if mm.mm_count == 0 and san is not None:
        san.mm_freed(mm)


def is_zero_folio(folio: Folio) -> bool:
    return bool(folio.flags & PG_ZERO)


__all__ = [n for n in dir() if n.isupper()] + ["MM", "Vma", "AnonVma", "VmFault", "FaultOOM",
                                                "ZERO_PFN", "is_zero_folio", "mmgrab",
                                                "mmdrop"]
