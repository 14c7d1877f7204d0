"""The sanitizer beyond folios (samepage.sanitizer): mm lifetime (mm_users, mm_count,
mmgrab/mmdrop), VMA lifetime, the mmap lock, None dereferences, per-mm counters and the
quarantine of freed frames -- each report provoked by a deliberately broken operation,
most of them written as patch files (samepage.patch)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from samepage import Machine
from samepage.patch import load_patch
from samepage.sanitizer import KINDS, SanitizerReport


def two_processes(n: int = 4, token: int = 7):
    m = Machine(sanitize=True)
    procs = []
    for name in ("a", "b"):
        p = m.spawn(name)
        r = p.mmap(n, name="ram")
        p.write(r, range(n), token)
        p.madvise(r, "mergeable")
        procs.append(p)
    m.sysfs_write("pages_to_scan", 1000)
    m.sysfs_write("run", 1)
    m.mem.lru_add_drain()
    return m, procs[0], procs[1]


def patch(tmp_path: Path, text: str):
    p = tmp_path / "broken.py"
    p.write_text(textwrap.dedent(text))
    return load_patch(str(p)).applied()


def check(rep: SanitizerReport, kind: str, op: str, function: str, what: str) -> None:
    assert rep.kind == kind and kind in KINDS
    assert rep.op == op
    assert rep.function.split(" ")[0] == function
    assert rep.what == what
    assert rep.steps
    text = str(rep)
    assert text.startswith(f"sanitizer: {kind}") and f"{what}:" in text


def test_clean_lifetimes():
    m, a, b = two_processes()
    m.run_full_scans(3)
    assert a._mm.mm_count == 2                 # mm_users' reference + the mm_slot's
    a.exit()
    m.run_full_scans(2)                        # ksmd frees the slot: mmdrop
    assert a._mm.mm_count == 0 and b._mm.mm_count == 2
    assert m.sanitizer.freed_at(a._mm) is not None


def test_missing_mmgrab(tmp_path):
    # __ksm_enter without mmgrab: exit's mmdrop would free the struct under ksmd's mm_slot;
    # caught as soon as the slot exists
    with patch(tmp_path, """
        from samepage.ksm.structs import MmSlot
        from samepage.mm.mm import MMF_VM_MERGEABLE

        def __ksm_enter(ksm, mm):
            slot = MmSlot(mm)
            ksm.mm_slots_hash[id(mm)] = slot
            ksm.mm_list.append(slot)
            mm.flags |= MMF_VM_MERGEABLE
            return 0
    """):
        with pytest.raises(SanitizerReport) as e:
            two_processes()
    rep = e.value
    check(rep, "mm-refcount-mismatch", "check_all", "check_all", "mm")
    assert "a.mm_count 1 != 2 (mm_users 1, an mm_slot)" in rep.detail
    assert "madvise(ram, mergeable)" in rep.steps[-1]


def test_missing_mmdrop_is_an_mm_refcount_mismatch(tmp_path):
    # the slot freed without its mmdrop: the struct leaks
    with patch(tmp_path, """
        def _slot_del(ksm, slot):
            ksm.mm_slots_hash.pop(id(slot.mm), None)
            ksm.mm_list.remove(slot)
    """):
        m, a, b = two_processes()
        m.run_full_scans(2)
        a.madvise("ram", "unmergeable")        # no mergeable VMA: the next scan drops a
        with pytest.raises(SanitizerReport) as e:
            m.run_full_scans(2)
    rep = e.value
    check(rep, "mm-refcount-mismatch", "check_all", "check_all", "mm")
    assert "a.mm_count 2 != 1" in rep.detail


def test_ksmd_uses_a_freed_mm(tmp_path):
    m, a, b = two_processes()
    m.run_full_scans(1)
    mm = a._mm
    mm.mm_count = 1                            # a broken mmdrop elsewhere: one too many
    from samepage.mm.mm import mmdrop
    mmdrop(mm)
    with pytest.raises(SanitizerReport) as e:
        m.ksm.ksm_do_scan(1000)
    check(e.value, "mm-use-after-free", "scan_get_next_rmap_item",
          "scan_get_next_rmap_item", "mm")
    assert "test_ksmd_uses_a_freed_mm" in e.value.freed_at


def test_vma_used_after_munmap():
    m, a, b = two_processes()
    vma = a.region("ram")
    folio = m.mem.page_folio[vma.pte[0]]
    a.munmap(vma)
    m.ksm.mmap_read_locked = vma.mm
    with pytest.raises(SanitizerReport) as e:
        m.ksm.write_protect_page(vma, folio)     # ksmd kept a VMA across munmap
    check(e.value, "vma-use-after-free", "write_protect_page", "write_protect_page", "vma")
    assert "munmap" in e.value.detail
    assert e.value.freed_at.startswith("_remove_vma") or "munmap" in e.value.freed_at


def test_vma_used_after_exit():
    m, a, b = two_processes()
    vma = a.region("ram")
    a.exit()
    with pytest.raises(SanitizerReport) as e:
        m.ksm.break_ksm(vma, vma.start, vma.end)
    check(e.value, "vma-use-after-free", "break_ksm", "break_ksm", "vma")
    assert "page tables are gone" in e.value.detail
    assert e.value.freed_at.startswith("exit")


def test_merge_without_the_mmap_lock(tmp_path):
    # try_to_merge_with_ksm_page that forgets mmap_read_lock
    with patch(tmp_path, """
        def try_to_merge_with_ksm_page(ksm, rmap_item, page, kpage):
            vma = ksm.find_mergeable_vma(rmap_item.mm, rmap_item.address)
            if vma is None:
                return -14
            err = ksm.try_to_merge_one_page(vma, page, kpage)
            if err:
                return err
            ksm.remove_rmap_item_from_tree(rmap_item)
            rmap_item.anon_vma = vma.anon_vma
            return 0
    """):
        m, a, b = two_processes()
        with pytest.raises(SanitizerReport) as e:
            m.run_full_scans(3)
    check(e.value, "mmap-lock-not-held", "write_protect_page", "write_protect_page", "vma")


def test_none_vma_dereferenced(tmp_path):
    with patch(tmp_path, """
        def try_to_merge_with_ksm_page(ksm, rmap_item, page, kpage):
            vma = ksm.find_mergeable_vma(rmap_item.mm, rmap_item.address + (1 << 40))
            ksm.mmap_read_locked = rmap_item.mm
            try:
                return ksm.try_to_merge_one_page(vma, page, kpage)   # vma is None
            finally:
                ksm.mmap_read_locked = None
    """):
        m, a, b = two_processes()
        with pytest.raises(SanitizerReport) as e:
            m.run_full_scans(3)
    rep = e.value
    assert rep.kind == "null-dereference"
    assert rep.function.startswith("write_protect_page (ksm.py:")
    assert "a None VMA dereferenced" in rep.detail


def test_none_dereference_in_an_api_call():
    m, a, b = two_processes()
    with pytest.raises(SanitizerReport) as e:
        m.sanitizer.api(m, "ksmd", "break_ksm(None)", m.ksm.break_ksm, None, 0, 4096)
    assert e.value.kind == "null-dereference" and e.value.function.startswith("break_ksm")


def test_per_mm_counters():
    m, a, b = two_processes()
    m.run_full_scans(3)
    a._mm.ksm_merging_pages += 1               # the sums still agree
    b._mm.ksm_merging_pages -= 1
    with pytest.raises(SanitizerReport) as e:
        m.sanitizer.check_all(m)
    assert e.value.kind == "counters-inconsistent"
    assert "a.ksm_merging_pages 5 != 4 STABLE rmap_items" in e.value.detail
    a._mm.ksm_merging_pages -= 1
    b._mm.ksm_merging_pages += 1
    a._mm.ksm_rmap_items += 1
    b._mm.ksm_rmap_items -= 1
    m.ksm.ksm_rmap_items += 0
    with pytest.raises(SanitizerReport) as e:
        m.sanitizer.check_all(m)
    assert "a.ksm_rmap_items 5 != 4" in e.value.detail


def test_per_mm_zero_pages():
    m = Machine(sanitize=True)
    a = m.spawn("a")
    r = a.mmap(4, name="ram")
    a.write(r, range(4), 0)
    a.madvise(r, "mergeable")
    m.sysfs_write("use_zero_pages", 1)
    m.sysfs_write("run", 1)
    m.run_full_scans(3)
    assert a.ksm_stat()["ksm_zero_pages"] == 4
    a._mm.ksm_zero_pages -= 1
    m.ksm.ksm_zero_pages -= 1
    with pytest.raises(SanitizerReport) as e:
        m.sanitizer.check_all(m)
    assert "a.ksm_zero_pages 3 != 4 KSM zero PTEs" in e.value.detail


@pytest.mark.parametrize("limit", [4096, 0])
def test_quarantine_keeps_a_freed_pfn_from_reuse(limit):
    m = Machine(sanitize=True)
    m.sanitizer.quarantine_max = limit
    a = m.spawn("a")
    r = a.mmap(2, name="ram")
    a.write(r, 0, 1)
    m.mem.lru_add_drain()
    pfn = r.pte[0]
    old = m.mem.page_folio[pfn]
    a.zap(r, [0])                              # freed
    a.write(r, 1, 2)                           # a new page
    if limit:
        assert r.pte[1] != pfn                 # not the freed frame
        with pytest.raises(SanitizerReport) as e:
            m.ksm.calc_checksum(pfn)           # a late read: still the freed folio
        assert e.value.kind == "use-after-free" and e.value.folio == repr(old)
    else:
        assert r.pte[1] == pfn                 # LIFO reuse hides the use-after-free


def test_quarantine_releases_the_oldest():
    m = Machine(sanitize=True)
    m.sanitizer.quarantine_max = 3
    a = m.spawn("a")
    r = a.mmap(8, name="ram")
    a.write(r, range(5), 1)
    m.mem.lru_add_drain()
    pfns = list(r.pte[:5])
    a.zap(r, range(5))
    assert m.sanitizer.quarantined == 3
    assert sorted(p for _, q in m.sanitizer.quarantine for p in q) == sorted(pfns[2:])
    assert m.mem.nr_free_frames == 2


def test_run2_leaves_no_ksm_page_mapped():
    # the unpatched model: run = 2 unmerges every live mm, a forked child's too
    m, a, b = two_processes()
    m.run_full_scans(3)
    assert m.counters()["pages_sharing"] > 0
    a.fork("c")
    m.sysfs_write("run", 2)                    # check_all after it: nothing
    assert m.counters()["pages_shared"] == 0
    m.sanitizer.check_all(m)


def test_ksm_page_left_mapped_after_run2(tmp_path):
    # an unmerge that breaks no COW: run = 2 returns 0 with KSM pages still mapped
    m, a, b = two_processes()
    m.run_full_scans(3)
    with patch(tmp_path, """
        def break_ksm(ksm, vma, start, end):
            return 0
    """), pytest.raises(SanitizerReport) as e:
        m.sysfs_write("run", 2)
    assert e.value.kind == "ksm-page-after-unmerge" and e.value.kind in KINDS
    assert "run = 2 finished but a ram[0] still maps KSM pfn" in e.value.detail
    # while run = 2 is still unmerging (its cursor set), the same state is no report
    m.ksm.ksm_scan.mm_slot = m.ksm.mm_list[0]
    m.sanitizer.check_all(m)


def test_run2_may_leave_a_ksm_page_where_unmerge_does_not_walk():
    # A merge_any parent's child turns merging off (its VMAs lose VM_MERGEABLE) while it still
    # shares the parent's anonymous folios by COW; ksmd then makes one of those folios a KSM
    # page in place, so the child maps a KSM page in a VMA that run = 2 does not walk. 6.18's
    # remove_stable_node keeps the node (-EBUSY, no warning): not a report.
    from samepage.mm.folio import PG_KSM
    from test_unmerge_busy import child_opted_out

    m, a, c, d = child_opted_out(sanitize=True)

    def ksm_mapped(p):
        return [i for i, pfn in enumerate(p.region("ram").pte)
                if pfn >= 0 and m.mem.page_folio[pfn].flags & PG_KSM]

    assert ksm_mapped(a) == [0, 1] and ksm_mapped(c)
    m.sysfs_write("run", 2)                    # check_all after it: no report
    assert ksm_mapped(a) == [] and ksm_mapped(d) == []
    assert ksm_mapped(c)                       # left where unmerge does not walk
    assert m.counters()["pages_shared"] == 0 and m.counters()["pages_sharing"] == 0
    assert m.ksm.root_stable_tree[0].rb_node is not None     # the busy node is kept
