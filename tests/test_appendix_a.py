"""Appendix A of the spec, step by step: the worked example with its counter table.

Setup: run=1 from a stopped state, smart_scan=1, use_zero_pages=0, max_page_sharing=256.
Processes A and B registered with MADV_MERGEABLE in list order [A, B]; small folios only.
A maps a1 (X) and a2 (Y); B maps b1 (X).  Nothing writes (except in the variants).

Full scans are run with a large ``pages_to_scan``; the per-page moments of scans 1 and 2
with ``pages_to_scan = 1`` and single batches.
"""

from __future__ import annotations

import pytest

from invariants import check_invariants
from samepage import Machine
from samepage.ksm.structs import PAGE_MASK, SEQNR_MASK, STABLE_FLAG, UNSTABLE_FLAG
from samepage.mm.content import PAGE_SHIFT
from samepage.mm.folio import PG_KSM

X, Y, Z = 0x58, 0x59, 0x5A
COLS = ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile", "full_scans")


class Example:
    def __init__(self):
        m = self.m = Machine()
        m.sysfs_write("pages_to_scan", 10_000)
        assert m.sysfs_read("smart_scan") == 1
        assert m.sysfs_read("use_zero_pages") == 0
        assert m.sysfs_read("max_page_sharing") == 256
        self.A = m.spawn("A")
        self.B = m.spawn("B")
        self.ra = self.A.mmap(2, name="ra")
        self.rb = self.B.mmap(1, name="rb")
        self.A.write(self.ra, 0, X)
        self.A.write(self.ra, 1, Y)
        self.B.write(self.rb, 0, X)
        self.A.madvise(self.ra, "mergeable")
        self.B.madvise(self.rb, "mergeable")
        assert [s.mm.name for s in m.ksm.mm_list] == ["A", "B"]
        self.frame = {"a1": self.pfn("a1"), "a2": self.pfn("a2"), "b1": self.pfn("b1")}
        check_invariants(m)
        m.sysfs_write("run", 1)

    # -- accessors
    def where(self, name):
        return {"a1": (self.A, self.ra, 0), "a2": (self.A, self.ra, 1),
                "b1": (self.B, self.rb, 0)}[name]

    def pfn(self, name) -> int:
        p, r, i = self.where(name)
        return p._vma(r).pte[i]

    def item(self, name):
        p, r, i = self.where(name)
        slot = self.m.ksm.mm_slots_hash.get(id(p.mm))
        a = p._vma(r).start + (i << PAGE_SHIFT)
        for it in slot.rmap_list:
            if it.address & PAGE_MASK == a:
                return it
        return None

    def state(self, name) -> str:
        it = self.item(name)
        if it is None:
            return "-"
        if it.address & STABLE_FLAG:
            return "S"
        if it.address & UNSTABLE_FLAG:
            return f"U({it.address & SEQNR_MASK})"
        return "N"

    def row(self) -> tuple:
        return tuple(self.m.sysfs_read(n) for n in COLS)

    # -- driving ksmd
    def full_scan(self):
        m = self.m
        m.sysfs_write("pages_to_scan", 10_000)
        n = m.sysfs_read("full_scans")
        assert m.run_batch() is not None
        check_invariants(m)
        assert m.sysfs_read("full_scans") == n + 1

    def one_page(self) -> int:
        m = self.m
        m.sysfs_write("pages_to_scan", 1)
        r = m.run_batch()
        assert r is not None
        check_invariants(m)
        return r.pages


@pytest.fixture
def ex():
    return Example()


def run_scan0(ex):
    ex.full_scan()
    assert ex.row() == (0, 0, 0, 3, 1)
    assert [ex.state(n) for n in ("a1", "a2", "b1")] == ["N", "N", "N"]
    assert all(ex.item(n).oldchecksum != 0 for n in ("a1", "a2", "b1"))


def run_scan1_page_by_page(ex):
    # scan 1, a1: gate passes; stable miss; inserted UNSTABLE(1)
    assert ex.one_page() == 1
    assert ex.state("a1") == "U(1)" and ex.state("a2") == "N" and ex.state("b1") == "N"
    assert ex.row() == (0, 0, 1, 2, 1)
    # scan 1, a2: Y != X -> inserted UNSTABLE(1)
    assert ex.one_page() == 1
    assert ex.state("a2") == "U(1)"
    assert ex.row() == (0, 0, 2, 1, 1)
    # scan 1, b1: finds a1; b1's frame becomes the KSM page, a1's frame is freed
    assert ex.one_page() == 1
    assert [ex.state(n) for n in ("a1", "a2", "b1")] == ["S", "U(1)", "S"]
    assert ex.row() == (1, 1, 1, 0, 1)
    assert ex.pfn("a1") == ex.pfn("b1") == ex.frame["b1"]
    assert ex.m.mem.page_folio[ex.frame["a1"]] is None
    assert ex.m.mem.page_folio[ex.frame["b1"]].flags & PG_KSM
    node = ex.item("b1").head
    assert ex.item("a1").head is node and node.kpfn == ex.frame["b1"]
    assert node.hlist and len(node.hlist) == 2
    # the wrap: an empty batch ends scan 1
    assert ex.one_page() == 0
    assert ex.row() == (1, 1, 1, 0, 2)


