"""Large anonymous folios: THP (PMD-sized) and mTHP, and splitting them.

Models ``mm/huge_memory.c`` and the parts of ``mm/memory.c`` / ``mm/migrate.c`` that KSM
meets: ``thp_vma_allowable_orders`` (the ``transparent_hugepage/enabled`` and
``hugepages-<size>kB/enabled`` policies), ``do_huge_pmd_anonymous_page`` and
``alloc_anon_folio`` (which order a write fault allocates), ``__split_huge_pmd`` (a PMD
mapping becomes 512 PTE mappings), ``split_huge_page`` → ``__folio_split`` with its
reference rule (``can_split_folio`` / ``folio_expected_ref_count``: the caller must hold
exactly one reference besides the mappings and the swap cache), and ``remap_page`` with
``RMP_USE_SHARED_ZEROPAGE`` (``try_to_map_unused_to_zeropage``: after a successful split of an
anonymous folio every zero-filled subpage is remapped to the shared zero page and freed).

A PMD mapping is kept in the VMA's page-table arrays as 512 entries that all carry
``PTE_PMD``; it counts as one mapping (one reference, mapcount 1).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from .content import PAGE_SHIFT
from .folio import (PAGE_ANON_EXCLUSIVE, PG_ANON, PG_DIRTY, PG_FREED, PG_LOCKED, PG_LRU,
                    PG_SWAPCACHE, ZERO_PFN, Folio, MemoryError_)

HPAGE_PMD_ORDER = 9
HPAGE_PMD_NR = 1 << HPAGE_PMD_ORDER
THP_MODES = ("always", "madvise", "never")
MTHP_MODES = ("always", "inherit", "madvise", "never")


@dataclass
class ThpPolicy:
    """``/sys/kernel/mm/transparent_hugepage``: the top-level mode and one mode per size.

    ``sizes`` maps an order (1..9) to its ``hugepages-<kB>kB/enabled`` mode; by default the
    PMD size inherits the top-level mode and every smaller size is ``never``, as on a
    freshly booted kernel.  ``split_zero_remap`` is the 6.18 behaviour of remapping
    zero-filled subpages to the shared zero page after a split (a proposed patch, NP26 in the
    spec, would turn it off for KSM-triggered splits)."""

    enabled: str = "madvise"
    sizes: dict[int, str] = field(default_factory=lambda: {HPAGE_PMD_ORDER: "inherit"})
    split_zero_remap: bool = True

    @staticmethod
    def order_of_kb(kb: int) -> int:
        order = (kb // 4).bit_length() - 1
        if kb < 8 or kb > 2048 or 4 << order != kb:
            raise ValueError(f"no large-folio size of {kb} KiB (8..2048, a power of two)")
        return order

    def enable_mthp_kb(self, sizes_kb) -> None:
        for kb in sizes_kb:
            self.sizes[self.order_of_kb(kb)] = "inherit"

    def allowable_orders(self, vma_flags: int, hugepage_flag: int, nohugepage_flag: int,
                         anon: bool = True) -> list[int]:
        """``thp_vma_allowable_orders`` for a fault: orders allowed in the VMA, highest first."""
        if not anon or vma_flags & nohugepage_flag:
            return []
        out = []
        for order in sorted(self.sizes, reverse=True):
            mode = self.sizes[order]
            if mode == "inherit":
                mode = self.enabled
            if mode == "always" or (mode == "madvise" and vma_flags & hugepage_flag):
                out.append(order)
        return out


def folio_mappings(mm_mod, folio: Folio, mem) -> list:
    """The rmap walk of an anonymous folio: (vma, index, is_pmd) of every entry that maps one
    of its pages, through the anon_vma (``rmap_walk_anon``)."""
    av = folio.anon_vma
    if av is None:
        return []
    head = folio.pfn
    nr = 1 << folio.order
    first = mem.page_index[head]
    out = []
    for vma in av.vmas:
        lo = first - vma.pgoff
        hi = lo + nr
        if hi <= 0 or lo >= vma.nr_pages:
            continue
        pte, ptef = vma.pte, vma.ptef
        for i in range(max(lo, 0), min(hi, vma.nr_pages)):
            pfn = pte[i]
            if head <= pfn < head + nr and not ptef[i] & mm_mod.PTE_SPECIAL:
                out.append((vma, i))
    return out


def split_huge_page(mem, page: int) -> int:
    """Split the locked large anonymous folio of ``page`` into order-0 folios.

    Returns 0 or -errno.  On success the caller's reference and the folio lock stay with the
    new folio of ``page``; every other new folio holds only its mappings' references."""
    from . import mm as mm_mod

    folio = mem.page_folio[page]
    if folio is None or folio.flags & PG_FREED:
        raise MemoryError_(f"split_huge_page of a freed page {page}")
    if not folio.order:
        return 0
    if not folio.flags & PG_LOCKED:
        raise MemoryError_(f"split_huge_page of an unlocked {folio!r}")
    if not folio.flags & PG_ANON or folio.anon_vma is None:
        _count_split(mem, folio.order, failed=True)
        return -errno.EBUSY
    nr = 1 << folio.order
    swap = nr if folio.flags & PG_SWAPCACHE else 0
    if folio.refcount - 1 != folio.mapcount + swap:
        _count_split(mem, folio.order, failed=True)
        return -errno.EAGAIN
    maps = folio_mappings(mm_mod, folio, mem)
    head = folio.pfn
    order = folio.order
    # __split_huge_pmd for every PMD mapping, then one new order-0 folio per page
    flags = (folio.flags & (PG_ANON | PG_DIRTY)) | PG_LRU
    anon_vma = folio.mapping
    refs = [0] * nr
    mapped = [0] * nr
    for vma, i in maps:
        pfn = vma.pte[i]
        if vma.ptef[i] & mm_mod.PTE_PMD:
            vma.ptef[i] &= ~mm_mod.PTE_PMD
            vma.mm.pte_tables.add((vma.start >> PAGE_SHIFT) + i >> HPAGE_PMD_ORDER)
        mapped[pfn - head] += 1
        refs[pfn - head] += 1
    refs[page - head] += 1                 # the caller's reference moves to its page
    base_index = mem.page_index[head]
    # the large folio no longer exists: its handles read PG_FREED from here on
    mem._free_frames(head, order)
    new = []
    for k in range(nr):
        f = mem._folio_init(head + k, 0)
        f.refcount = refs[k]
        f.mapcount = mapped[k]
        f.flags = flags | (PG_LOCKED if k == page - head else 0)
        f.mapping = anon_vma
        new.append(f)
        mem.page_index[head + k] = base_index + k
    if mem.sanitizer is not None:
        mem.sanitizer.folio_freed(folio, pfn_reusable=False)
    for f in new:
        if f.refcount == 0:                # a page nobody maps any more goes back now
            mem._free_folio(f)
    _count_split(mem, order, failed=False)
    if mem.thp.split_zero_remap:
        _remap_zero_subpages(mem, mm_mod, maps, new, head)
    return 0


