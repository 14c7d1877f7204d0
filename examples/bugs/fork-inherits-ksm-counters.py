"""Bug: a forked child inherits its parent's per-mm KSM counters, fixed by "mm/ksm: fix
incorrect KSM counter handling in mm_struct during fork" (Donet Tom, 2025, commit
4d6fc29f3634 in Linus's tree; Fixes: "ksm: count ksm merging pages for each process" and
"ksm: count allocated ksm rmap_items for each process", 2022, and "ksm: count all zero
pages placed by KSM", 2023).

As the fix says (read in its stable-tree posting, Oct 2025): dup_mm() copies the whole
mm_struct, so ``ksm_merging_pages``, ``ksm_rmap_items`` and ``ksm_zero_pages`` came along
to the child "while the corresponding rmap items are not" -- the child's
/proc/PID/ksm_stat showed its parent's merging (the selftest: "ksm_merging_page in child:
32"), stale forever since the child has no rmap_items to unmerge; and the child's KSM zero
pages were counted per mm but not in the global ksm_zero_pages, which later went wrong when
they were unmapped.  The fix resets the first two in ksm_fork and adds the inherited zero
pages to the global counter.

This patch is ksm_fork before the fix (the model's MM() starts its counters at 0, so the
patch copies them as dup_mm's memcpy did).  The sanitizer reports
``counters-inconsistent`` right after the fork (Σ mm.ksm_merging_pages against the STABLE
rmap_items, the child's ksm_stat against its empty rmap_list).

  samepage explore examples/bugs/fork-inherits-ksm-counters.toml --patch examples/bugs/fork-inherits-ksm-counters.py
"""

from samepage.ksm.ksm import MMF_VM_MERGEABLE


def ksm_fork(ksm, mm, oldmm):
    mm.ksm_merging_pages = oldmm.ksm_merging_pages   # dup_mm: *mm = *oldmm
    mm.ksm_rmap_items = oldmm.ksm_rmap_items
    ksm.ff_invalidate()
    if oldmm.flags & MMF_VM_MERGEABLE:
        ksm.ksm_enter(mm)          # BUG: counters not reset, zero pages not added globally