def test_appendix_a_scan_0(ex):
    run_scan0(ex)
    assert ex.m.sysfs_read("pages_scanned") == 3


def test_appendix_a_scan_1_page_by_page(ex):
    run_scan0(ex)
    run_scan1_page_by_page(ex)
    assert ex.m.sysfs_read("pages_scanned") == 6


def test_appendix_a_scan_1_resets_the_unstable_tree(ex):
    run_scan0(ex)
    m = ex.m
    # nothing was inserted in scan 0; in scan 1 a1 and a2 enter a fresh tree
    run_scan1_page_by_page(ex)
    assert m.ksm.root_unstable_tree[0].rb_node == ex.item("a2")
    # scan 2 starts with a new, empty tree: a2's UNSTABLE(1) flag is cleaned lazily
    assert ex.one_page() == 1                      # a1 (A1 return)
    assert m.ksm.root_unstable_tree[0].rb_node is None
    assert ex.state("a2") == "U(1)"


def test_appendix_a_profits_after_scan_1(ex):
    run_scan0(ex)
    ex.full_scan()
    assert ex.row() == (1, 1, 1, 0, 2)
    m = ex.m
    assert m.sysfs_read("general_profit") == (1 + 0) * 4096 - 3 * 64 == 3904
    sa, sb = ex.A.ksm_stat(), ex.B.ksm_stat()
    assert (sa["ksm_merging_pages"], sa["ksm_rmap_items"], sa["ksm_process_profit"]) == \
        (1, 2, 4096 - 128) == (1, 2, 3968)
    assert (sb["ksm_merging_pages"], sb["ksm_rmap_items"], sb["ksm_process_profit"]) == \
        (1, 1, 4096 - 64) == (1, 1, 4032)
    # the same with page-by-page batches
    ex2 = Example()
    run_scan0(ex2)
    run_scan1_page_by_page(ex2)
    assert ex2.m.sysfs_read("general_profit") == 3904
    assert ex2.A.ksm_stat()["ksm_process_profit"] == 3968
    assert ex2.B.ksm_stat()["ksm_process_profit"] == 4032


def test_appendix_a_scan_2_page_by_page(ex):
    run_scan0(ex)
    run_scan1_page_by_page(ex)
    node = ex.item("a1").head
    # scan 2, a1: KSM page with item.head == N -> return (A1)
    assert ex.one_page() == 1
    assert ex.row() == (1, 1, 1, 0, 2)
    assert ex.item("a1").head is node and ex.state("a1") == "S"
    # scan 2, a2: leaves UNSTABLE(1) (age 1, no erase), re-inserted UNSTABLE(2)
    assert ex.one_page() == 1
    assert ex.state("a2") == "U(2)"
    assert ex.row() == (1, 1, 1, 0, 2)
    assert ex.m.ksm.root_unstable_tree[0].rb_node == ex.item("a2")
    # scan 2, b1: A1 return
    assert ex.one_page() == 1
    assert ex.row() == (1, 1, 1, 0, 2)
    assert ex.one_page() == 0
    assert ex.row() == (1, 1, 1, 0, 3)
    assert ex.m.sysfs_read("pages_scanned") == 9


