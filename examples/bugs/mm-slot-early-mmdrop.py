"""Bug: the mm_struct freed while its mm_slot still points at it -- the lifetime rule of
"ksm: fix oom deadlock" (Hugh Dickins, 2009, [PATCH 9/12] of the KSM series for 2.6.32)
broken.

That commit (read in its linux-mm posting of 3 Aug 2009) stopped __ksm_exit from taking
ksm_thread_mutex: when the exiting mm is at the ksm_scan cursor or has rmap_items,
__ksm_exit now leaves its mm_slot on the list "for ksmd to free" (only synchronizing with
down_write/up_write of mmap_sem), so "__ksm_enter raise mm_count to hold the mm_struct,
ksmd's exit processing ... mmdrop it"; the fast path (no rmap_items, not at the cursor)
frees the slot at once and mmdrops there -- "when ksmd is not running, the raised mm_count
would otherwise leak mm_structs".  This patch drops the slot's mm_count in __ksm_exit on
both paths, as if every exit took the fast path: the mm_struct is freed at exit while the
slot left for ksmd still points at it.  The sanitizer reports ``mm-use-after-free`` (an
mm_slot pointing at a freed mm_struct; ksmd would then read slot->mm).

  samepage explore examples/bugs/mm-slot-early-mmdrop.toml --patch examples/bugs/mm-slot-early-mmdrop.py
"""

from samepage.ksm.ksm import MMF_VM_MERGE_ANY, MMF_VM_MERGEABLE, mmdrop


def __ksm_exit(ksm, mm):
    slot = ksm.mm_slots_hash.get(id(mm))
    easy_to_free = False
    if slot is not None and ksm.ksm_scan.mm_slot is not slot:
        if not slot.rmap_list:
            ksm._slot_del(slot)              # mm_slot_free + mmdrop
            easy_to_free = True
        else:
            ksm.mm_list.remove(slot)
            cur = ksm.ksm_scan.mm_slot
            pos = 0 if cur is None else ksm.mm_list.index(cur) + 1
            ksm.mm_list.insert(pos, slot)
    if easy_to_free:
        mm.flags &= ~(MMF_VM_MERGE_ANY | MMF_VM_MERGEABLE)
    elif slot is not None:
        mmdrop(mm)                           # BUG: the slot left for ksmd still holds it
