"""Bug: ``run = 2`` that loses an -ENOMEM from break_ksm and reports success -- the
unmerge_and_remove_all_rmap_items of before "ksm: fix endless loop on oom" (Hugh Dickins,
[PATCH 7/12] of the KSM series for 2.6.32, 3 Aug 2009).

Before that patch (read in its linux-mm posting) unmerge_ksm_pages and
unmerge_and_remove_all_rmap_items returned void: break_ksm looped "endlessly ignoring
VM_FAULT_OOM".  The patch made break_ksm return -ENOMEM on VM_FAULT_OOM because "in general
(especially for MADV_UNMERGEABLE and KSM_RUN_UNMERGE) we do need to route the error (or
kill) back to the caller", made the unmerge stop at the first error, and made run_store
set ``ksm_run = KSM_RUN_STOP`` and return the error; its break_ksm comment gives the rule:
"we might therefore have more kernel pages allocated than we're counting as nodes in the
stable tree ... The important thing is to not let VM_MERGEABLE be cleared while any such
pages might remain in the area."  (The pre-patch kernel hung in the loop instead; the model
has no endless fault retry, so this patch keeps the -ENOMEM but, as the void pre-patch
callers did, drops it.)

With ``--fail-alloc folio`` the explorer makes the unshare fault's folio allocation fail
inside the unmerge; this patch carries on, removes the rmap_items and returns 0, so
``echo 2 > run`` succeeds and run stays 2 while the process still maps its KSM page: the
sanitizer's ``ksm-page-after-unmerge``.  Unpatched, the write fails with ENOMEM and run
becomes 0 (the pages stay merged, as the kernel leaves them).

  samepage explore examples/bugs/unmerge-oom-ignored.toml --patch examples/bugs/unmerge-oom-ignored.py --fail-alloc folio
"""

from samepage.ksm.ksm import MMF_VM_MERGE_ANY, MMF_VM_MERGEABLE, VM_MERGEABLE


def unmerge_and_remove_all_rmap_items(ksm):
    scan = ksm.ksm_scan
    scan.mm_slot = ksm.mm_list[0] if ksm.mm_list else None
    while scan.mm_slot is not None:
        slot = scan.mm_slot
        mm = slot.mm
        if ksm.preempt is not None:
            ksm.preempt("unmerge:next-mm")
        held = ksm.mmap_read_locked
        ksm.mmap_read_locked = mm
        try:
            if mm.mm_users != 0:
                for vma in list(mm.vmas):
                    if not vma.flags & VM_MERGEABLE or vma.anon_vma is None:
                        continue
                    ksm.break_ksm(vma, vma.start, vma.end)   # BUG: -ENOMEM dropped
            ksm.remove_trailing_rmap_items(slot, 0)
        finally:
            ksm.mmap_read_locked = held
        scan.mm_slot = ksm._slot_next(slot)
        if mm.mm_users == 0:
            ksm._slot_del(slot)
            mm.flags &= ~(MMF_VM_MERGEABLE | MMF_VM_MERGE_ANY)
    ksm.remove_all_stable_nodes()
    scan.seqnr = 0
    scan.address = 0
    scan.rmap_index = 0
    return 0
