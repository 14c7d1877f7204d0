"""Large folios (THP / mTHP): spec §4.11 and behaviours 19-21 of §12, the §4.11.5 outcome
table, and the memory manager's large-folio paths (faults by policy, PMD mappings, fork,
partial unmap, COW, ``split_huge_page``'s reference rule and zero-subpage remap).

Every scenario is checked with the whole-state invariant checker after every ksmd batch
(and after every memory-manager step).  Unless a test says otherwise, THP regions hold
distinct non-zero contents on every page except the ones under test, so no zero-filled
subpage interferes (behaviour 21 has its own tests).
"""

from __future__ import annotations

import collections
import errno

import pytest

from invariants import check_invariants, item_state as state, rmap_item_at
from samepage import Machine
from samepage.ksm.structs import PAGE_MASK
from samepage.mm.content import PAGE_SHIFT
from samepage.mm.folio import (PAGE_ANON_EXCLUSIVE, PG_FREED, PG_KSM, PG_LOCKED, ZERO_PFN,
                               MemoryError_)
from samepage.mm.huge import HPAGE_PMD_NR, HPAGE_PMD_ORDER
from samepage.mm.mm import PTE_DIRTY, PTE_PMD, PTE_SPECIAL, PTE_WRITE

BIG = 100_000
PAIR = 7                       # the token of the identical pages under test
SPLIT_FAILED = "try_to_merge_one_page: split_huge_page failed"
D3_LOCKED = "cmp_and_merge_page: same-folio split skipped, folio locked"


# --------------------------------------------------------------------------- helpers
def machine(pages_to_scan: int = BIG, thp: str = "madvise", **kw) -> Machine:
    tunables = {k: kw.pop(k) for k in list(kw) if k in ("use_zero_pages", "smart_scan")}
    m = Machine(thp=thp, **kw)
    m.sysfs_write("pages_to_scan", pages_to_scan)
    for k, v in tunables.items():
        m.sysfs_write(k, v)
    return m


_unique = iter(range(1_000_000, 1 << 40))


def unique_tokens(n: int) -> list[int]:
    """``n`` tokens never used before in this test session (distinct, non-zero)."""
    return [next(_unique) for _ in range(n)]


def thp_region(m: Machine, p, name: str, tokens, thp: str = "huge", mergeable: bool = True):
    vma = p.mmap(len(tokens), name=name, thp=thp)
    p.fill(vma, tokens)
    if mergeable:
        p.madvise(vma, "mergeable")
    return vma


def folio_at(m: Machine, vma, i: int):
    return m.mem.page_folio[vma.pte[i]]


def orders(m: Machine, vma, lo: int = 0, hi: int | None = None) -> set[int]:
    hi = vma.nr_pages if hi is None else hi
    return {m.mem.page_folio[vma.pte[i]].order for i in range(lo, hi)
            if vma.pte[i] >= 0 and not vma.ptef[i] & PTE_SPECIAL}


def is_ksm_at(m: Machine, vma, i: int) -> bool:
    pfn = vma.pte[i]
    return pfn >= 0 and not vma.ptef[i] & PTE_SPECIAL and bool(
        m.mem.page_folio[pfn].flags & PG_KSM)


def item_at(m: Machine, p, vma, i: int):
    return rmap_item_at(m, p.mm, vma.start + (i << PAGE_SHIFT))


def batch(m: Machine, **held) -> int:
    r = m.run_batch()
    assert r is not None, "ksmd is not running"
    check_invariants(m, **held)
    return r.pages


def scan(m: Machine, n: int = 1, **held) -> None:
    """Exactly ``n`` more full scans, checking invariants after every batch."""
    target = m.sysfs_read("full_scans") + n
    guard = 0
    while m.sysfs_read("full_scans") < target:
        batch(m, **held)
        guard += 1
        assert guard < 100_000
    assert m.sysfs_read("full_scans") == target


def scans_until(m: Machine, cond, limit: int = 8, **held) -> int | None:
    """Run full scans until ``cond()`` holds; return full_scans then (None if never)."""
    for _ in range(limit):
        if cond():
            return m.sysfs_read("full_scans")
        scan(m, 1, **held)
    return m.sysfs_read("full_scans") if cond() else None


def pin(m: Machine, folio) -> None:
    """A GUP pin (an extra reference, as O_DIRECT or vfio would hold)."""
    m.mem.folio_get(folio)
    folio.pincount += 1


def unpin(m: Machine, folio) -> None:
    folio.pincount -= 1
    m.mem.folio_put(folio)


def assert_pmd_mapped(m: Machine, vma, base: int = 0, writable: bool | None = None):
    folio = folio_at(m, vma, base)
    assert folio.order == HPAGE_PMD_ORDER
    for k in range(HPAGE_PMD_NR):
        assert vma.pte[base + k] == folio.pfn + k
        assert vma.ptef[base + k] & PTE_PMD
        if writable is not None:
            assert bool(vma.ptef[base + k] & PTE_WRITE) == writable
    return folio


def pair_layout(n: int = 512, a: int = 5, b: int = 300) -> list[int]:
    tokens = unique_tokens(n)
    tokens[a] = tokens[b] = PAIR
    return tokens


# =========================================================================== behaviour 19
@pytest.mark.parametrize("a,b", [(5, 300), (0, 1), (510, 511)])
def test_b19_same_thp_pair_merges_one_full_scan_later_than_small_pages(a, b):
    merged_at = {}
    for thp in ("nohuge", "huge"):
        m = machine()
        p = m.spawn("p")
        vma = thp_region(m, p, "ram", pair_layout(512, a, b), thp=thp)
        assert orders(m, vma) == ({HPAGE_PMD_ORDER} if thp == "huge" else {0})
        m.sysfs_write("run", 1)
        merged_at[thp] = scans_until(
            m, lambda: is_ksm_at(m, vma, a) and is_ksm_at(m, vma, b))
        assert vma.pte[a] == vma.pte[b]
        assert (m.sysfs_read("pages_shared"), m.sysfs_read("pages_sharing")) == (1, 1)
    assert merged_at["nohuge"] == 2                  # behaviour 1
    assert merged_at["huge"] == merged_at["nohuge"] + 1


