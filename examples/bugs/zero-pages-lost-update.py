"""Bug: ksm_zero_pages updated non-atomically, fixed by "mm/ksm: fix ksm_zero_pages
accounting" (2024).

Before the fix ksm_zero_pages was a plain unsigned long: ksmd incremented it when it mapped
the zero page (ksm_map_zero_page, from replace_page), while ksm_might_unmap_zero_page
decremented it from the page-table side (zap, munmap, exit, a write fault) with no lock in
common, so the two read-modify-writes can interleave: ksmd reads N, a user thread zaps a
KSM zero page (N - 1), ksmd writes N + 1: one zero page too many, forever (or, the other way
round, the "-1" users saw).  The fix made it atomic_long_t.  This patch splits ksmd's
increment into a read and a write with a preemption point between them.  Found as
``counters-inconsistent`` (ksm_zero_pages against the KSM zero PTEs).

  samepage explore examples/bugs/zero-pages-lost-update.toml --patch examples/bugs/zero-pages-lost-update.py
"""

from samepage.ksm.ksm import *  # noqa: F401,F403 - the engine's names, as ksm.py sees them
from samepage.ksm.ksm import (EFAULT, ERR_BUSY, KSM_GET_FOLIO_LOCK,  # noqa: F401
                              KSM_GET_FOLIO_NOLOCK, KSM_GET_FOLIO_TRYLOCK, OP_SCAN_START,
                              OP_SKIP, OP_VISIT_PMD, OP_NO_PAGE, PAGE_MASK, PAGE_SIZE,
                              PAGE_SHIFT, PG_ANON, PTE_SPECIAL, PTE_PMD, PTE_DIRTY,
                              VM_MERGEABLE, MMF_VM_MERGEABLE, ZERO_PFN)


def replace_page(ksm, vma: Vma, page: int, kpage: int, orig_pte: int) -> int:
    mem = ksm.mem
    if mem.sanitizer is not None:
        mem.sanitizer.vma_access(ksm, vma, "replace_page")
    mm = vma.mm
    folio = mem.page_folio[page]
    if folio is None and mem.sanitizer is not None:
        mem.sanitizer.freed_page_used(page, "replace_page")
    i = mem.page_index[folio.pfn] - vma.pgoff
    if vma.ptef[i] & PTE_PMD:
        ksm._fail("replace_page: PMD mapping")
        return EFAULT
    if vma.pte[i] != page or vma.ptef[i] != orig_pte:
        ksm._fail("replace_page: PTE changed")
        return EFAULT
    if kpage != ZERO_PFN:
        kfolio = mem.page_folio[kpage]
        if mem.sanitizer is not None:
            mem.sanitizer.check_map(kpage, kfolio, "replace_page: map kpage")
        mem.folio_get(kfolio)
        kfolio.mapcount += 1               # folio_add_anon_rmap_pte
        vma.pte[i] = kpage
        vma.ptef[i] = 0                    # mk_pte(kpage, vm_page_prot): read-only
    else:
        vma.pte[i] = ZERO_PFN
        vma.ptef[i] = PTE_SPECIAL | PTE_DIRTY
        # before the fix: a plain unsigned long, read ...
        nr = ksm.ksm_zero_pages
        ksm.preempt("replace_page:ksm_zero_pages")   # another CPU zaps a zero page
        ksm.ksm_zero_pages = nr + 1       # ... and written back: a lost update
        mm.ksm_zero_pages += 1
        mm.anon_rss -= 1
    folio.mapcount -= 1                    # folio_remove_rmap_pte
    if folio.page_mapcount is not None:
        folio.page_mapcount[page - folio.pfn] -= 1
    if kpage != ZERO_PFN:
        pass                               # anon rss unchanged: one anon page for another
    mem.folio_put(folio)
    return 0
