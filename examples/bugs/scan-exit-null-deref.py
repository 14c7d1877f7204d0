"""Bug: "ksm: fix NULL pointer dereference in scan_get_next_rmap_item()" (2011).

As that commit describes it (Andrea Righi's report, lkml.org/lkml/2011/6/1/742): with one
registered mm, ksmd starts a full scan (ksm_scan.mm_slot is ksm_mm_head, the list is not
empty) and drops ksm_mmlist_lock; meanwhile the task exits and __ksm_exit removes the last
mm_slot (easy to free: no rmap_items yet).  ksmd then takes list_entry(ksm_mm_head.next):
the list is empty, so it gets ksm_mm_head itself, whose mm is NULL: an oops in ksmd.  The
fix re-checks ``if (mm_slot == &ksm_mm_head) return NULL`` after taking the next slot (the
model's second ``if not self.mm_list: return None``); this patch drops it.  The explorer
finds it as an ``oops`` (IndexError on the empty list).

  samepage explore examples/bugs/scan-exit-null-deref.toml --patch examples/bugs/scan-exit-null-deref.py
"""

from samepage.ksm.ksm import *  # noqa: F401,F403 - the engine's names, as ksm.py sees them
from samepage.ksm.ksm import (EFAULT, ERR_BUSY, KSM_GET_FOLIO_LOCK,  # noqa: F401
                              KSM_GET_FOLIO_NOLOCK, KSM_GET_FOLIO_TRYLOCK, OP_SCAN_START,
                              OP_SKIP, OP_VISIT_PMD, OP_NO_PAGE, PAGE_MASK, PAGE_SIZE,
                              PAGE_SHIFT, PG_ANON, PTE_SPECIAL, PTE_PMD, PTE_DIRTY,
                              VM_MERGEABLE, MMF_VM_MERGEABLE, ZERO_PFN)


def scan_get_next_rmap_item(ksm):
    """Returns (rmap_item, page) with a reference on the page's folio, or None."""
    if not ksm.mm_list:
        return None
    scan = ksm.ksm_scan
    mem = ksm.mem
    slot = scan.mm_slot
    if slot is None:
        ksm.ops[OP_SCAN_START] += 1
        ksm.advisor_start_scan()
        mem.lru_add_drain_all()
        if ksm.preempt is not None:
            ksm.preempt("scan:start")        # lru_add_drain_all sleeps; mm_list re-checked
        if not ksm.ksm_merge_across_nodes:
            for node in list(ksm.migrate_nodes):
                f = ksm.ksm_get_folio(node, KSM_GET_FOLIO_NOLOCK)
                if f is not None:
                    mem.folio_put(f)
        for nid in range(ksm.ksm_nr_node_ids):
            ksm.root_unstable_tree[nid].rb_node = None
        # 2011: no re-check here; list_entry(ksm_mm_head.next) of an empty list is the
        # head itksm, whose mm is NULL
        slot = scan.mm_slot = ksm.mm_list[0]
        scan.address = 0
        scan.rmap_index = 0
    pf = mem.page_folio
    ops = ksm.ops
    while True:                                   # next_mm:
        mm = slot.mm
        if mem.sanitizer is not None:
            mem.sanitizer.mm_access(mm, "scan_get_next_rmap_item")
        if ksm.preempt is not None and not scan.address:
            ksm.preempt("scan:next-mm")          # a new mm, before mmap_read_lock(mm)
        exiting = mm.mm_users == 0
        if not exiting:
            vmas = mm.vmas
            vi = mm.vma_index(scan.address)       # vma_iter_init(&vmi, mm, address)
            while vi < len(vmas):
                vma = vmas[vi]
                vi += 1
                if not vma.flags & VM_MERGEABLE:
                    continue
                if scan.address < vma.start:
                    scan.address = vma.start
                if vma.anon_vma is None:
                    scan.address = vma.end
                    continue
                vstart = vma.start
                pte = vma.pte
                ptef = vma.ptef
                n = len(pte)
                i = (scan.address - vstart) >> PAGE_SHIFT
                while i < n:
                    pfn = pte[i]
                    if pfn >= 0 and not ptef[i] & PTE_SPECIAL:
                        folio = pf[pfn]
                        if folio.flags & PG_ANON:
                            addr = vstart + (i << PAGE_SHIFT)
                            folio.refcount += 1          # folio_get
                            item = ksm.get_next_rmap_item(slot, addr)
                            if item is None:     # alloc_rmap_item failed
                                mem.folio_put(folio)
                                scan.address = addr
                                return None
                            if ksm.ksm_smart_scan and ksm.should_skip_rmap_item(folio, item):
                                ops[OP_SKIP] += 1
                                mem.folio_put(folio)
                                i += 1
                                continue
                            scan.address = addr + PAGE_SIZE
                            if ptef[i] & PTE_PMD:
                                ops[OP_VISIT_PMD] += 1   # a PMD mapping: a shorter walk
                            return item, pfn
                    else:
                        ops[OP_NO_PAGE] += 1             # folio_walk_start found none
                    i += 1
                scan.address = vma.end
        if exiting:
            scan.address = 0
            scan.rmap_index = 0
        ksm.remove_trailing_rmap_items(slot, scan.rmap_index)
        nxt = ksm._slot_next(slot)
        scan.mm_slot = nxt
        if scan.address == 0:
            # no VM_MERGEABLE VMA (or the mm is exiting): forget this mm
            ksm.ff_dirty = True
            ksm._slot_del(slot)
            mm.flags &= ~MMF_VM_MERGEABLE        # 6.18 keeps MMF_VM_MERGE_ANY
        if nxt is not None:
            slot = nxt
            scan.address = 0
            scan.rmap_index = 0
            continue
        ksm.advisor_stop_scan()
        scan.seqnr += 1
        return None