def test_b19_same_thp_pair_second_scan_fails_then_splits_then_merges():
    """Scan by scan (§4.11.3): scan 2 fails with two references on the folio (D3), splits
    it afterwards; scan 3 merges the now independent pages."""
    m = machine()
    p = m.spawn("p")
    vma = thp_region(m, p, "ram", pair_layout())
    thp = assert_pmd_mapped(m, vma)
    m.sysfs_write("run", 1)
    scan(m)
    assert m.vmstat["thp_split_page"] == m.vmstat["thp_split_page_failed"] == 0
    assert_pmd_mapped(m, vma)
    scan(m)                                          # scan 2: the attempt fails, then split
    assert m.ksm.merge_failures == {SPLIT_FAILED: 1}
    assert m.vmstat["thp_split_page_failed"] == 1    # inside try_to_merge_one_page
    assert m.vmstat["thp_split_page"] == 1           # the D3 split after put(tree_page)
    assert thp.flags & PG_FREED
    assert orders(m, vma) == {0}
    assert not any(vma.ptef[i] & PTE_PMD for i in range(512))
    assert state(item_at(m, p, vma, 5)) == "U"       # tree item stays in the tree
    assert state(item_at(m, p, vma, 300)) == "N"
    assert m.sysfs_read("pages_shared") == 0
    assert m.sysfs_read("pages_unshared") == 511
    scan(m)                                          # scan 3: an ordinary two-page merge
    assert vma.pte[5] == vma.pte[300] and is_ksm_at(m, vma, 5)
    assert (m.sysfs_read("pages_shared"), m.sysfs_read("pages_sharing")) == (1, 1)
    assert m.vmstat["thp_split_page"] == 1 and m.vmstat["thp_split_page_failed"] == 1
    assert p.read(vma, 5) == p.read(vma, 300) == PAIR


def test_b19_same_thp_pair_never_merges_while_the_folio_lock_is_held():
    m = machine(smart_scan=0)
    p = m.spawn("p")
    vma = thp_region(m, p, "ram", pair_layout())
    thp = assert_pmd_mapped(m, vma)
    assert m.mem.folio_trylock(thp)                  # somebody else holds the folio lock
    held = {"held_locks": [thp]}
    m.sysfs_write("run", 1)
    scan(m, 6, **held)
    assert not is_ksm_at(m, vma, 5) and not is_ksm_at(m, vma, 300)
    assert m.sysfs_read("pages_shared") == 0
    assert_pmd_mapped(m, vma)                        # never split
    assert m.vmstat["thp_split_page"] == 0
    # scans 2..6: the merge attempt fails on the trylock and so does D3's trylock
    assert m.ksm.merge_failures["try_to_merge_one_page: folio locked"] == 5
    assert m.ksm.merge_failures[D3_LOCKED] == 5
    assert SPLIT_FAILED not in m.ksm.merge_failures
    m.mem.folio_unlock(thp)
    check_invariants(m)
    scan(m)                                          # the split happens now ...
    assert m.vmstat["thp_split_page"] == 1 and orders(m, vma) == {0}
    assert not is_ksm_at(m, vma, 300)
    scan(m)                                          # ... and the merge a scan later
    assert vma.pte[5] == vma.pte[300] and is_ksm_at(m, vma, 5)


# =========================================================================== behaviour 20
@pytest.mark.parametrize("two_processes", [False, True])
def test_b20_pair_in_two_thps_merges_in_same_scan_as_small_pages_and_both_split(
        two_processes):
    merged_at = {}
    for thp in ("nohuge", "huge"):
        m = machine()
        p = m.spawn("p")
        q = m.spawn("q") if two_processes else p
        t1, t2 = unique_tokens(512), unique_tokens(512)
        t1[40] = t2[200] = PAIR
        v1 = thp_region(m, p, "a", t1, thp=thp)
        v2 = thp_region(m, q, "b", t2, thp=thp)
        f1, f2 = folio_at(m, v1, 0), folio_at(m, v2, 0)
        scanned_pfn = v2.pte[200]
        m.sysfs_write("run", 1)
        merged_at[thp] = scans_until(
            m, lambda: is_ksm_at(m, v1, 40) and is_ksm_at(m, v2, 200))
        assert v1.pte[40] == v2.pte[200]
        assert (m.sysfs_read("pages_shared"), m.sysfs_read("pages_sharing")) == (1, 1)
        if thp == "huge":
            # each folio was split while ksmd held exactly one reference on it
            assert f1.flags & PG_FREED and f2.flags & PG_FREED
            assert orders(m, v1) == orders(m, v2) == {0}
            assert m.vmstat["thp_split_page"] == 2
            assert m.vmstat["thp_split_page_failed"] == 0
            assert m.ksm.merge_failures == {}
            assert v2.pte[200] == scanned_pfn        # the scanned page's frame survives
        assert p.read(v1, 40) == q.read(v2, 200) == PAIR
    assert merged_at["huge"] == merged_at["nohuge"] == 2


# =========================================================================== behaviour 21
ZERO_FROM = 10          # layout: pair at 0/1, distinct contents 2..9, zero-filled 10..511


def zero_layout() -> list[int]:
    tokens = [PAIR, PAIR] + unique_tokens(ZERO_FROM - 2) + [0] * (512 - ZERO_FROM)
    return tokens


