"""The testable behaviours of spec §12 (items 1-18 and 22-25; THP and concurrency items
19-21 are covered elsewhere), driven through the Python API as a user would, with the
whole-state invariant checker run after every step.
"""

from __future__ import annotations

import errno

import pytest

from invariants import check_invariants, item_state as state, rmap_item_at
from samepage import Machine
from samepage.ksm.rbtree import rb_inorder
from samepage.ksm.structs import STABLE_NODE_CHAIN
from samepage.mm.content import PAGE_SHIFT, PAGE_SIZE
from samepage.mm.folio import PG_KSM, ZERO_PFN
from samepage.mm.mm import (MMF_VM_MERGE_ANY, MMF_VM_MERGEABLE, PR_GET_MEMORY_MERGE,
                            PR_SET_MEMORY_MERGE, PTE_DIRTY, PTE_SPECIAL, PTE_WRITE,
                            VM_DONTEXPAND, VM_DROPPABLE, VM_HUGETLB, VM_IO, VM_MAYSHARE,
                            VM_MERGEABLE, VM_MIXEDMAP, VM_PFNMAP, VM_READ, VM_SHARED, VM_WRITE)

BIG = 100_000


# --------------------------------------------------------------------------- helpers
def new_machine(pages_to_scan: int = BIG, **tunables) -> Machine:
    m = Machine()
    m.sysfs_write("pages_to_scan", pages_to_scan)
    for k, v in tunables.items():
        m.sysfs_write(k, v)
    return m


def c(m: Machine, name: str) -> int:
    return m.sysfs_read(name)


def counters(m: Machine, *names: str) -> tuple:
    return tuple(m.sysfs_read(n) for n in names)


def scan(m: Machine, n: int = 1) -> None:
    """Run exactly ``n`` full scans, checking invariants after every batch."""
    target = c(m, "full_scans") + n
    guard = 0
    while c(m, "full_scans") < target:
        assert m.run_batch() is not None, "ksmd is not running"
        check_invariants(m)
        guard += 1
        assert guard < 1_000_000
    assert c(m, "full_scans") == target


def batch(m: Machine) -> int:
    """One ksmd batch; returns the number of pages processed."""
    r = m.run_batch()
    assert r is not None, "ksmd is not running"
    check_invariants(m)
    return r.pages


def addr(p, region, i: int) -> int:
    return p._vma(region).start + (i << PAGE_SHIFT)


def pfn_of(p, region, i: int) -> int:
    vma = p._vma(region)
    return vma.pte[i]


def pte_at(p, address: int) -> int:
    vma = p.mm.find_vma(address)
    return vma.pte[(address - vma.start) >> PAGE_SHIFT]


def ptef_of(p, region, i: int) -> int:
    vma = p._vma(region)
    return vma.ptef[i]


def is_ksm(m: Machine, pfn: int) -> bool:
    f = m.mem.page_folio[pfn]
    return f is not None and bool(f.flags & PG_KSM)


def item_at(m: Machine, p, region, i: int):
    return rmap_item_at(m, p.mm, addr(p, region, i))


def in_unstable_tree(m: Machine, it) -> bool:
    return any(x == it for root in m.ksm.root_unstable_tree for x in rb_inorder(root))


def stable_nodes(m: Machine) -> list:
    """Every regular node and dup (not chains)."""
    out = []
    for root in m.ksm.root_stable_tree:
        for n in rb_inorder(root):
            if n.rmap_hlist_len == STABLE_NODE_CHAIN:
                out.extend(n.hlist)
            else:
                out.append(n)
    return out


def chains(m: Machine) -> list:
    return [n for root in m.ksm.root_stable_tree for n in rb_inorder(root)
            if n.rmap_hlist_len == STABLE_NODE_CHAIN]


def setup_pages(m: Machine, name: str, tokens, mergeable: bool = True):
    p = m.spawn(name)
    r = p.mmap(len(tokens), name="r")
    for i, t in enumerate(tokens):
        if t is not None:
            p.write(r, i, t)
    if mergeable:
        p.madvise(r, "mergeable")
    check_invariants(m)
    return p, r


# =========================================================================== 1
@pytest.mark.parametrize("same_mm", [False, True])
def test_b01_two_identical_small_pages_merge_in_second_full_scan(same_mm):
    m = new_machine()
    if same_mm:
        a, ra = setup_pages(m, "a", [5, 5])
        pa = (a, ra, 0)
        pb = (a, ra, 1)
    else:
        a, ra = setup_pages(m, "a", [5])
        b, rb = setup_pages(m, "b", [5])
        pa = (a, ra, 0)
        pb = (b, rb, 0)
    frame_b = pfn_of(*pb)
    frame_a = pfn_of(*pa)
    m.sysfs_write("run", 1)
    scan(m)
    assert counters(m, "pages_shared", "pages_sharing", "pages_volatile") == (0, 0, 2)
    assert pfn_of(*pa) == frame_a and pfn_of(*pb) == frame_b
    scan(m)
    assert counters(m, "pages_shared", "pages_sharing", "pages_unshared") == (1, 1, 0)
    # the frame that survives is the scanned (second) page's
    assert pfn_of(*pa) == pfn_of(*pb) == frame_b
    assert is_ksm(m, frame_b)
    assert m.mem.page_folio[frame_a] is None            # the tree page's frame was freed
    assert not ptef_of(*pa) & PTE_WRITE and not ptef_of(*pb) & PTE_WRITE
    assert pa[0].read(pa[1], pa[2]) == 5 and pb[0].read(pb[1], pb[2]) == 5


def test_b01_selftest_style_run2_then_run1_merges_after_two_scans():
    m = new_machine()
    a, ra = setup_pages(m, "a", [1, 2, 3])
    b, rb = setup_pages(m, "b", [3, 2, 1])
    m.sysfs_write("run", 1)
    scan(m, 5)
    m.sysfs_write("run", 2)
    check_invariants(m)
    m.sysfs_write("run", 1)
    scan(m, 2)
    assert counters(m, "pages_shared", "pages_sharing") == (3, 3)
    for i in range(3):
        assert pfn_of(a, ra, i) == pfn_of(b, rb, 2 - i)


# =========================================================================== 2
def test_b02_page_changing_between_processed_visits_is_never_in_a_tree():
    m = new_machine(pages_to_scan=1, smart_scan=0)
    a, ra = setup_pages(m, "a", [7])           # the changing page
    b, rb = setup_pages(m, "b", [7])           # a stable partner with equal content at times
    m.sysfs_write("run", 1)
    for k in range(12):
        a.write(ra, 0, 7 if k % 2 else 8)      # differs from the previous processed visit
        check_invariants(m)
        while True:
            before = c(m, "full_scans")
            batch(m)
            it = item_at(m, a, ra, 0)
            assert state(it) in ("N", "-")
            assert it is None or not in_unstable_tree(m, it)
            if c(m, "full_scans") != before:
                break
    assert c(m, "pages_shared") == 0 and c(m, "pages_sharing") == 0
    assert pfn_of(a, ra, 0) != pfn_of(b, rb, 0)
    # b, which does not change, sits in the unstable tree every scan (from its 2nd visit)
    assert state(item_at(m, b, rb, 0)) == "U"


