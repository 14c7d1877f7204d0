"""Bug: "mm/ksm: fix race with VMA iteration and mm_struct teardown" (Liam R. Howlett,
2023, Fixes: "mm/ksm: use vma iterators instead of vma linked list", 2022).

As the fix's description says (read in the mm-commits mail "+
mm-ksm-fix-race-with-vma-iteration-and-mm_struct-teardown.patch added to
mm-hotfixes-unstable branch", 8 Mar 2023, reported by syzbot and Pengfei Xu): exit_mmap()
tears down the VMAs and the maple tree with the mmap_lock held for write;
unmerge_and_remove_all_rmap_items() (echo 2 > run) took mmap_read_lock and ran
for_each_vma() over the destroyed tree, testing ksm_test_exit() only inside the loop, i.e.
after the iterator had already dereferenced the tree.  The fix tests ksm_test_exit() right
after mmap_read_lock and skips the walk (``goto mm_exiting``; the model's
``if mm.mm_users != 0``).

This patch is the 2022 loop: the VMA iterator (VMA_ITERATOR(vmi, mm, 0), set up before
mmap_read_lock as in the kernel) walks whatever the tree held, and the exit test comes
inside the loop, after the iterator has read the VMA.  The explorer lets the exiting task's
exit_mmap run at ``unmerge:next-mm`` (before the run = 2 writer takes the read lock) and
reports ``vma-use-after-free`` in the iterator.

  samepage explore examples/bugs/unmerge-exit-vma.toml --patch examples/bugs/unmerge-exit-vma.py
"""

from samepage.ksm.ksm import MMF_VM_MERGE_ANY, MMF_VM_MERGEABLE, VM_MERGEABLE


def unmerge_and_remove_all_rmap_items(ksm):
    scan = ksm.ksm_scan
    san = ksm.mem.sanitizer
    scan.mm_slot = ksm.mm_list[0] if ksm.mm_list else None
    while scan.mm_slot is not None:
        slot = scan.mm_slot
        mm = slot.mm
        vmi = list(mm.vmas)                  # VMA_ITERATOR(vmi, mm, 0): the maple tree
        if ksm.preempt is not None:
            ksm.preempt("unmerge:next-mm")   # before mmap_read_lock(mm)
        held = ksm.mmap_read_locked
        ksm.mmap_read_locked = mm
        try:
            for vma in vmi:                  # for_each_vma(vmi, vma)
                if san is not None:          # mas_find() reads the (destroyed) tree
                    san.vma_access(ksm, vma, "for_each_vma", need_lock=False)
                if mm.mm_users == 0:         # 2022: ksm_test_exit() inside the loop
                    break
                if not vma.flags & VM_MERGEABLE or vma.anon_vma is None:
                    continue
                err = ksm.break_ksm(vma, vma.start, vma.end)
                if err:
                    scan.mm_slot = None
                    return err
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