@pytest.mark.unsanitized
@pytest.mark.parametrize("use_zero_pages", [0, 1])
def test_b21_ksm_split_maps_every_zero_subpage_to_the_shared_zero_page_at_once(
        use_zero_pages):
    m = machine(pages_to_scan=4, use_zero_pages=use_zero_pages)
    p = m.spawn("p")
    vma = thp_region(m, p, "ram", zero_layout())
    thp = assert_pmd_mapped(m, vma)
    zero_pfns = [thp.pfn + i for i in range(ZERO_FROM, 512)]
    m.sysfs_write("run", 1)
    scan(m)
    assert p.mm.anon_rss == 512
    free_before = m.mem.nr_free_frames
    batch(m)                    # scan 2, pages 0..3: the pair fails and the THP is split
    assert m.vmstat["thp_split_page"] == 1
    assert m.ksm.ksm_scan.address < vma.start + (ZERO_FROM << PAGE_SHIFT)   # cursor before them
    for i in range(ZERO_FROM, 512):
        assert vma.pte[i] == ZERO_PFN, i
        f = vma.ptef[i]
        assert f & PTE_SPECIAL and not f & PTE_DIRTY and not f & PTE_WRITE, (i, f)
    for pfn in zero_pfns:                            # their memory went back at once
        assert m.mem.page_folio[pfn] is None
    assert m.mem.nr_free_frames == free_before + len(zero_pfns)
    assert p.mm.anon_rss == ZERO_FROM
    assert m.sysfs_read("ksm_zero_pages") == 0 and p.ksm_stat()["ksm_zero_pages"] == 0
    for i in range(ZERO_FROM, 512):
        assert p.read(vma, i) == 0
    scan(m)                     # finish scan 2: the zero subpages are no candidates any more
    slot = m.ksm.mm_slots_hash[id(p.mm)]
    assert sorted((it.address & PAGE_MASK) - vma.start >> PAGE_SHIFT
                  for it in slot.rmap_list) == list(range(ZERO_FROM))
    assert m.ksm.ksm_rmap_items == ZERO_FROM
    before = m.sysfs_read("pages_scanned")
    scan(m)
    assert m.sysfs_read("pages_scanned") - before == ZERO_FROM
    assert vma.pte[0] == vma.pte[1] and is_ksm_at(m, vma, 0)
    assert m.sysfs_read("ksm_zero_pages") == 0
    assert (m.sysfs_read("pages_shared"), m.sysfs_read("pages_sharing")) == (1, 1)


def test_b21_without_split_zero_remap_zero_subpages_stay_and_merge_as_ordinary_pages():
    m = machine(split_zero_remap=False)
    p = m.spawn("p")
    vma = thp_region(m, p, "ram", zero_layout())
    m.sysfs_write("run", 1)
    scan(m, 2)              # scan 2: split at page 1; the zero pages merge in the same scan
    assert m.vmstat["thp_split_page"] == 1 and orders(m, vma) == {0}
    assert not any(vma.ptef[i] & PTE_SPECIAL for i in range(512))
    # 502 zero-filled pages, max_page_sharing 256: two KSM pages (dups of one chain)
    kpfns = {vma.pte[i] for i in range(ZERO_FROM, 512)}
    assert len(kpfns) == 2
    assert all(is_ksm_at(m, vma, i) and p.read(vma, i) == 0 for i in range(ZERO_FROM, 512))
    assert (m.sysfs_read("pages_shared"), m.sysfs_read("pages_sharing")) == (2, 500)
    assert m.sysfs_read("stable_node_chains") == 1
    assert not is_ksm_at(m, vma, 1)
    scan(m)                                          # the same-folio pair, a scan later
    assert vma.pte[0] == vma.pte[1] and is_ksm_at(m, vma, 0)
    assert (m.sysfs_read("pages_shared"), m.sysfs_read("pages_sharing")) == (3, 501)
    assert m.sysfs_read("ksm_zero_pages") == 0
    assert m.ksm.ksm_rmap_items == 512
    assert p.mm.anon_rss == 512


def test_b21_all_zero_thp_vanishes_from_the_scan_after_the_first_split():
    """The thp_zero_split fixture's mechanics: the first same-folio attempt splits the THP
    and every subpage (including the pair) becomes a plain zero-page mapping."""
    m = machine(use_zero_pages=0)
    p = m.spawn("p")
    vma = p.mmap(512, name="ram", thp="huge")
    p.write(vma, 0, 0)                               # fault the THP in: all zero-filled
    p.madvise(vma, "mergeable")
    assert_pmd_mapped(m, vma)
    m.sysfs_write("run", 1)
    scan(m, 2)
    assert all(vma.pte[i] == ZERO_PFN and vma.ptef[i] == PTE_SPECIAL for i in range(512))
    assert p.mm.anon_rss == 0
    assert m.sysfs_read("pages_unshared") == 1       # page 0, inserted before the split
    assert m.sysfs_read("ksm_zero_pages") == 0
    scan(m)
    assert m.ksm.ksm_rmap_items == 0 and m.sysfs_read("pages_unshared") == 0


# =========================================================================== §4.11.5 table
def _one_zero_subpage_thp(m, p, zero_at: int = 0):
    tokens = unique_tokens(512)
    tokens[zero_at] = 0
    return thp_region(m, p, "ram", tokens)


def test_4115_b2_zero_page_merge_splits_the_thp_with_one_reference():
    m = machine(use_zero_pages=1, split_zero_remap=False)
    p = m.spawn("p")
    vma = _one_zero_subpage_thp(m, p)
    thp = assert_pmd_mapped(m, vma)
    m.sysfs_write("run", 1)
    scan(m, 2)
    assert thp.flags & PG_FREED and orders(m, vma) == {0}
    assert m.vmstat["thp_split_page"] == 1 and m.vmstat["thp_split_page_failed"] == 0
    assert vma.pte[0] == ZERO_PFN and vma.ptef[0] == PTE_SPECIAL | PTE_DIRTY
    assert m.sysfs_read("ksm_zero_pages") == 1
    assert state(item_at(m, p, vma, 0)) == "N"       # B2: in no tree
    assert m.sysfs_read("pages_unshared") == 511