# =========================================================================== 3
def test_b03_new_page_identical_to_ksm_page_needs_two_visits_then_joins():
    m = new_machine()
    a, ra = setup_pages(m, "a", [5, 5, None])
    m.sysfs_write("run", 1)
    scan(m, 2)
    assert counters(m, "pages_shared", "pages_sharing") == (1, 1)
    kpfn = pfn_of(a, ra, 0)
    nodes = stable_nodes(m)
    a.write(ra, 2, 5)
    check_invariants(m)
    scan(m)                                   # first processed visit: checksum only
    assert counters(m, "pages_shared", "pages_sharing") == (1, 1)
    assert pfn_of(a, ra, 2) != kpfn
    assert state(item_at(m, a, ra, 2)) == "N"
    scan(m)                                   # second visit: joins the existing KSM page
    assert counters(m, "pages_shared", "pages_sharing") == (1, 2)
    assert pfn_of(a, ra, 2) == kpfn
    assert stable_nodes(m) == nodes           # no new stable node
    assert nodes[0].rmap_hlist_len == 3


def test_b03_in_another_process():
    m = new_machine()
    a, ra = setup_pages(m, "a", [5, 5])
    m.sysfs_write("run", 1)
    scan(m, 2)
    b, rb = setup_pages(m, "b", [5])
    scan(m)
    assert counters(m, "pages_shared", "pages_sharing") == (1, 1)
    scan(m)
    assert counters(m, "pages_shared", "pages_sharing") == (1, 2)
    assert pfn_of(b, rb, 0) == pfn_of(a, ra, 0)
    assert b.ksm_merging_pages == 1