def test_appendix_a_full_table(ex):
    # scan 0
    ex.full_scan()
    assert ex.row() == (0, 0, 0, 3, 1)
    # scan 1
    ex.full_scan()
    assert ex.row() == (1, 1, 1, 0, 2)
    assert [ex.state(n) for n in ("a1", "a2", "b1")] == ["S", "U(1)", "S"]
    # scan 2
    ex.full_scan()
    assert ex.row() == (1, 1, 1, 0, 3)
    assert ex.state("a2") == "U(2)"
    assert ex.m.sysfs_read("pages_scanned") == 9
    assert ex.m.sysfs_read("pages_skipped") == 0
    # scan 3: a2 visit v=3 processed, remaining_skips := 1
    ex.full_scan()
    assert ex.row() == (1, 1, 1, 0, 4)
    it = ex.item("a2")
    assert (it.age, it.remaining_skips) == (4, 1)
    assert ex.state("a2") == "U(3)"
    assert ex.m.sysfs_read("pages_scanned") == 12
    # scan 4: a2 visit v=4 skipped: leaves the unstable tree, pages_skipped = 1
    ex.full_scan()
    assert ex.row() == (1, 1, 0, 1, 5)
    assert ex.state("a2") == "N"
    assert ex.m.sysfs_read("pages_skipped") == 1
    assert ex.m.sysfs_read("pages_scanned") == 14       # a1 and b1 only
    it = ex.item("a2")
    assert (it.age, it.remaining_skips) == (5, 0)
    # scan 5: a2 visit v=5 processed (remaining_skips := 2), re-inserted
    ex.full_scan()
    assert ex.row() == (1, 1, 1, 0, 6)
    assert ex.state("a2") == "U(5)"
    it = ex.item("a2")
    assert (it.age, it.remaining_skips) == (6, 2)
    assert ex.m.sysfs_read("pages_scanned") == 17
    assert ex.m.sysfs_read("pages_skipped") == 1
    # the KSM page never moved
    assert ex.pfn("a1") == ex.pfn("b1") == ex.frame["b1"]
    assert ex.pfn("a2") == ex.frame["a2"]


def test_appendix_a_variant_b_writes_b1_during_scan_3(ex):
    for _ in range(3):
        ex.full_scan()
    assert ex.row() == (1, 1, 1, 0, 3)
    kpfn = ex.pfn("b1")
    cow = ex.m.vmstat["cow_ksm"]
    assert ex.one_page() == 1                     # scan 3 begins: a1 (A1 return)
    ex.B.write(ex.rb, 0, Z)                       # before ksmd reaches b1
    check_invariants(ex.m)
    assert ex.m.vmstat["cow_ksm"] == cow + 1      # private copy at once
    assert ex.pfn("b1") != kpfn and ex.B.read(ex.rb, 0) == Z
    assert ex.pfn("a1") == kpfn and ex.A.read(ex.ra, 0) == X    # A still maps the KSM frame
    assert ex.row()[:2] == (1, 1)                 # not yet noticed
    assert ex.state("b1") == "S"
    assert ex.one_page() == 1                     # a2 (v=3: processed, re-inserted)
    assert ex.row()[:2] == (1, 1)
    assert ex.one_page() == 1                     # b1: branch B
    # pages_sharing 1 -> 0; N keeps a1, so pages_shared stays 1 although nothing is saved
    assert ex.row() == (1, 0, 1, 1, 3)
    assert ex.state("b1") == "N"                  # new content: checksum gate -> volatile
    assert ex.item("a1").head.rmap_hlist_len == 1
    assert ex.m.sysfs_read("general_profit") == 0 * 4096 - 3 * 64
    assert ex.one_page() == 0
    assert ex.row() == (1, 0, 1, 1, 4)


def test_appendix_a_variant_b_rewrites_same_content_before_scan_3_remerges_on_that_visit(ex):
    """v6.18: oldchecksum still holds the pre-merge checksum, so unchanged content
    re-merges on the very visit that notices the COW (§9.4)."""
    for _ in range(3):
        ex.full_scan()
    kpfn = ex.pfn("b1")
    ex.B.write(ex.rb, 0, X)                       # between scans 2 and 3
    check_invariants(ex.m)
    assert ex.pfn("b1") != kpfn
    assert ex.one_page() == 1                     # a1 (the LRU batch was drained at start)
    assert ex.one_page() == 1                     # a2
    assert ex.one_page() == 1                     # b1: leaves N, gate passes, joins N again
    assert ex.row()[:2] == (1, 1)
    assert ex.state("b1") == "S"
    assert ex.pfn("b1") == kpfn


def test_appendix_a_variant_b_rewrites_same_content_during_scan_3(ex):
    """The copy made during scan 3 still sits in the per-CPU LRU add batch (with a
    reference) when ksmd reaches b1, so write_protect_page's refcount check fails (C3: no
    merge, volatile); the batch is drained at the start of scan 4 and b1 re-merges then."""
    for _ in range(3):
        ex.full_scan()
    kpfn = ex.pfn("b1")
    assert ex.one_page() == 1                     # a1
    ex.B.write(ex.rb, 0, X)
    check_invariants(ex.m)
    copy = ex.pfn("b1")
    assert copy != kpfn
    assert ex.one_page() == 1                     # a2
    assert ex.one_page() == 1                     # b1: gate passes, merge attempt fails
    assert ex.row() == (1, 0, 1, 1, 3)
    assert ex.state("b1") == "N"
    assert ex.pfn("b1") == copy
    assert ex.one_page() == 0                     # wrap
    ex.full_scan()                                # scan 4: b1 processed (age 3) and merged
    assert ex.row()[:2] == (1, 1)
    assert ex.state("b1") == "S" and ex.pfn("b1") == kpfn