@pytest.mark.parametrize("split_zero_remap", [False, True])
def test_4115_b2_zero_page_merge_split_failure_returns_efault_and_goes_to_the_trees(
        split_zero_remap):
    m = machine(use_zero_pages=1, split_zero_remap=split_zero_remap)
    m.ksm.failure_log = collections.deque()
    p = m.spawn("p")
    vma = _one_zero_subpage_thp(m, p)
    thp = assert_pmd_mapped(m, vma)
    pin(m, thp)                 # refcount = mapcount + pin: ksmd's split must fail
    m.sysfs_write("run", 1)
    scan(m, 2)
    assert_pmd_mapped(m, vma)
    assert m.vmstat["thp_split_page"] == 0 and m.vmstat["thp_split_page_failed"] == 1
    assert m.ksm.merge_failures == {SPLIT_FAILED: 1}
    assert [e[2] for e in m.ksm.failure_log] == [vma.start]
    assert m.sysfs_read("ksm_zero_pages") == 0
    # -EFAULT: the page went on to the stable tree (empty) and the unstable tree
    assert state(item_at(m, p, vma, 0)) == "U"
    assert m.sysfs_read("pages_unshared") == 512
    unpin(m, thp)
    check_invariants(m)
    scan(m)
    assert m.vmstat["thp_split_page"] == 1
    if split_zero_remap:
        # the split itself maps the zero subpage to the (non-KSM) zero page (§4.11.4)
        assert vma.ptef[0] == PTE_SPECIAL and m.sysfs_read("ksm_zero_pages") == 0
        assert "write_protect_page: page not mapped at its address" in m.ksm.merge_failures
    else:
        assert vma.ptef[0] == PTE_SPECIAL | PTE_DIRTY and m.sysfs_read("ksm_zero_pages") == 1


def test_4115_b2_split_failure_proceeds_to_the_stable_tree_and_fails_there_too():
    """B2's -EFAULT leads to the stable tree: a KSM page of zero content (made while
    use_zero_pages was 0) is found, the stable merge needs the same split, fails again, and
    the visit ends as C3 (in no tree)."""
    m = machine(use_zero_pages=0)
    m.ksm.failure_log = collections.deque()
    a = m.spawn("a")
    small = thp_region(m, a, "small", [0, 0], thp="nohuge")
    b = m.spawn("b")
    tokens = unique_tokens(512)
    tokens[0] = 0
    vma = thp_region(m, b, "ram", tokens, mergeable=False)
    thp = assert_pmd_mapped(m, vma)
    pin(m, thp)
    m.sysfs_write("run", 1)
    scan(m, 2)
    assert is_ksm_at(m, small, 0) and small.pte[0] == small.pte[1]
    m.sysfs_write("use_zero_pages", 1)
    b.madvise(vma, "mergeable")
    scan(m, 2)
    assert [(e[1], e[2], e[3]) for e in m.ksm.failure_log] == [
        ("b", vma.start, SPLIT_FAILED),               # B2: zero-page merge
        ("b", vma.start, SPLIT_FAILED)]               # C: merge with the KSM page -> C3
    assert m.vmstat["thp_split_page_failed"] == 2
    assert state(item_at(m, b, vma, 0)) == "N"
    assert m.sysfs_read("ksm_zero_pages") == 0
    assert (m.sysfs_read("pages_shared"), m.sysfs_read("pages_sharing")) == (1, 1)
    assert_pmd_mapped(m, vma)


def test_4115_b2_with_split_zero_remap_the_zero_subpage_is_unmapped_by_the_split():
    """§4.11.4 (inference): the scanned zero subpage is remapped by its own split, so
    write_protect_page cannot find it: the zero-page merge fails, nothing is counted in
    ksm_zero_pages, and the page goes on to the trees; the memory is freed anyway."""
    m = machine(use_zero_pages=1)
    p = m.spawn("p")
    vma = _one_zero_subpage_thp(m, p)
    thp = assert_pmd_mapped(m, vma)
    m.sysfs_write("run", 1)
    scan(m, 2)
    assert m.vmstat["thp_split_page"] == 1
    assert vma.pte[0] == ZERO_PFN and vma.ptef[0] == PTE_SPECIAL
    assert m.mem.page_folio[thp.pfn] is None
    assert m.sysfs_read("ksm_zero_pages") == 0
    assert m.ksm.merge_failures == {"write_protect_page: page not mapped at its address": 1}
    assert p.mm.anon_rss == 511


def _ksm_page_then_thp(m, pin_thp: bool):
    """Process a: two small pages with PAIR (merged in scan 2, first in scan order);
    process b: a THP whose subpage 3 holds PAIR."""
    a = m.spawn("a")
    small = thp_region(m, a, "small", [PAIR, PAIR], thp="nohuge")
    b = m.spawn("b")
    tokens = unique_tokens(512)
    tokens[3] = PAIR
    vma = thp_region(m, b, "ram", tokens)
    thp = assert_pmd_mapped(m, vma)
    if pin_thp:
        pin(m, thp)
    return a, small, b, vma, thp


def test_4115_c2_stable_merge_of_a_thp_subpage_splits_the_thp():
    m = machine()
    a, small, b, vma, thp = _ksm_page_then_thp(m, pin_thp=False)
    m.sysfs_write("run", 1)
    scan(m, 2)
    kpfn = small.pte[0]
    assert is_ksm_at(m, small, 0) and small.pte[1] == kpfn
    assert vma.pte[3] == kpfn                        # C2: appended to the existing node
    assert state(item_at(m, b, vma, 3)) == "S"
    assert (m.sysfs_read("pages_shared"), m.sysfs_read("pages_sharing")) == (1, 2)
    assert thp.flags & PG_FREED and orders(m, vma) == {0}
    assert m.vmstat["thp_split_page"] == 1 and m.vmstat["thp_split_page_failed"] == 0
    assert b.read(vma, 3) == PAIR


def test_4115_c3_stable_merge_split_failure_no_unstable_insertion():
    m = machine()
    a, small, b, vma, thp = _ksm_page_then_thp(m, pin_thp=True)
    m.sysfs_write("run", 1)
    scan(m, 2)
    assert is_ksm_at(m, small, 0)
    assert not is_ksm_at(m, vma, 3)
    assert_pmd_mapped(m, vma)
    assert m.ksm.merge_failures == {SPLIT_FAILED: 1}
    it = item_at(m, b, vma, 3)
    assert state(it) == "N"                          # C3: not in the unstable tree
    assert m.sysfs_read("pages_unshared") == 511     # only the other subpages
    assert (m.sysfs_read("pages_shared"), m.sysfs_read("pages_sharing")) == (1, 1)
    scan(m)                                          # still pinned: the same again
    assert m.ksm.merge_failures == {SPLIT_FAILED: 2} and state(it) == "N"
    unpin(m, thp)
    check_invariants(m)
    scan(m)
    assert vma.pte[3] == small.pte[0]