# =========================================================================== 4
@pytest.mark.parametrize("n", [2, 3, 10, 100, 256])
def test_b04_merging_n_identical_pages_yields_one_ksm_page(n):
    m = new_machine()
    a, ra = setup_pages(m, "a", [9] * (n // 2))
    b, rb = setup_pages(m, "b", [9] * (n - n // 2))
    m.sysfs_write("run", 1)
    scan(m, 2)
    assert counters(m, "pages_shared", "pages_sharing", "stable_node_chains",
                    "stable_node_dups") == (1, n - 1, 0, 0)
    pfns = {pfn_of(a, ra, i) for i in range(n // 2)} | \
        {pfn_of(b, rb, i) for i in range(n - n // 2)}
    assert len(pfns) == 1
    assert is_ksm(m, pfns.pop())
    assert a.ksm_merging_pages + b.ksm_merging_pages == n


# =========================================================================== 5
@pytest.mark.parametrize("n,mps", [
    (3, 2), (4, 2), (5, 2), (6, 2), (7, 2), (4, 3), (6, 3), (7, 3), (8, 3), (9, 3),
    (10, 3), (9, 4), (10, 4), (12, 4), (13, 4), (14, 4), (21, 5), (23, 5),
])
def test_b05_max_page_sharing_fills_dups_one_after_another(n, mps):
    m = new_machine(max_page_sharing=mps)
    a, ra = setup_pages(m, "a", [4] * n)
    m.sysfs_write("run", 1)
    scan(m, 2)
    left = 1 if n % mps == 1 else 0
    kpages = n // mps if left else -(-n // mps)
    assert c(m, "pages_shared") == kpages
    assert c(m, "pages_sharing") == n - kpages - left
    assert c(m, "pages_unshared") == left
    nodes = stable_nodes(m)
    assert len(nodes) == kpages
    assert all(nd.rmap_hlist_len <= mps for nd in nodes)          # no dup exceeds M
    assert sum(1 for nd in nodes if nd.rmap_hlist_len < mps) <= 1  # filled one after another
    if n % mps not in (0, 1):
        assert sorted(nd.rmap_hlist_len for nd in nodes)[0] == n % mps
    if kpages >= 2:
        assert c(m, "stable_node_chains") == 1
        assert c(m, "stable_node_dups") == kpages
        assert len(chains(m)) == 1 and len(chains(m)[0].hlist) == kpages
    else:
        assert c(m, "stable_node_chains") == 0 and c(m, "stable_node_dups") == 0
    # the left-over page is in the unstable tree, unmerged
    pfns = [pfn_of(a, ra, i) for i in range(n)]
    assert len(set(pfns)) == kpages + left
    if left:
        lone = [i for i in range(n) if not is_ksm(m, pfns[i])]
        assert len(lone) == 1
        assert state(item_at(m, a, ra, lone[0])) == "U"
    # stays that way in the following scans
    scan(m, 3)
    assert c(m, "pages_shared") == kpages
    assert c(m, "pages_sharing") == n - kpages - left
    assert all(nd.rmap_hlist_len <= mps for nd in stable_nodes(m))


# =========================================================================== 6
def test_b06_write_to_merged_page_cows_at_once_stats_drop_at_next_visit():
    m = new_machine()
    a, ra = setup_pages(m, "a", [3, 3, 3])
    m.sysfs_write("run", 1)
    scan(m, 2)
    assert counters(m, "pages_shared", "pages_sharing") == (1, 2)
    kpfn = pfn_of(a, ra, 1)
    cow = m.vmstat["cow_ksm"]
    a.write(ra, 1, 44)
    check_invariants(m)
    assert pfn_of(a, ra, 1) != kpfn                  # private copy immediately
    assert ptef_of(a, ra, 1) & PTE_WRITE
    assert a.read(ra, 1) == 44 and a.read(ra, 0) == 3 and a.read(ra, 2) == 3
    assert m.vmstat["cow_ksm"] == cow + 1
    assert counters(m, "pages_shared", "pages_sharing") == (1, 2)   # stale until visited
    assert state(item_at(m, a, ra, 1)) == "S"
    # step page by page: the counter drops exactly at the visit of that address
    m.sysfs_write("pages_to_scan", 1)
    target = addr(a, ra, 1)
    while True:
        before = counters(m, "pages_shared", "pages_sharing")
        batch(m)
        cur = m.ksm.ksm_scan
        just_visited = (cur.mm_slot is not None and cur.mm_slot.mm is a.mm
                        and cur.address == target + PAGE_SIZE)
        after = counters(m, "pages_shared", "pages_sharing")
        if just_visited:
            assert after == (1, 1)
            break
        assert after == before == (1, 2)
    assert state(item_at(m, a, ra, 1)) == "N"        # new content: checksum gate


def test_b06_write_by_both_mappers_drops_pages_shared():
    m = new_machine()
    a, ra = setup_pages(m, "a", [3])
    b, rb = setup_pages(m, "b", [3])
    m.sysfs_write("run", 1)
    scan(m, 2)
    cow = m.vmstat["cow_ksm"]
    b.write(rb, 0, 8)
    assert m.vmstat["cow_ksm"] == cow + 1
    scan(m)
    assert counters(m, "pages_shared", "pages_sharing") == (1, 0)
    a.write(ra, 0, 9)                         # a KSM page mapped once is still copied
    assert m.vmstat["cow_ksm"] == cow + 2
    assert counters(m, "pages_shared", "pages_sharing") == (1, 0)
    scan(m)
    assert counters(m, "pages_shared", "pages_sharing") == (0, 0)


# =========================================================================== 7
def test_b07_madv_unmergeable_unshares_now_stats_drop_after_pass():
    m = new_machine()
    a, ra = setup_pages(m, "a", [6, 6, 6, 6])
    b, rb = setup_pages(m, "b", [6])
    m.sysfs_write("run", 1)
    scan(m, 2)
    assert counters(m, "pages_shared", "pages_sharing") == (1, 4)
    a.madvise(ra, "unmergeable")
    check_invariants(m)
    pfns = [pfn_of(a, ra, i) for i in range(4)]
    assert len(set(pfns)) == 4
    assert not any(is_ksm(m, p) for p in pfns)
    assert all(a.read(ra, i) == 6 for i in range(4))
    assert not a._vma(ra).flags & VM_MERGEABLE
    assert counters(m, "pages_shared", "pages_sharing") == (1, 4)    # lazily
    assert a.mm.flags & MMF_VM_MERGEABLE
    scan(m)
    assert counters(m, "pages_shared", "pages_sharing") == (1, 0)   # b's item remains
    assert a.mm.ksm_rmap_items == 0 and a.ksm_merging_pages == 0
    assert not a.mm.flags & MMF_VM_MERGEABLE        # no mergeable VMA left: dropped
    assert is_ksm(m, pfn_of(b, rb, 0))              # b still maps the (now unshared) KSM page


def test_b07_unmergeable_on_part_of_a_range():
    m = new_machine()
    a, ra = setup_pages(m, "a", [6, 6, 6, 6])
    m.sysfs_write("run", 1)
    scan(m, 2)
    a.madvise(ra, "unmergeable", pages=[1, 2])
    check_invariants(m)
    base = addr(a, ra, 0)
    pf = [pte_at(a, base + (i << PAGE_SHIFT)) for i in range(4)]
    assert len(a.mm.vmas) == 3                           # split at the range boundaries
    assert [bool(v.flags & VM_MERGEABLE) for v in a.mm.vmas] == [True, False, True]
    assert pf[0] == pf[3] and is_ksm(m, pf[0])
    assert len({pf[0], pf[1], pf[2]}) == 3
    assert counters(m, "pages_shared", "pages_sharing") == (1, 3)
    scan(m)
    assert counters(m, "pages_shared", "pages_sharing") == (1, 1)


# =========================================================================== 8
def test_b08_run_2_unmerges_everything_and_run_1_remerges():
    m = new_machine()
    a, ra = setup_pages(m, "a", [1, 1, 2, 3, 0])
    b, rb = setup_pages(m, "b", [1, 2, 4])
    m.sysfs_write("run", 1)
    scan(m, 3)
    assert counters(m, "pages_shared", "pages_sharing") == (2, 3)
    assert c(m, "pages_unshared") > 0 or c(m, "pages_volatile") > 0
    scanned = c(m, "pages_scanned")
    m.sysfs_write("run", 2)
    check_invariants(m)
    assert counters(m, "pages_shared", "pages_sharing", "pages_unshared", "pages_volatile",
                    "full_scans", "stable_node_chains", "stable_node_dups") == (0,) * 7
    assert m.ksm.ksm_rmap_items == 0
    assert c(m, "pages_scanned") == scanned          # never reset
    pf = [pfn_of(a, ra, i) for i in range(5)] + [pfn_of(b, rb, i) for i in range(3)]
    assert len(set(pf)) == len(pf)
    assert not any(is_ksm(m, p) for p in pf)
    assert a._vma(ra).flags & VM_MERGEABLE and b._vma(rb).flags & VM_MERGEABLE
    assert a.mm.flags & MMF_VM_MERGEABLE and b.mm.flags & MMF_VM_MERGEABLE
    assert len(m.ksm.mm_list) == 2
    assert m.run_batch() is None                     # ksmd does not run while run=2
    m.sysfs_write("run", 1)
    scan(m, 2)
    assert counters(m, "pages_shared", "pages_sharing") == (2, 3)


# =========================================================================== 9
def test_b09_writing_run_2_twice_does_nothing_the_second_time():
    m = new_machine()
    a, ra = setup_pages(m, "a", [1, 1])
    m.sysfs_write("run", 1)
    scan(m, 2)
    calls = []
    orig = m.ksm.unmerge_and_remove_all_rmap_items
    m.ksm.unmerge_and_remove_all_rmap_items = lambda: calls.append(1) or orig()
    m.sysfs_write("run", 2)
    check_invariants(m)
    snap = (m.counters(), [pfn_of(a, ra, i) for i in range(2)], list(m.ksm.mm_list))
    m.sysfs_write("run", 2)
    check_invariants(m)
    assert len(calls) == 1
    assert snap == (m.counters(), [pfn_of(a, ra, i) for i in range(2)], list(m.ksm.mm_list))
    assert c(m, "run") == 2


# =========================================================================== 10
def test_b10_ebusy_and_einval_of_tunables():
    m = new_machine()
    a, ra = setup_pages(m, "a", [1, 1])
    m.sysfs_write("run", 1)
    scan(m, 2)
    assert c(m, "pages_shared") == 1
    for name, value, err in [("max_page_sharing", 10, errno.EBUSY),
                             ("merge_across_nodes", 0, errno.EBUSY),
                             ("max_page_sharing", 1, errno.EINVAL),
                             ("max_page_sharing", -5, errno.EINVAL),
                             ("run", 3, errno.EINVAL)]:
        with pytest.raises(OSError) as ei:
            m.sysfs_write(name, value)
        assert ei.value.errno == err, (name, value)
    m.sysfs_write("max_page_sharing", 256)           # same value: fine even when busy
    assert counters(m, "max_page_sharing", "merge_across_nodes", "run") == (256, 1, 1)
    m.sysfs_write("run", 2)
    m.sysfs_write("max_page_sharing", 10)
    m.sysfs_write("merge_across_nodes", 0)
    check_invariants(m)


# =========================================================================== 11
@pytest.mark.parametrize("n", [1, 4, 30])
def test_b11_use_zero_pages_makes_ksm_zero_pages(n):
    m = new_machine(use_zero_pages=1)
    a, ra = setup_pages(m, "a", [0] * n + [5])
    m.sysfs_write("run", 1)
    scan(m)
    assert c(m, "ksm_zero_pages") == 0
    scan(m)
    assert counters(m, "ksm_zero_pages", "pages_shared", "pages_sharing") == (n, 0, 0)
    assert a.mm.ksm_zero_pages == n and a.ksm_stat()["ksm_zero_pages"] == n
    for i in range(n):
        assert pfn_of(a, ra, i) == ZERO_PFN
        assert ptef_of(a, ra, i) & (PTE_SPECIAL | PTE_DIRTY) == PTE_SPECIAL | PTE_DIRTY
        assert not ptef_of(a, ra, i) & PTE_WRITE
        assert a.read(ra, i) == 0
        assert state(item_at(m, a, ra, i)) == "N"      # not in any tree
    assert m.ksm.ksm_rmap_items == n + 1
    scan(m)                                            # items freed on the following pass
    assert m.ksm.ksm_rmap_items == 1
    assert all(item_at(m, a, ra, i) is None for i in range(n))
    assert c(m, "ksm_zero_pages") == n
    assert c(m, "general_profit") == n * 4096 - 64
    assert a.mm.flags & MMF_VM_MERGEABLE


# =========================================================================== 12
@pytest.mark.parametrize("n", [2, 5, 40])
def test_b12_zero_pages_without_use_zero_pages_merge_into_one_ksm_page(n):
    m = new_machine()
    a, ra = setup_pages(m, "a", [0] * n)
    m.sysfs_write("run", 1)
    scan(m, 2)
    assert counters(m, "pages_shared", "pages_sharing", "ksm_zero_pages") == (1, n - 1, 0)
    pf = {pfn_of(a, ra, i) for i in range(n)}
    assert len(pf) == 1 and ZERO_PFN not in pf and is_ksm(m, pf.pop())


# =========================================================================== 13
def test_b13_unmerging_or_writing_ksm_zero_pages_decrements_at_once():
    m = new_machine(use_zero_pages=1)
    a, ra = setup_pages(m, "a", [0] * 6)
    m.sysfs_write("run", 1)
    scan(m, 2)
    assert c(m, "ksm_zero_pages") == 6
    cow = m.vmstat["cow_ksm"]
    a.write(ra, 0, 17)                                 # write fault
    check_invariants(m)
    assert c(m, "ksm_zero_pages") == 5 and a.mm.ksm_zero_pages == 5
    assert a.read(ra, 0) == 17
    assert m.vmstat["cow_ksm"] == cow                  # the zero page is not a KSM folio
    a.write(ra, 1, 0)                                  # writing zeroes also copies
    check_invariants(m)
    assert c(m, "ksm_zero_pages") == 4
    assert pfn_of(a, ra, 1) != ZERO_PFN
    a.madvise(ra, "unmergeable", pages=[2])            # unshare
    check_invariants(m)
    assert c(m, "ksm_zero_pages") == 3
    vma2 = a.mm.find_vma(addr(a, ra, 0) + 2 * PAGE_SIZE)
    assert vma2.pte[0] != ZERO_PFN and vma2.pte[0] >= 0
    assert a.mm.read_page(vma2.start) == 0
    a.zap(ra, [3])                                     # MADV_DONTNEED
    check_invariants(m)
    assert c(m, "ksm_zero_pages") == 2
    m.sysfs_write("run", 2)                            # unmerge everything
    check_invariants(m)
    assert c(m, "ksm_zero_pages") == 0 and a.mm.ksm_zero_pages == 0


def test_b13_prctl_disable_and_exit_drop_ksm_zero_pages():
    m = new_machine(use_zero_pages=1)
    a = m.spawn("a", merge_any=True)
    ra = a.mmap(3, name="r")
    a.write(ra, range(3), 0)
    b, rb = setup_pages(m, "b", [0, 0])
    m.sysfs_write("run", 1)
    scan(m, 2)
    assert c(m, "ksm_zero_pages") == 5
    a.prctl_set_memory_merge(False)
    check_invariants(m)
    assert c(m, "ksm_zero_pages") == 2 and a.mm.ksm_zero_pages == 0
    b.exit()
    check_invariants(m)
    assert c(m, "ksm_zero_pages") == 0


# =========================================================================== 14
def test_b14_fork_child_counted_only_after_scan_and_bypasses_max_page_sharing():
    m = new_machine(max_page_sharing=2)
    a, ra = setup_pages(m, "a", [8, 8])
    m.sysfs_write("run", 1)
    scan(m, 2)
    assert counters(m, "pages_shared", "pages_sharing") == (1, 1)
    node = stable_nodes(m)[0]
    kpfn = pfn_of(a, ra, 0)
    child = a.fork("child")
    check_invariants(m)
    assert child.ksm_merging_pages == 0 and child.ksm_stat()["ksm_rmap_items"] == 0
    assert child.read(ra, 0) == 8 and pfn_of(child, ra, 0) == kpfn
    assert counters(m, "pages_shared", "pages_sharing") == (1, 1)
    scan(m)                                           # the child's first visit
    assert child.ksm_merging_pages == 2
    assert counters(m, "pages_shared", "pages_sharing") == (1, 3)
    assert stable_nodes(m) == [node] and node.rmap_hlist_len == 4 > 2
    assert counters(m, "stable_node_chains", "stable_node_dups") == (0, 0)
    assert pfn_of(child, ra, 0) == pfn_of(child, ra, 1) == kpfn
    assert a.ksm_merging_pages == 2


def test_b14_fork_inherits_ksm_zero_pages():
    m = new_machine(use_zero_pages=1)
    a, ra = setup_pages(m, "a", [0, 0, 0])
    m.sysfs_write("run", 1)
    scan(m, 2)
    assert c(m, "ksm_zero_pages") == 3
    child = a.fork("child")
    check_invariants(m)
    assert child.ksm_stat()["ksm_zero_pages"] == 3
    assert c(m, "ksm_zero_pages") == 6
    child.write(ra, 0, 1)
    assert c(m, "ksm_zero_pages") == 5 and a.mm.ksm_zero_pages == 3
    check_invariants(m)


# =========================================================================== 15
def test_b15_mm_registered_mid_scan_is_processed_in_the_next_full_scan():
    m = new_machine(pages_to_scan=1)
    a, ra = setup_pages(m, "a", [1, 2, 3, 4])
    z, rz = setup_pages(m, "z", [9])
    m.sysfs_write("run", 1)
    batch(m)
    batch(m)                                          # cursor inside a's pages
    assert m.ksm.ksm_scan.mm_slot.mm is a.mm
    b, rb = setup_pages(m, "b", [1, 2])               # registers b
    order = [s.mm.name for s in m.ksm.mm_list]
    assert order == ["b", "a", "z"]                   # inserted behind the cursor
    seen_b = False
    while c(m, "full_scans") == 0:
        batch(m)
        seen_b |= b.mm.ksm_rmap_items > 0
    assert not seen_b and b.mm.ksm_rmap_items == 0
    batch(m)                                          # next scan starts with b
    assert b.mm.ksm_rmap_items == 1 and a.mm.ksm_rmap_items == 4


def test_b15_fork_mid_scan_child_inserted_behind_cursor():
    m = new_machine(pages_to_scan=1)
    a, ra = setup_pages(m, "a", [1, 2, 3])
    m.sysfs_write("run", 1)
    batch(m)
    child = a.fork("child")
    assert [s.mm.name for s in m.ksm.mm_list] == ["child", "a"]
    while c(m, "full_scans") == 0:
        batch(m)
        assert child.mm.ksm_rmap_items == 0
    batch(m)
    assert child.mm.ksm_rmap_items == 1


def test_b15_mm_registered_between_scans_is_visited_in_the_next_scan():
    m = new_machine()
    a, ra = setup_pages(m, "a", [1])
    m.sysfs_write("run", 1)
    scan(m)
    b, rb = setup_pages(m, "b", [1])
    assert [s.mm.name for s in m.ksm.mm_list] == ["a", "b"]
    scan(m)
    assert b.mm.ksm_rmap_items == 1


# =========================================================================== 16
def test_b16_a_batch_never_crosses_a_full_scan():
    m = new_machine(pages_to_scan=3)
    a, ra = setup_pages(m, "a", [1, 2, 3])
    b, rb = setup_pages(m, "b", [4, 5])
    m.sysfs_write("run", 1)
    got = []
    for _ in range(6):
        before = c(m, "full_scans")
        got.append((batch(m), c(m, "full_scans") - before))
    # 5 pages per scan: 3, then 2 and the wrap (the rest of the budget is lost), ...
    assert got == [(3, 0), (2, 1), (3, 0), (2, 1), (3, 0), (2, 1)]


def test_b16_budget_exactly_one_scan_wraps_in_an_empty_batch():
    m = new_machine(pages_to_scan=5)
    a, ra = setup_pages(m, "a", [1, 2, 3, 4, 5])
    m.sysfs_write("run", 1)
    got = []
    for _ in range(4):
        before = c(m, "full_scans")
        got.append((batch(m), c(m, "full_scans") - before))
    assert got == [(5, 0), (0, 1), (5, 0), (0, 1)]


def test_b16_large_budget_one_scan_per_batch():
    m = new_machine(pages_to_scan=1000, smart_scan=0)
    a, ra = setup_pages(m, "a", [1, 2, 3, 4, 5, 6, 7])
    m.sysfs_write("run", 1)
    for k in range(5):
        assert batch(m) == 7
        assert c(m, "full_scans") == k + 1


# =========================================================================== 17
PROCESSED = [0, 1, 2, 3, 5, 8, 13, 22, 31, 40]


def test_b17_smart_scan_visit_pattern_and_phase_lock():
    # (a) the visit pattern of an unmatched page
    m = new_machine()
    a, ra = setup_pages(m, "a", [77])
    m.sysfs_write("run", 1)
    processed = []
    for v in range(41):
        s0, k0 = c(m, "pages_scanned"), c(m, "pages_skipped")
        scan(m)
        ds, dk = c(m, "pages_scanned") - s0, c(m, "pages_skipped") - k0
        assert ds + dk == 1
        if ds:
            processed.append(v)
    assert processed == PROCESSED
    assert c(m, "pages_skipped") == 41 - len(PROCESSED)
    assert c(m, "pages_scanned") == len(PROCESSED)
    assert item_at(m, a, ra, 0).age == 41

    # (b) two old identical pages with different phases never merge ...
    m, a, ra = _phase_pair(15)
    for _ in range(60):
        scan(m)
        assert c(m, "pages_shared") == 0
        assert pfn_of(a, ra, 0) != pfn_of(a, ra, 1)
    assert item_at(m, a, ra, 0).age >= 13 and item_at(m, a, ra, 1).age >= 13
    # ... until smart_scan is switched off: then they merge within two scans
    m.sysfs_write("smart_scan", 0)
    scan(m, 2)
    assert counters(m, "pages_shared", "pages_sharing") == (1, 1)
    assert pfn_of(a, ra, 0) == pfn_of(a, ra, 1)

    # (c) ... or run=2 frees every item (fresh ages): they merge within two scans
    m, a, ra = _phase_pair(16)
    scan(m, 40)
    assert c(m, "pages_shared") == 0
    m.sysfs_write("run", 2)
    m.sysfs_write("run", 1)
    scan(m, 2)
    assert counters(m, "pages_shared", "pages_sharing") == (1, 1)


def _phase_pair(s: int):
    """Page P (content X) first visited in scan 0; page Q (content X) first visited in
    scan ``s``.  P, once old, is processed in scans ≡ 4 (mod 9)."""
    m = new_machine()
    a, ra = setup_pages(m, "a", [5, None])
    m.sysfs_write("run", 1)
    scan(m, s)
    assert c(m, "full_scans") == s
    a.write(ra, 1, 5)
    check_invariants(m)
    return m, a, ra


@pytest.mark.parametrize("s", range(12, 30))
def test_b17_new_page_meets_old_page_only_in_compatible_phases(s):
    """(r - s) mod 9 in {1,2,3,4,5,8} -> they meet (merge); {0,6,7} -> never (§6)."""
    m, a, ra = _phase_pair(s)
    r = 4
    meets = (r - s) % 9 in {1, 2, 3, 4, 5, 8}
    merged_at = None
    for k in range(1, 40):
        scan(m)
        if c(m, "pages_shared"):
            merged_at = k
            break
    if meets:
        assert merged_at is not None
        # the k-th scan run here is scan number s + k - 1, Q's visit k - 1
        assert (s + merged_at - 1) % 9 == r                  # a scan where P is processed
        assert merged_at - 1 in (1, 2, 3, 5, 8, 13, 22, 31)  # and Q too (gate passed)
        assert pfn_of(a, ra, 0) == pfn_of(a, ra, 1)
    else:
        assert merged_at is None


def test_b17_skipped_item_leaves_unstable_tree():
    m = new_machine()
    a, ra = setup_pages(m, "a", [77])
    m.sysfs_write("run", 1)
    scan(m, 4)              # visits 0..3 processed; 4 is skipped next
    assert state(item_at(m, a, ra, 0)) == "U"
    assert c(m, "pages_unshared") == 1
    scan(m)                 # v=4 skipped
    assert state(item_at(m, a, ra, 0)) == "N"
    assert c(m, "pages_unshared") == 0 and c(m, "pages_skipped") == 1


def test_b17_ksm_pages_are_never_skipped():
    m = new_machine()
    a, ra = setup_pages(m, "a", [2, 2])
    m.sysfs_write("run", 1)
    scan(m, 30)
    assert c(m, "pages_skipped") == 0
    assert c(m, "pages_scanned") == 60


# =========================================================================== 18
def pin(m: Machine, p, region, i: int):
    folio = m.mem.page_folio[pfn_of(p, region, i)]
    m.mem.folio_get(folio)
    folio.pincount += 1
    return folio


def test_b18_pinned_tree_page_never_merges_and_partner_is_undone():
    m = new_machine()
    a, ra = setup_pages(m, "a", [5])       # scanned first: becomes the unstable tree page
    b, rb = setup_pages(m, "b", [5])
    folio = pin(m, a, ra, 0)
    check_invariants(m)
    m.sysfs_write("run", 1)
    b_pfns = set()
    for _ in range(12):
        scan(m)
        b_pfns.add(pfn_of(b, rb, 0))
        assert counters(m, "pages_shared", "pages_sharing") == (0, 0)
        assert pfn_of(a, ra, 0) == folio.pfn and not is_ksm(m, folio.pfn)
        assert not is_ksm(m, pfn_of(b, rb, 0))
        assert state(item_at(m, b, rb, 0)) == "N"
        assert a.read(ra, 0) == 5 and b.read(rb, 0) == 5
    # b's page was made a KSM page in step 1 and then unshared by break_cow: new copies
    assert len(b_pfns) > 1
    assert any("write_protect_page" in k for k in m.ksm.merge_failures)


def test_b18_pinned_scanned_page_never_merges_via_unstable_tree():
    m = new_machine()
    a, ra = setup_pages(m, "a", [5])
    b, rb = setup_pages(m, "b", [5])       # scanned second
    folio = pin(m, b, rb, 0)
    m.sysfs_write("run", 1)
    for _ in range(12):
        before = c(m, "full_scans")
        while c(m, "full_scans") == before:
            batch(m)
        assert counters(m, "pages_shared", "pages_sharing") == (0, 0)
        assert state(item_at(m, b, rb, 0)) in ("N", "-")          # ends as volatile
        assert pfn_of(b, rb, 0) == folio.pfn
    assert pfn_of(a, ra, 0) != pfn_of(b, rb, 0)


def test_b18_pinned_page_never_merges_via_stable_tree():
    m = new_machine()
    a, ra = setup_pages(m, "a", [5, 5])
    m.sysfs_write("run", 1)
    scan(m, 2)
    assert counters(m, "pages_shared", "pages_sharing") == (1, 1)
    b, rb = setup_pages(m, "b", [5])
    folio = pin(m, b, rb, 0)
    for _ in range(12):
        scan(m)
        assert counters(m, "pages_shared", "pages_sharing") == (1, 1)
        assert state(item_at(m, b, rb, 0)) == "N"     # C3: not inserted in the unstable tree
        assert not in_unstable_tree(m, item_at(m, b, rb, 0))
        assert pfn_of(b, rb, 0) == folio.pfn
    # unpinning lets it merge (two processed visits are already behind it)
    folio.pincount -= 1
    m.mem.folio_put(folio)
    check_invariants(m)
    m.sysfs_write("smart_scan", 0)
    scan(m)
    assert counters(m, "pages_shared", "pages_sharing") == (1, 2)


# =========================================================================== 22
def test_b22_pages_volatile_and_general_profit_formulas():
    m = new_machine(use_zero_pages=1)
    a, ra = setup_pages(m, "a", [1, 1, 1, 2, 0, 0, 3])
    b, rb = setup_pages(m, "b", [2, 4, 5])
    m.sysfs_write("run", 1)

    def check():
        k = m.ksm
        v = max(0, k.ksm_rmap_items - k.ksm_pages_shared - k.ksm_pages_sharing
                - k.ksm_pages_unshared)
        assert c(m, "pages_volatile") == v
        assert c(m, "general_profit") == \
            (c(m, "pages_sharing") + c(m, "ksm_zero_pages")) * 4096 - k.ksm_rmap_items * 64
        for p in (a, b):
            st = p.ksm_stat()
            assert st["ksm_process_profit"] == \
                (st["ksm_merging_pages"] + st["ksm_zero_pages"]) * 4096 \
                - st["ksm_rmap_items"] * 64

    check()
    for _ in range(4):
        scan(m)
        check()
    # after scan 2: 1 shared (token 1, 3 mappings) + 1 shared (token 2, 2 mappings),
    # two KSM zero pages (freed items), 3 and 4/5 unique
    assert counters(m, "pages_shared", "pages_sharing", "ksm_zero_pages") == (2, 3, 2)
    assert c(m, "general_profit") == (3 + 2) * 4096 - m.ksm.ksm_rmap_items * 64
    assert m.ksm.ksm_rmap_items == 8
    assert c(m, "pages_volatile") + c(m, "pages_unshared") == 3
    a.write(ra, 6, 9)
    check()


# =========================================================================== 23
def test_b23_mm_without_mergeable_vmas_dropped_at_end_of_next_pass():
    m = new_machine()
    a, ra = setup_pages(m, "a", [1, 2])
    b, rb = setup_pages(m, "b", [1])
    other = a.mmap(2, name="plain")                   # never mergeable
    a.write(other, range(2), 1)
    m.sysfs_write("run", 1)
    scan(m, 2)
    assert counters(m, "pages_shared", "pages_sharing") == (1, 1)
    a.munmap(ra)
    check_invariants(m)
    assert a.mm.flags & MMF_VM_MERGEABLE
    assert any(s.mm is a.mm for s in m.ksm.mm_list)
    scan(m)
    assert not a.mm.flags & MMF_VM_MERGEABLE
    assert not any(s.mm is a.mm for s in m.ksm.mm_list)
    assert a.mm.ksm_rmap_items == 0 and a.ksm_merging_pages == 0
    assert counters(m, "pages_shared", "pages_sharing") == (1, 0)
    # re-added by the next MADV_MERGEABLE (at the end of the list)
    r2 = a.mmap(1, name="again")
    a.write(r2, 0, 1)
    assert not a.mm.flags & MMF_VM_MERGEABLE
    a.madvise(r2, "mergeable")
    check_invariants(m)
    assert a.mm.flags & MMF_VM_MERGEABLE
    assert [s.mm.name for s in m.ksm.mm_list] == ["b", "a"]
    scan(m, 2)
    assert counters(m, "pages_shared", "pages_sharing") == (1, 1)
    assert pfn_of(a, r2, 0) == pfn_of(b, rb, 0)


def test_b23_prctl_mm_is_reregistered_by_the_next_mmap():
    m = new_machine()
    a = m.spawn("a", merge_any=True)
    r = a.mmap(1, name="r")
    a.write(r, 0, 3)
    m.sysfs_write("run", 1)
    scan(m, 2)
    a.munmap(r)
    scan(m)
    assert not a.mm.flags & MMF_VM_MERGEABLE
    assert a.mm.flags & MMF_VM_MERGE_ANY              # v6.18 keeps MMF_VM_MERGE_ANY
    assert a.prctl_get_memory_merge()
    assert not m.ksm.mm_list
    r2 = a.mmap(2, name="r2")
    check_invariants(m)
    assert a.mm.flags & MMF_VM_MERGEABLE and a._vma(r2).flags & VM_MERGEABLE
    a.write(r2, range(2), 3)
    scan(m, 2)
    assert counters(m, "pages_shared", "pages_sharing") == (1, 1)


def test_b23_exited_mm_items_freed_on_next_pass():
    m = new_machine()
    a, ra = setup_pages(m, "a", [1, 1])
    b, rb = setup_pages(m, "b", [1])
    m.sysfs_write("run", 1)
    scan(m, 2)
    assert counters(m, "pages_shared", "pages_sharing") == (1, 2)
    a.exit()
    check_invariants(m)
    assert counters(m, "pages_shared", "pages_sharing") == (1, 2)   # until ksmd passes
    scan(m)
    assert counters(m, "pages_shared", "pages_sharing") == (1, 0)
    assert [s.mm.name for s in m.ksm.mm_list] == ["b"]
    assert not a.mm.flags & MMF_VM_MERGEABLE


# =========================================================================== 24
@pytest.mark.parametrize("extra", [VM_SHARED, VM_MAYSHARE | VM_SHARED, VM_MAYSHARE, VM_PFNMAP,
                                   VM_IO, VM_MIXEDMAP, VM_DONTEXPAND, VM_HUGETLB,
                                   VM_DROPPABLE],
                         ids=["shared", "shared+mayshare", "mayshare", "pfnmap", "io",
                              "mixedmap", "dontexpand", "hugetlb", "droppable"])
def test_b24_incompatible_vmas_never_merge_and_madvise_succeeds(extra):
    m = new_machine()
    p = m.spawn("p")
    vma = p.mm.mmap(4, name="odd", flags=VM_READ | VM_WRITE | extra)
    p.write(vma, range(4), 6)
    p.madvise(vma, "mergeable")                       # returns success ...
    assert not vma.flags & VM_MERGEABLE               # ... but the advice is ignored
    assert not p.mm.flags & MMF_VM_MERGEABLE
    assert not m.ksm.mm_list
    ok, rok = setup_pages(m, "ok", [6, 7])
    m.sysfs_write("run", 1)
    scan(m, 6)
    assert counters(m, "pages_shared", "pages_sharing") == (0, 0)
    assert p.mm.ksm_rmap_items == 0
    assert len({vma.pte[i] for i in range(4)}) == 4
    # prctl(PR_SET_MEMORY_MERGE) does not mark it either
    p.prctl_set_memory_merge(True)
    check_invariants(m)
    assert not vma.flags & VM_MERGEABLE
    q = p.mm.mmap(1, name="odd2", flags=VM_READ | VM_WRITE | extra)
    assert not q.flags & VM_MERGEABLE
    scan(m, 3)
    assert counters(m, "pages_shared", "pages_sharing") == (0, 0)
    assert p.mm.ksm_rmap_items == 0


# =========================================================================== 25
def test_b25_stale_stats_until_ksmd_touches_the_items():
    m = new_machine()
    a, ra = setup_pages(m, "a", [1])
    b, rb = setup_pages(m, "b", [1])
    m.sysfs_write("run", 1)
    scan(m, 2)
    kpfn = pfn_of(a, ra, 0)
    a.zap(ra, [0])
    b.zap(rb, [0])
    check_invariants(m)
    assert m.mem.page_folio[kpfn] is None                # the KSM page is gone
    assert counters(m, "pages_shared", "pages_sharing") == (1, 1)   # stale
    m.sysfs_write("run", 0)
    assert m.run_batch() is None
    assert counters(m, "pages_shared", "pages_sharing") == (1, 1)
    m.sysfs_write("run", 1)
    m.sysfs_write("pages_to_scan", 1)
    batch(m)                                             # passes a's item: stale node found
    assert counters(m, "pages_shared", "pages_sharing") == (0, 0)
    assert not stable_nodes(m)
    assert a.ksm_merging_pages == 0 and b.ksm_merging_pages == 0


def test_b25_stale_node_removed_by_a_tree_search_through_it():
    m = new_machine(smart_scan=0)
    z, rz = setup_pages(m, "z", [9])                     # scanned first
    a, ra = setup_pages(m, "a", [1])
    b, rb = setup_pages(m, "b", [1])
    m.sysfs_write("run", 1)
    scan(m, 2)
    assert counters(m, "pages_shared", "pages_sharing") == (1, 1)
    a.zap(ra, [0])
    b.zap(rb, [0])
    m.sysfs_write("pages_to_scan", 1)
    assert counters(m, "pages_shared", "pages_sharing") == (1, 1)
    batch(m)                                             # z's page: stable_tree_search
    assert m.ksm.ksm_scan.mm_slot.mm is z.mm
    assert counters(m, "pages_shared", "pages_sharing") == (0, 0)
    # a's and b's items were not visited: still allocated, now volatile
    assert state(item_at(m, a, ra, 0)) == "N" and state(item_at(m, b, rb, 0)) == "N"
    assert c(m, "pages_volatile") == 2


# =========================================================================== extra (§4.4.2, §4.6)
def test_extra_chain_collapses_when_only_one_dup_is_left():
    m = new_machine(max_page_sharing=2)
    a, ra = setup_pages(m, "a", [4, 4, 4, 4, None])
    m.sysfs_write("run", 1)
    scan(m, 2)
    assert counters(m, "pages_shared", "pages_sharing", "stable_node_chains",
                    "stable_node_dups") == (2, 2, 1, 2)
    # the newer dup (pages 2, 3) sits at the head of the chain
    head_dup = chains(m)[0].hlist[0]
    assert pfn_of(a, ra, 2) == pfn_of(a, ra, 3) == head_dup.kpfn
    a.zap(ra, [2, 3])                                 # that KSM page is freed: dup is stale
    a.write(ra, 4, 4)
    check_invariants(m)
    assert counters(m, "pages_shared", "pages_sharing") == (2, 2)
    scan(m)          # passing the freed items removes the stale dup; the chain stays
    assert counters(m, "pages_shared", "pages_sharing", "stable_node_chains",
                    "stable_node_dups") == (1, 1, 1, 1)
    scan(m)          # page 4's search walks the chain: it collapses into a regular node
    assert counters(m, "pages_shared", "pages_sharing", "stable_node_chains",
                    "stable_node_dups", "pages_unshared") == (1, 1, 0, 0, 1)
    assert not chains(m) and len(stable_nodes(m)) == 1
    assert state(item_at(m, a, ra, 4)) == "U"         # the only dup is full: unstable tree


def test_extra_stale_unstable_tree_node_aborts_insertion():
    m = new_machine(pages_to_scan=1)
    a, ra = setup_pages(m, "a", [3])
    b, rb = setup_pages(m, "b", [5])
    m.sysfs_write("run", 1)
    scan(m)
    assert batch(m) == 1                              # scan 1: a inserted
    assert state(item_at(m, a, ra, 0)) == "U"
    a.zap(ra, [0])                                    # a's tree node is now stale
    check_invariants(m)
    assert batch(m) == 1                              # b: search hits the stale node
    assert state(item_at(m, b, rb, 0)) == "N"         # not inserted this scan
    assert not in_unstable_tree(m, item_at(m, b, rb, 0))
    assert counters(m, "pages_unshared", "pages_volatile") == (1, 1)
    scan(m)                                           # finish scan 1
    scan(m)                                           # scan 2: a's item freed, b inserted
    assert item_at(m, a, ra, 0) is None
    assert state(item_at(m, b, rb, 0)) == "U"


def test_extra_fork_shared_page_never_merges_with_itself():
    m = new_machine()
    a, ra = setup_pages(m, "a", [3])
    child = a.fork("child")
    check_invariants(m)
    m.sysfs_write("run", 1)
    scan(m, 6)
    # the unstable search finds the very same physical page: abort, nothing merges
    assert counters(m, "pages_shared", "pages_sharing") == (0, 0)
    assert pfn_of(a, ra, 0) == pfn_of(child, ra, 0)
    assert not is_ksm(m, pfn_of(a, ra, 0))
    assert state(item_at(m, child, ra, 0)) == "N"


def test_extra_exit_moves_slot_behind_cursor_or_frees_it_at_once():
    """§9.3 exit: a slot with no rmap_items is freed at once; otherwise it is moved right
    after the cursor so that ksmd frees its items next."""
    m = new_machine(pages_to_scan=1)
    a, ra = setup_pages(m, "a", [1, 2, 3])
    b, rb = setup_pages(m, "b", [4, 5])
    c_, rc = setup_pages(m, "c", [6])
    d, rd = setup_pages(m, "d", [7])
    m.sysfs_write("run", 1)
    scan(m)                                           # everyone has items now
    e, re_ = setup_pages(m, "e", [8])                 # registered, no items yet
    e.exit()
    check_invariants(m)
    assert [s.mm.name for s in m.ksm.mm_list] == ["a", "b", "c", "d"]
    assert not e.mm.flags & MMF_VM_MERGEABLE
    batch(m)                                          # cursor inside a
    assert m.ksm.ksm_scan.mm_slot.mm is a.mm
    d.exit()
    check_invariants(m)
    assert [s.mm.name for s in m.ksm.mm_list] == ["a", "d", "b", "c"]
    assert d.mm.ksm_rmap_items == 1                   # still counted ...
    batch(m)
    batch(m)                                          # a's last pages
    batch(m)                                          # passes d (exiting): freed; b's first
    assert [s.mm.name for s in m.ksm.mm_list] == ["a", "b", "c"]
    assert d.mm.ksm_rmap_items == 0 and m.ksm.ksm_rmap_items == 3 + 2 + 1
    assert m.ksm.ksm_scan.mm_slot.mm is b.mm


def test_extra_prctl_merge_any():
    m = new_machine()
    a = m.spawn("a")
    r1 = a.mmap(2, name="r1")
    a.write(r1, range(2), 5)
    shared = a.mm.mmap(2, name="sh", flags=VM_READ | VM_WRITE | VM_SHARED)
    a.write(shared, range(2), 5)
    assert not a.prctl_get_memory_merge()
    a.prctl_set_memory_merge(True)
    check_invariants(m)
    assert a.prctl_get_memory_merge() and a.ksm_stat()["ksm_merge_any"]
    assert a._vma(r1).flags & VM_MERGEABLE and not shared.flags & VM_MERGEABLE
    r2 = a.mmap(1, name="r2")                         # new VMAs are mergeable at once
    assert r2.flags & VM_MERGEABLE
    a.write(r2, 0, 5)
    assert a.mm.prctl(PR_SET_MEMORY_MERGE, 1, 1) == -errno.EINVAL   # arg3 must be 0
    assert a.mm.prctl(PR_GET_MEMORY_MERGE, 1) == -errno.EINVAL
    m.sysfs_write("run", 1)
    scan(m, 2)
    assert counters(m, "pages_shared", "pages_sharing") == (1, 2)
    child = a.fork("child")                           # MMF_VM_MERGE_ANY is inherited
    assert child.prctl_get_memory_merge()
    a.prctl_set_memory_merge(False)                   # unmerges every mergeable VMA now
    check_invariants(m)
    assert not a.prctl_get_memory_merge()
    assert not any(v.flags & VM_MERGEABLE for v in a.mm.vmas)
    pf = {pfn_of(a, r1, 0), pfn_of(a, r1, 1), pfn_of(a, r2, 0)}
    assert len(pf) == 3 and not any(is_ksm(m, p) for p in pf)
    assert a.ksm_stat()["ksm_mergeable"] is False
    assert a.mm.flags & MMF_VM_MERGEABLE              # until ksmd's next pass
    scan(m)
    assert not a.mm.flags & MMF_VM_MERGEABLE
    assert child.mm.flags & MMF_VM_MERGEABLE


def test_b17_age_survives_merge_and_cow():
    """Smart-scan age counts non-KSM visits only and is never reset (§6): after a merge
    and a COW the item continues the visit pattern where it left off."""
    m = new_machine()
    a, ra = setup_pages(m, "a", [5, 5])
    m.sysfs_write("run", 1)
    scan(m, 2)                                        # visits 0, 1: merged in scan 1
    assert counters(m, "pages_shared", "pages_sharing") == (1, 1)
    it = item_at(m, a, ra, 1)
    assert it.age == 2
    scan(m, 3)                                        # KSM page: age untouched, never skipped
    assert it.age == 2 and c(m, "pages_skipped") == 0
    a.write(ra, 1, 6)                                 # COW
    pattern = []
    for _ in range(7):                                # v = 2, 3, 4, 5, 6, 7, 8
        k0 = c(m, "pages_skipped")
        scan(m)
        pattern.append("S" if c(m, "pages_skipped") > k0 else "P")
    assert pattern == ["P", "P", "S", "P", "S", "S", "P"]
    assert it.age == 9 and item_at(m, a, ra, 1) == it
    assert state(item_at(m, a, ra, 0)) == "S"         # the KSM page is never skipped


@pytest.mark.parametrize("prune_ms,winner", [(0, "fullest"), (10**9, "head")])
def test_extra_chain_prune_picks_fullest_non_full_dup_else_first_candidate(prune_ms, winner):
    """§4.4.2: with pruning due every dup is checked and the fullest non-full one wins;
    otherwise the first candidate from the head of the chain wins."""
    m = new_machine(max_page_sharing=4)
    a, ra = setup_pages(m, "a", [4] * 10 + [None])
    m.sysfs_write("run", 1)
    scan(m, 2)
    ch = chains(m)
    assert len(ch) == 1
    d3, d2, d1 = ch[0].hlist                          # newest dup at the head
    assert [d.rmap_hlist_len for d in (d1, d2, d3)] == [4, 4, 2]
    assert pfn_of(a, ra, 0) == d1.kpfn and pfn_of(a, ra, 9) == d3.kpfn
    m.sysfs_write("stable_node_chains_prune_millisecs", prune_ms)
    a.write(ra, 0, 5)                                 # d1 loses a mapping ...
    a.write(ra, 10, 4)                                # ... and a new page X arrives
    scan(m)                                           # d1 -> 3 items; page 10: checksum
    assert [d.rmap_hlist_len for d in (d1, d2, d3)] == [3, 4, 2]
    scan(m)                                           # page 10 joins a dup
    expect = d1 if winner == "fullest" else d3
    assert pfn_of(a, ra, 10) == expect.kpfn
    assert expect.rmap_hlist_len == (4 if winner == "fullest" else 3)
    assert counters(m, "pages_shared", "pages_sharing", "stable_node_dups") == (3, 7, 3)
