"""Bug: ``run = 2`` misses the KSM pages of a process forked while it unmerges, fixed by
"ksm: remove old stable nodes more thoroughly" (Hugh Dickins, [PATCH 6/11] of the KSM NUMA
series, 25 Jan 2013, merged for 3.9).

From 2.6.32 (2009) __ksm_enter always inserted a new mm_slot "just behind the scanning
cursor, to let the area settle down a little" (list_add_tail on ksm_scan.mm_slot).  The
fix's description (read in its linux-mm posting, cause 2 of three) says: "Nice when ksmd is
running, but not so nice when we're trying to unmerge all mms: we were missing those mms
forked and inserted behind the unmerge cursor.  Easily fixed by inserting at the end when
KSM_RUN_UNMERGE" -- the comment mm/ksm.c still carries: "otherwise KSM pages in newly
forked mms will be missed".  The same patch added remove_all_stable_nodes, whose
``WARN_ON_ONCE(page_mapped(page))`` ("it shouldn't occur") is what the sanitizer's
``ksm-page-after-unmerge`` checks: ``echo 2 > run`` returned 0, yet the child forked at
``unmerge:next-mm`` (just before the run = 2 writer takes the parent's mmap lock, the parent
still fully merged) maps the parent's KSM page, and its stable node stays busy.

This patch is the 2009-2013 __ksm_enter: behind the cursor whatever ksm_run says.

  samepage explore examples/bugs/unmerge-fork-behind-cursor.toml --patch examples/bugs/unmerge-fork-behind-cursor.py
"""

from samepage.ksm.ksm import MMF_VM_MERGEABLE, MmSlot, mmgrab


def __ksm_enter(ksm, mm):
    slot = MmSlot(mm)
    ksm.mm_slots_hash[id(mm)] = slot
    if ksm.ksm_scan.mm_slot is None:         # the cursor at ksm_mm_head: the end
        ksm.mm_list.append(slot)
    else:
        # BUG: behind the cursor also when KSM_RUN_UNMERGE: the unmerge has passed it
        ksm.mm_list.insert(ksm.mm_list.index(ksm.ksm_scan.mm_slot), slot)
    mm.flags |= MMF_VM_MERGEABLE
    mmgrab(mm)
    return 0