def test_4115_d3_unstable_step1_fails_on_same_folio_and_the_folio_is_split_after():
    m = machine()
    m.ksm.failure_log = collections.deque()
    p = m.spawn("p")
    vma = thp_region(m, p, "ram", pair_layout(512, 5, 300))
    m.sysfs_write("run", 1)
    scan(m, 2)
    # the failure is attributed to the scanned page, the split followed (D3)
    assert [(e[2], e[3]) for e in m.ksm.failure_log] == [
        (vma.start + (300 << PAGE_SHIFT), SPLIT_FAILED)]
    assert m.vmstat["thp_split_page_failed"] == 1 and m.vmstat["thp_split_page"] == 1
    assert orders(m, vma) == {0}
    assert state(item_at(m, p, vma, 5)) == "U" and state(item_at(m, p, vma, 300)) == "N"


def test_4115_d4_unstable_step1_fails_for_another_reason_no_split():
    """The scanned subpage's THP is pinned, the tree page is a small page: step 1's split
    fails, ``split`` is false (different folios), nothing is split (D4)."""
    m = machine()
    p = m.spawn("p")
    small = thp_region(m, p, "small", [PAIR], thp="nohuge")
    tokens = unique_tokens(512)
    tokens[0] = PAIR
    vma = thp_region(m, p, "ram", tokens)
    thp = assert_pmd_mapped(m, vma)
    pin(m, thp)
    m.sysfs_write("run", 1)
    scan(m, 2)
    assert m.ksm.merge_failures == {SPLIT_FAILED: 1}
    assert m.vmstat["thp_split_page_failed"] == 1 and m.vmstat["thp_split_page"] == 0
    assert_pmd_mapped(m, vma)
    assert state(item_at(m, p, small, 0)) == "U"     # the tree item stays in the tree
    assert state(item_at(m, p, vma, 0)) == "N"
    assert not is_ksm_at(m, small, 0) and not is_ksm_at(m, vma, 0)
    unpin(m, thp)
    check_invariants(m)
    scan(m)
    assert vma.pte[0] == small.pte[0] and is_ksm_at(m, vma, 0)
    assert m.vmstat["thp_split_page"] == 1


def test_4115_unstable_step2_split_failure_on_tree_folio_break_cow_undoes_step1():
    """The tree page is a subpage of a pinned THP, the scanned page a small page: step 1
    makes the scanned page a KSM page, step 2 cannot split the tree page's folio, and
    break_cow gives the scanned address a private copy again."""
    m = machine()
    p = m.spawn("p")
    tokens = unique_tokens(512)
    tokens[0] = PAIR
    vma = thp_region(m, p, "ram", tokens)            # first in scan order: the tree page
    small = thp_region(m, p, "small", [PAIR], thp="nohuge")
    thp = assert_pmd_mapped(m, vma)
    pin(m, thp)
    m.sysfs_write("run", 1)
    scan(m)
    small_pfn = small.pte[0]
    scan(m)
    assert m.ksm.merge_failures == {SPLIT_FAILED: 1}
    assert m.vmstat["thp_split_page_failed"] == 1 and m.vmstat["thp_split_page"] == 0
    assert_pmd_mapped(m, vma)
    assert m.vmstat["cow_ksm"] == 1                  # break_cow unshared the KSM page
    assert small.pte[0] != small_pfn and not is_ksm_at(m, small, 0)
    assert small.ptef[0] & PTE_WRITE == 0            # unshare: a read-only private copy
    assert p.read(small, 0) == PAIR
    assert m.mem.page_folio[small_pfn] is None       # the one-mapping KSM page is gone
    assert state(item_at(m, p, vma, 0)) == "U"       # tree item stays (D4)
    it = item_at(m, p, small, 0)
    assert state(it) == "N" and it.anon_vma is None
    assert m.sysfs_read("pages_shared") == 0
    unpin(m, thp)
    check_invariants(m)
    scan(m)
    assert vma.pte[0] == small.pte[0] and is_ksm_at(m, vma, 0)


def test_4115_unstable_step2_split_failure_is_logged_at_the_tree_pages_address():
    m = machine()
    m.ksm.failure_log = collections.deque()
    p = m.spawn("p")
    tokens = unique_tokens(512)
    tokens[0] = PAIR
    vma = thp_region(m, p, "ram", tokens)
    thp_region(m, p, "small", [PAIR], thp="nohuge")
    pin(m, folio_at(m, vma, 0))
    m.sysfs_write("run", 1)
    scan(m, 2)
    assert [(e[1], e[2], e[3]) for e in m.ksm.failure_log] == [("p", vma.start, SPLIT_FAILED)]


# =========================================================================== memory manager
@pytest.mark.parametrize("mode,region,huge", [
    ("always", "huge", True), ("always", "default", True), ("always", "nohuge", False),
    ("madvise", "huge", True), ("madvise", "default", False), ("madvise", "nohuge", False),
    ("never", "huge", False), ("never", "default", False), ("never", "nohuge", False),
])
def test_mm_thp_fault_policy(mode, region, huge):
    m = machine(thp=mode)
    p = m.spawn("p")
    vma = p.mmap(512, name="r", thp=region)
    p.write(vma, 100, 9)
    folio = folio_at(m, vma, 100)
    if huge:
        assert_pmd_mapped(m, vma, writable=True)
        assert folio.mapcount == 1 and folio.refcount == 1
        assert all(vma.ptef[i] & PTE_DIRTY for i in range(512))
        assert m.vmstat["thp_fault_alloc"] == 1
        assert p.mm.anon_rss == 512
        assert all(m.mem.page_flags[folio.pfn + k] & PAGE_ANON_EXCLUSIVE for k in range(512))
        assert [p.read(vma, i) for i in (99, 100, 101)] == [0, 9, 0]
    else:
        assert folio.order == 0
        assert sum(1 for x in vma.pte if x >= 0) == 1
        assert m.vmstat["thp_fault_alloc"] == 0
        assert p.mm.anon_rss == 1
    check_invariants(m)