def _count_split(mem, order: int, failed: bool) -> None:
    """/proc/vmstat's thp_split_page[_failed] count PMD-sized folios only; every size has its
    own hugepages-<kB>kB/stats/split[_failed] (kept as mthp_<kB>kB_split[_failed])."""
    suffix = "_failed" if failed else ""
    if order == HPAGE_PMD_ORDER:
        mem.vmstat["thp_split_page" + suffix] += 1
    key = f"mthp_{4 << order}kB_split{suffix}"
    mem.vmstat[key] = mem.vmstat.get(key, 0) + 1


def _remap_zero_subpages(mem, mm_mod, maps, new, head) -> None:
    """``try_to_map_unused_to_zeropage``: zero-filled subpages become shared-zero-page PTEs
    (special, not dirty: not KSM zero pages) and their memory is freed."""
    pc = mem.page_content
    for vma, i in maps:
        pfn = vma.pte[i]
        if pc[pfn] != 0 or pc[pfn].__class__ is not int or vma.flags & mm_mod.VM_LOCKED:
            continue
        f = new[pfn - head]
        vma.pte[i] = ZERO_PFN
        vma.ptef[i] = mm_mod.PTE_SPECIAL
        vma.mm.anon_rss -= 1
        f.mapcount -= 1
        mem.page_flags[pfn] &= ~PAGE_ANON_EXCLUSIVE
        mem.folio_put(f)