def test_mm_thp_needs_a_whole_aligned_2mib_block_inside_the_vma():
    m = machine(thp="always")
    p = m.spawn("p")
    short = p.mmap(511, name="short")
    p.write(short, 0, 1)
    assert folio_at(m, short, 0).order == 0
    long = p.mmap(700, name="long")
    p.write(long, 600, 1)                            # the second block is incomplete
    assert folio_at(m, long, 600).order == 0
    p.write(long, 3, 1)
    assert_pmd_mapped(m, long, 0)
    assert m.vmstat["thp_fault_alloc"] == 1
    check_invariants(m)


def test_mm_mthp_64k_gives_order4_pte_mapped_folios():
    m = machine(thp="madvise", mthp_kb=[64])
    p = m.spawn("p")
    vma = p.mmap(40, name="r", thp="huge")           # too small for a PMD
    p.write(vma, 3, 5)
    folio = folio_at(m, vma, 3)
    assert folio.order == 4 and folio.pfn % 16 == 0
    assert [vma.pte[i] for i in range(16)] == [folio.pfn + k for k in range(16)]
    assert not any(vma.ptef[i] & PTE_PMD for i in range(16))
    assert all(vma.ptef[i] & PTE_WRITE for i in range(16))
    assert folio.refcount == folio.mapcount == 16
    assert folio.page_mapcount == [1] * 16
    assert vma.pte[16] == -1
    assert m.vmstat["mthp_64kB_fault_alloc"] == 1
    assert p.mm.anon_rss == 16
    p.write(vma, 17, 6)
    assert folio_at(m, vma, 17).order == 4 and folio_at(m, vma, 17) != folio
    p.write(vma, 35, 6)                              # 32..47 is not inside the VMA
    assert folio_at(m, vma, 35).order == 0
    check_invariants(m)
    # mTHP follows the top-level mode ("inherit"): not in a default region under madvise
    q = m.spawn("q")
    w = q.mmap(40, name="r")
    q.write(w, 0, 1)
    assert folio_at(m, w, 0).order == 0
    check_invariants(m)


def test_mm_mthp_falls_back_to_a_small_page_when_its_range_is_not_empty():
    m = machine(thp="always", mthp_kb=[64])
    p = m.spawn("p")
    vma = p.mmap(32, name="r")
    p.write(vma, 0, 1)
    folio = folio_at(m, vma, 0)
    assert folio.order == 4
    p.zap(vma, [5])
    assert folio.mapcount == folio.refcount == 15 and folio.page_mapcount[5] == 0
    check_invariants(m)
    p.write(vma, 5, 2)                               # 0..15 is not pte_range_none
    assert folio_at(m, vma, 5).order == 0
    assert folio.mapcount == 15
    check_invariants(m)


def test_mm_mthp_orders_are_tried_highest_first():
    m = machine(thp="always", mthp_kb=[16, 64])
    p = m.spawn("p")
    vma = p.mmap(20, name="r")
    p.write(vma, 1, 1)
    assert folio_at(m, vma, 1).order == 4            # 64 KiB fits at 0..15
    p.write(vma, 17, 1)
    assert folio_at(m, vma, 17).order == 2           # 16..31 does not fit, 16..19 does
    check_invariants(m)


def test_mm_pmd_fault_not_taken_when_the_block_already_has_a_pte_table():
    m = machine()
    p = m.spawn("p")
    vma = p.mmap(512, name="r", thp="nohuge")
    p.write(vma, 0, 1)                               # a small page: the block gets a PTE table
    p.madvise(vma, "hugepage")
    p.write(vma, 200, 2)
    assert folio_at(m, vma, 200).order == 0
    assert m.vmstat["thp_fault_alloc"] == 0
    p.zap(vma, [0, 200])                             # empty again, but the table stays
    p.write(vma, 300, 3)
    assert folio_at(m, vma, 300).order == 0
    check_invariants(m)


def test_mm_zapping_a_whole_pmd_thp_clears_the_pmd_and_the_next_fault_maps_a_new_thp():
    m = machine()
    p = m.spawn("p")
    vma = p.mmap(512, name="r", thp="huge")
    p.write(vma, 0, 1)
    old = assert_pmd_mapped(m, vma)
    p.zap(vma, range(512))
    assert old.flags & PG_FREED and all(x == -1 for x in vma.pte)
    assert p.mm.anon_rss == 0
    check_invariants(m)
    p.write(vma, 7, 2)
    new = assert_pmd_mapped(m, vma)
    assert new != old and m.vmstat["thp_fault_alloc"] == 2
    check_invariants(m)


def test_mm_fork_of_a_pmd_thp_shares_it_write_protected_in_both():
    m = machine()
    p = m.spawn("p")
    vma = thp_region(m, p, "r", unique_tokens(512), mergeable=False)
    folio = assert_pmd_mapped(m, vma, writable=True)
    c = p.fork("c")
    cvma = c.region("r")
    assert folio.refcount == 2 and folio.mapcount == 2
    assert folio.page_mapcount == [0] * 512          # two PMD mappings, no PTEs
    assert_pmd_mapped(m, vma, writable=False)
    assert_pmd_mapped(m, cvma, writable=False)
    assert not any(m.mem.page_flags[folio.pfn + k] & PAGE_ANON_EXCLUSIVE for k in range(512))
    assert c.mm.anon_rss == 512
    check_invariants(m)


def test_mm_child_write_to_a_forked_thp_splits_the_pmd_there_and_copies_one_page():
    m = machine()
    p = m.spawn("p")
    tokens = unique_tokens(512)
    vma = thp_region(m, p, "r", tokens, mergeable=False)
    folio = assert_pmd_mapped(m, vma)
    c = p.fork("c")
    cvma = c.region("r")
    c.write(cvma, 7, 99)
    new = folio_at(m, cvma, 7)
    assert new != folio and new.order == 0
    assert new.refcount == 1 + sum(1 for f in m.mem.lru_batch if f == new)
    assert cvma.ptef[7] & PTE_WRITE
    for i in range(512):
        if i != 7:
            assert cvma.pte[i] == folio.pfn + i and not cvma.ptef[i] & PTE_PMD
            assert not cvma.ptef[i] & PTE_WRITE
    assert folio.order == HPAGE_PMD_ORDER            # the folio itself is not split
    assert folio.mapcount == folio.refcount == 1 + 511
    assert folio.page_mapcount[7] == 0 and folio.page_mapcount[8] == 1
    assert_pmd_mapped(m, vma, writable=False)        # the parent keeps its PMD
    assert m.vmstat["thp_split_page"] == 0
    assert c.mm.anon_rss == 512 and p.mm.anon_rss == 512
    assert c.read(cvma, 7) == 99 and p.read(vma, 7) == tokens[7]
    assert c.read(cvma, 8) == p.read(vma, 8) == tokens[8]
    check_invariants(m)
    p.write(vma, 9, 98)                              # now the parent's PMD is split too
    assert not vma.ptef[0] & PTE_PMD
    assert folio.mapcount == folio.refcount == 511 + 511
    assert p.read(vma, 9) == 98 and c.read(cvma, 9) == tokens[9]
    check_invariants(m)


def test_mm_write_to_an_unshared_thp_after_the_child_exits_reuses_the_pmd():
    m = machine()
    p = m.spawn("p")
    vma = thp_region(m, p, "r", unique_tokens(512), mergeable=False)
    folio = assert_pmd_mapped(m, vma)
    c = p.fork("c")
    c.exit()
    assert folio.refcount == folio.mapcount == 1
    p.write(vma, 5, 1)
    assert assert_pmd_mapped(m, vma, writable=True) == folio
    assert all(m.mem.page_flags[folio.pfn + k] & PAGE_ANON_EXCLUSIVE for k in range(512))
    check_invariants(m)


def test_mm_fork_of_an_mthp_then_child_write_copies_one_page():
    m = machine(thp="always", mthp_kb=[64])
    p = m.spawn("p")
    vma = p.mmap(16, name="r")
    p.fill(vma, range(1, 17))
    folio = folio_at(m, vma, 0)
    assert folio.order == 4
    c = p.fork("c")
    assert folio.refcount == folio.mapcount == 32 and folio.page_mapcount == [2] * 16
    c.write(c.region("r"), 3, 50)
    assert folio.refcount == folio.mapcount == 31 and folio.page_mapcount[3] == 1
    assert c.read("r", 3) == 50 and p.read(vma, 3) == 4
    check_invariants(m)


@pytest.mark.parametrize("lo,hi", [(10, 20), (0, 1), (511, 512), (0, 511)])
def test_mm_madv_dontneed_on_part_of_a_pmd_thp_splits_the_pmd(lo, hi):
    m = machine()
    p = m.spawn("p")
    vma = thp_region(m, p, "r", unique_tokens(512), mergeable=False)
    folio = assert_pmd_mapped(m, vma)
    p.zap(vma, range(lo, hi))
    left = 512 - (hi - lo)
    assert folio.order == HPAGE_PMD_ORDER and not folio.flags & PG_FREED
    assert folio.mapcount == folio.refcount == left
    assert folio.page_mapcount == [0 if lo <= k < hi else 1 for k in range(512)]
    assert not any(vma.ptef[i] & PTE_PMD for i in range(512))
    assert all(vma.pte[i] == -1 for i in range(lo, hi))
    assert p.mm.anon_rss == left
    check_invariants(m)


@pytest.mark.parametrize("lo,hi", [(0, 256), (256, 512), (100, 200)])
def test_mm_munmap_of_part_of_a_pmd_thp_splits_the_pmd(lo, hi):
    m = machine()
    p = m.spawn("p")
    tokens = unique_tokens(512)
    vma = thp_region(m, p, "r", tokens, mergeable=False)
    folio = assert_pmd_mapped(m, vma)
    start = vma.start
    p.mm.munmap(start + (lo << PAGE_SHIFT), (hi - lo) << PAGE_SHIFT)
    left = 512 - (hi - lo)
    assert folio.mapcount == folio.refcount == left
    assert folio.page_mapcount == [0 if lo <= k < hi else 1 for k in range(512)]
    assert p.mm.anon_rss == left
    for v in p.mm.vmas:
        for i in range(v.nr_pages):
            assert not v.ptef[i] & PTE_PMD
            k = ((v.start - start) >> PAGE_SHIFT) + i
            assert v.pte[i] == folio.pfn + k and p.mm.read_page(v.start + (i << PAGE_SHIFT)) \
                == tokens[k]
    check_invariants(m)


@pytest.mark.parametrize("lo,hi", [(0, 100), (100, 200), (300, 512)])
def test_mm_madvise_on_part_of_a_pmd_thp_splits_the_vma_and_the_pmd(lo, hi):
    m = machine()
    p = m.spawn("p")
    vma = thp_region(m, p, "r", unique_tokens(512), mergeable=False)
    folio = assert_pmd_mapped(m, vma)
    p.madvise(vma, "mergeable", range(lo, hi))
    assert len(p.mm.vmas) == 1 + (lo > 0) + (hi < 512)
    assert folio.mapcount == folio.refcount == 512
    check_invariants(m)


def test_mm_split_huge_page_reference_rule():
    m = machine()
    p = m.spawn("p")
    tokens = unique_tokens(512)
    vma = thp_region(m, p, "r", tokens, mergeable=False)
    folio = assert_pmd_mapped(m, vma)
    mem = m.mem
    page = folio.pfn + 37
    with pytest.raises(MemoryError_):
        mem.split_huge_page(page)                    # the caller must hold the folio lock
    assert mem.folio_trylock(folio)
    assert mem.split_huge_page(page) == -errno.EAGAIN   # no caller reference at all
    mem.folio_get(folio)                             # the caller's reference
    mem.folio_get(folio)                             # somebody else's
    assert mem.split_huge_page(page) == -errno.EAGAIN
    assert m.vmstat["thp_split_page_failed"] == 2 and m.vmstat["thp_split_page"] == 0
    assert all(mem.page_folio[folio.pfn + k] == folio for k in range(512))
    check_invariants(m, held_refs={folio: 2}, held_locks=[folio])
    mem.folio_put(folio)
    assert mem.split_huge_page(page) == 0
    assert m.vmstat["thp_split_page"] == 1
    assert folio.flags & PG_FREED
    assert all(mem.page_folio[folio.pfn + k] != folio for k in range(512))
    mine = mem.page_folio[page]
    assert mine.order == 0 and mine.pfn == page
    assert mine.refcount == 2 and mine.mapcount == 1     # mapping + the caller's reference
    assert mine.flags & PG_LOCKED
    for k in range(512):
        f = mem.page_folio[folio.pfn + k]
        assert f.order == 0 and vma.pte[k] == f.pfn and not vma.ptef[k] & PTE_PMD
        if f != mine:
            assert f.refcount == f.mapcount == 1 and not f.flags & PG_LOCKED
    check_invariants(m, held_refs={mine: 1}, held_locks=[mine])
    mem.folio_unlock(mine)
    mem.folio_put(mine)
    assert [p.read(vma, i) for i in range(512)] == tokens
    check_invariants(m)


def test_mm_split_of_a_forked_thp_gives_every_subpage_both_mappings():
    m = machine()
    p = m.spawn("p")
    vma = thp_region(m, p, "r", unique_tokens(512), mergeable=False)
    folio = assert_pmd_mapped(m, vma)
    c = p.fork("c")
    mem = m.mem
    mem.folio_get(folio)
    mem.folio_trylock(folio)
    assert mem.split_huge_page(folio.pfn) == 0
    mine = mem.page_folio[folio.pfn]
    for k in range(1, 512):
        f = mem.page_folio[folio.pfn + k]
        assert f.mapcount == f.refcount == 2
    assert mine.mapcount == 2 and mine.refcount == 3
    assert c.region("r").pte[5] == vma.pte[5] == folio.pfn + 5
    mem.folio_unlock(mine)
    mem.folio_put(mine)
    check_invariants(m)


def test_mm_split_remaps_zero_subpages_even_the_callers_page():
    m = machine()
    p = m.spawn("p")
    vma = p.mmap(512, name="r", thp="huge")
    p.write(vma, 1, 5)                               # subpage 1 non-zero, the rest zero
    folio = assert_pmd_mapped(m, vma)
    mem = m.mem
    mem.folio_get(folio)
    mem.folio_trylock(folio)
    assert mem.split_huge_page(folio.pfn) == 0       # the caller's page 0 is zero-filled
    mine = mem.page_folio[folio.pfn]
    assert mine.mapcount == 0 and mine.refcount == 1 and mine.flags & PG_LOCKED
    assert vma.pte[0] == ZERO_PFN and vma.ptef[0] == PTE_SPECIAL
    assert vma.pte[1] == folio.pfn + 1
    assert sum(1 for i in range(512) if vma.pte[i] == ZERO_PFN) == 511
    assert p.mm.anon_rss == 1
    mem.folio_unlock(mine)
    mem.folio_put(mine)                              # the caller's put frees it
    assert mem.page_folio[folio.pfn] is None
    check_invariants(m)


@pytest.mark.unsanitized
def test_mm_split_frees_subpages_that_are_no_longer_mapped():
    """§4.11.2: after a split "the other pages may be freed if they are not mapped": a
    subpage zapped earlier (PTE-mapped THP) must not survive the split as a folio without
    a reference."""
    m = machine()
    p = m.spawn("p")
    vma = thp_region(m, p, "r", unique_tokens(512), mergeable=False)
    folio = assert_pmd_mapped(m, vma)
    p.zap(vma, range(10, 20))
    mem = m.mem
    free_before = mem.nr_free_frames
    mem.folio_get(folio)
    mem.folio_trylock(folio)
    assert mem.split_huge_page(folio.pfn) == 0
    mine = mem.page_folio[folio.pfn]
    mem.folio_unlock(mine)
    mem.folio_put(mine)
    for k in range(10, 20):
        assert mem.page_folio[folio.pfn + k] is None, mem.page_folio[folio.pfn + k]
    assert mem.nr_free_frames == free_before + 10
    check_invariants(m)


def test_mm_split_of_an_mthp_by_ksm_merge():
    """KSM splits a PTE-mapped mTHP like a THP: two mTHPs with one identical subpage each
    merge in the second scan and both are split."""
    m = machine(thp="always", mthp_kb=[64])
    p = m.spawn("p")
    t = unique_tokens(32)
    t[3] = t[20] = PAIR
    vma = thp_region(m, p, "r", t, thp="default")
    assert folio_at(m, vma, 0).order == 4 and folio_at(m, vma, 16).order == 4
    m.sysfs_write("run", 1)
    scan(m, 2)
    assert vma.pte[3] == vma.pte[20] and is_ksm_at(m, vma, 3)
    assert orders(m, vma) == {0}
    # /proc/vmstat thp_split_page counts PMD-sized folios only; hugepages-64kB/stats/split
    assert m.vmstat["thp_split_page"] == 0
    assert m.vmstat["mthp_64kB_split"] == 2
    assert m.vmstat.get("mthp_64kB_split_failed", 0) == 0


def test_ksm_split_of_a_partly_unmapped_thp_frees_the_unmapped_subpages():
    """The same through KSM: a THP whose PMD was split by MADV_DONTNEED on a few subpages is
    split by a merge; the zapped subpages must be freed, not left as unreferenced folios."""
    m = machine()
    p = m.spawn("p")
    t1, t2 = unique_tokens(512), unique_tokens(512)
    t1[40] = t2[200] = PAIR
    v1 = thp_region(m, p, "a", t1)
    v2 = thp_region(m, p, "b", t2)
    f1 = folio_at(m, v1, 0)
    p.zap(v1, range(100, 110))
    m.sysfs_write("run", 1)
    scan(m, 2)
    assert v1.pte[40] == v2.pte[200] and is_ksm_at(m, v1, 40)
    assert all(m.mem.page_folio[f1.pfn + k] is None for k in range(100, 110))
