"""The three ways of handling a same-folio pair (spec §4.1 D3, §4.11.3, §5;
``samepage.ksm.same_folio``):

* ``v6.18``      -- Linux 6.18: try, fail (two references on the folio), split afterwards,
                    merge a full scan later;
* ``early-put``  -- xu xin's proposal as David Hildenbrand first rewrote it: drop the tree
                    page's reference before merging; the split inside step 1 then succeeds but
                    leaves ksmd without a reference on ``tree_page``, and step 2's
                    ``write_protect_page`` fails on it (§5.3 item 3-4);
* ``split-retry``-- David's version: split first, search the unstable tree again, merge in the
                    same scan (§5.3 item 5).

Also: every strategy against the recorded Linux 6.18 THP fixtures -- ``v6.18`` must reproduce
them exactly, the others must differ exactly where the theory says.
"""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from invariants import check_invariants
from samepage import Machine
from samepage.ksm.same_folio import STRATEGIES
from samepage.ksm.structs import PAGE_MASK, UNSTABLE_FLAG
from samepage.mm.content import PAGE_SHIFT
from samepage.mm.folio import PG_FREED, PG_KSM
from samepage.mm.huge import HPAGE_PMD_ORDER
from samepage.mm.mm import PTE_DIRTY, PTE_SPECIAL, PTE_WRITE
from samepage.scenario import COUNTER_NAMES, load_scenario, read_trace
from samepage.scenario.model_runner import run_scenario_on_model

ALL = ("v6.18", "early-put", "split-retry")
TESTS = Path(__file__).parent
A, B = 11, 12                   # the two contents of the "distinct = 2" pattern


def test_the_three_strategies_are_the_ones_tested():
    assert set(STRATEGIES) == set(ALL)


# --------------------------------------------------------------------------- helpers
def machine(strategy: str, pages_to_scan: int = 100_000, **kw) -> Machine:
    m = Machine(thp="madvise", same_folio=strategy, **kw)
    m.sysfs_write("pages_to_scan", pages_to_scan)
    return m


def distinct2(m: Machine, thp: str = "huge"):
    """One 512-page region, pattern distinct = 2: A B A B ...; the first same-folio pair
    met by the scan is (0, 2): page 2 finds page 0 in the unstable tree."""
    p = m.spawn("p")
    vma = p.mmap(512, name="ram", thp=thp)
    p.fill(vma, [A if i % 2 == 0 else B for i in range(512)])
    p.madvise(vma, "mergeable")
    return p, vma


def is_ksm_at(m: Machine, vma, i: int) -> bool:
    pfn = vma.pte[i]
    return pfn >= 0 and not vma.ptef[i] & PTE_SPECIAL and bool(
        m.mem.page_folio[pfn].flags & PG_KSM)


def scan(m: Machine, n: int = 1) -> None:
    target = m.sysfs_read("full_scans") + n
    while m.sysfs_read("full_scans") < target:
        assert m.run_batch() is not None
        check_invariants(m)


def merged_at(m: Machine, vma, page: int, limit: int = 6) -> int | None:
    """full_scans when ``page`` first maps a KSM page."""
    for _ in range(limit):
        if is_ksm_at(m, vma, page):
            return m.sysfs_read("full_scans")
        scan(m)
    return m.sysfs_read("full_scans") if is_ksm_at(m, vma, page) else None


def small_pages_merge_at() -> int:
    m = machine("v6.18")
    p, vma = distinct2(m, thp="nohuge")
    assert m.mem.page_folio[vma.pte[0]].order == 0
    m.sysfs_write("run", 1)
    return merged_at(m, vma, 2)


# --------------------------------------------------------------------------- v6.18
def test_v618_same_folio_pair_merges_one_full_scan_after_two_small_pages():
    small = small_pages_merge_at()
    assert small == 2
    m = machine("v6.18")
    p, vma = distinct2(m)
    assert m.mem.page_folio[vma.pte[0]].order == HPAGE_PMD_ORDER
    m.sysfs_write("run", 1)
    scan(m, 2)
    # scan 2: page 2 failed (two references on one folio), then D3 split the folio; every
    # later pair was already two independent pages and merged in this scan
    assert not is_ksm_at(m, vma, 2)
    assert is_ksm_at(m, vma, 0) and vma.pte[4] == vma.pte[0]  # page 4 met page 0, split
    assert m.ksm.merge_failures == {"try_to_merge_one_page: split_huge_page failed": 1}
    assert (m.vmstat["thp_split_page"], m.vmstat["thp_split_page_failed"]) == (1, 1)
    assert (m.sysfs_read("pages_shared"), m.sysfs_read("pages_sharing")) == (2, 509)
    assert merged_at(m, vma, 2) == small + 1
    assert vma.pte[0] == vma.pte[2]


# --------------------------------------------------------------------------- split-retry
def test_split_retry_merges_the_same_folio_pair_one_full_scan_earlier_than_v618():
    at = {}
    for strategy in ("v6.18", "split-retry"):
        m = machine(strategy)
        p, vma = distinct2(m)
        m.sysfs_write("run", 1)
        at[strategy] = merged_at(m, vma, 2)
        if strategy == "split-retry":
            assert m.ksm.merge_failures == {}
            # the split happened before any merge attempt, with one reference
            assert (m.vmstat["thp_split_page"], m.vmstat["thp_split_page_failed"]) == (1, 0)
            assert (m.sysfs_read("pages_shared"), m.sysfs_read("pages_sharing")) == (2, 510)
            assert vma.pte[0] == vma.pte[2]
    assert at["split-retry"] == at["v6.18"] - 1 == small_pages_merge_at()


def test_split_retry_gives_up_when_the_split_fails():
    """§5.3 item 5 (inference): as posted, a failing split would loop; the model returns."""
    m = machine("split-retry")
    p, vma = distinct2(m)
    thp = m.mem.page_folio[vma.pte[0]]
    m.mem.folio_get(thp)
    thp.pincount += 1
    m.sysfs_write("run", 1)
    scan(m, 3)
    assert m.sysfs_read("pages_shared") == 0
    assert m.ksm.merge_failures["cmp_and_merge_page: same-folio split_huge_page failed"] > 0
    assert m.mem.page_folio[vma.pte[0]] == thp
    thp.pincount -= 1
    m.mem.folio_put(thp)
    check_invariants(m)
    scan(m)
    assert (m.sysfs_read("pages_shared"), m.sysfs_read("pages_sharing")) == (2, 510)


# --------------------------------------------------------------------------- early-put
def test_early_put_first_merge_fails_in_write_protect_page_without_a_tree_page_reference():
    m = machine("early-put", pages_to_scan=3)
    m.ksm.failure_log = collections.deque()
    p, vma = distinct2(m)
    thp = m.mem.page_folio[vma.pte[0]]
    m.sysfs_write("run", 1)
    scan(m)
    scanned_pfn = vma.pte[2]
    assert m.mem.page_folio[scanned_pfn] == thp
    assert m.run_batch().pages == 3                  # scan 2, pages 0, 1 and 2
    check_invariants(m)
    # step 1 split the folio with ksmd's one remaining reference (which moved to page 2)
    # and made page 2 a KSM page; step 2 then met tree_page with refcount == mapcount
    assert thp.flags & PG_FREED
    assert (m.vmstat["thp_split_page"], m.vmstat["thp_split_page_failed"]) == (1, 0)
    assert list(m.ksm.merge_failures.values()) == [1]
    (reason,) = m.ksm.merge_failures
    assert "write_protect_page" in reason
    assert reason == "write_protect_page: refcount != mapcount + 1"
    assert [e[3] for e in m.ksm.failure_log] == [reason]
    # the tree page was never write-protected; break_cow undid step 1 on page 2
    assert vma.ptef[0] & PTE_WRITE and vma.ptef[0] & PTE_DIRTY
    assert m.vmstat["cow_ksm"] == 1
    assert vma.pte[2] != scanned_pfn and not is_ksm_at(m, vma, 2)
    assert not vma.ptef[2] & PTE_WRITE
    it = next(i for i in m.ksm.mm_slots_hash[id(p.mm)].rmap_list
              if i.address & PAGE_MASK == vma.start)
    assert it.address & UNSTABLE_FLAG                # D4: the tree item stays
    assert m.sysfs_read("pages_shared") == 0
    m.sysfs_write("pages_to_scan", 100_000)
    assert merged_at(m, vma, 2) == 3                 # no earlier than v6.18
    assert vma.pte[0] == vma.pte[2]


def test_early_put_write_protect_failure_is_logged_at_the_tree_pages_address():
    """The failure_log must say which page could not be write-protected: the tree page
    (page 0), not the page being scanned (page 2)."""
    m = machine("early-put")
    m.ksm.failure_log = collections.deque()
    p, vma = distinct2(m)
    m.sysfs_write("run", 1)
    scan(m, 2)
    assert [(e[1], e[2], e[3]) for e in m.ksm.failure_log] == [
        ("p", vma.start, "write_protect_page: refcount != mapcount + 1")]


# --------------------------------------------------------------------------- all three
LAYOUTS = {
    "distinct2": lambda: [[A if i % 2 == 0 else B for i in range(512)]],
    "all_zero": lambda: [[0] * 512],
    "mixed_with_zeros": lambda: [[(i % 3) * (i % 5) for i in range(512)]],
    "two_thps": lambda: [[20 + i % 4 for i in range(512)], [20 + i % 4 for i in range(512)]],
    "pair_and_uniques": lambda: [[A if i in (3, 400) else 1000 + i for i in range(512)]],
}


@pytest.mark.parametrize("split_zero_remap", [True, False])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_all_three_strategies_end_with_the_same_counters(layout, split_zero_remap):
    final = {}
    for strategy in ALL:
        m = machine(strategy, pages_to_scan=100, split_zero_remap=split_zero_remap)
        p = m.spawn("p")
        for j, tokens in enumerate(LAYOUTS[layout]()):
            vma = p.mmap(len(tokens), name=f"r{j}", thp="huge")
            p.fill(vma, tokens)
            p.madvise(vma, "mergeable")
        m.sysfs_write("run", 1)
        scan(m, 5)
        c = m.counters()
        del c["pages_scanned"], c["pages_skipped"]
        final[strategy] = (c, m.ksm_stats(), m.vmstat["thp_split_page"])
    assert final["early-put"] == final["v6.18"]
    assert final["split-retry"] == final["v6.18"]


# --------------------------------------------------------------------------- fixtures
def _thp_fixtures() -> list[Path]:
    """The recorded Linux 6.18 THP traces (``thp_*.toml`` with a ``.jsonl``) in
    tests/fixtures/kernel/ or wherever the conformance suite keeps them."""
    found: dict[str, Path] = {}
    for pattern in ("fixtures/kernel/thp_*.toml", "conformance/**/thp_*.toml"):
        for toml in sorted(TESTS.glob(pattern)):
            if toml.with_suffix(".jsonl").exists():
                found.setdefault(toml.stem, toml)
    return [found[k] for k in sorted(found)]


THP_FIXTURES = _thp_fixtures()
SPLIT_FAILED = "try_to_merge_one_page: split_huge_page failed"
WP_REFCOUNT = "write_protect_page: refcount != mapcount + 1"
WP_UNMAPPED = "write_protect_page: page not mapped at its address"

# early-put on a THP that is COW-shared with a child (fork before KSM split it): step 1 makes
# the shared frame a KSM page with no stable node, break_cow unshares only the parent's
# mapping, and the child keeps a node-less KSM page that write_protect_page can never accept
# (folio_anon_vma() is NULL): it never merges and spoils every merge that meets it.
EARLY_PUT_DEGRADES = {"thp_fork_unsplit"}


def test_the_thp_fixtures_are_there():
    assert {t.stem for t in THP_FIXTURES} >= {"thp_same_folio", "thp_zero_split"}


_cache: dict = {}


def _run(toml: Path, strategy: str):
    """(run, kernel records, kernel final) with a failure log; cached per session."""
    key = (toml, strategy)
    if key not in _cache:
        scenario = load_scenario(toml)
        kernel, kernel_final = read_trace(toml.with_suffix(".jsonl"))
        run = run_scenario_on_model(scenario, batches=len(kernel), same_folio=strategy)
        _cache[key] = (run, kernel, kernel_final)
    return _cache[key]


def _logged_run(toml: Path, strategy: str):
    """The model run again, with ``failure_log`` on from the start."""
    from samepage.scenario.model_runner import iter_model_trace
    scenario = load_scenario(toml)
    kernel, _ = read_trace(toml.with_suffix(".jsonl"))
    holder: list = []
    it = iter_model_trace(scenario, len(kernel), holder, same_folio=strategy)
    first = next(it)
    m = holder[0]
    # the first batch ran before the log could be set: it only records checksums in every
    # fixture (asserted here), so no failure can have been missed
    assert m.ksm.merge_failures == {} and first["pages_shared"] == 0
    m.ksm.failure_log = collections.deque()
    for _ in it:
        pass
    return m


def _diffs(model, kernel):
    return [(k["batch"], c, m[c], k[c]) for m, k in zip(model, kernel)
            for c in COUNTER_NAMES if m[c] != k[c]]


def _merged(rec) -> int:
    return rec["pages_shared"] + rec["pages_sharing"]


def _splits(m: Machine) -> tuple[int, int]:
    """(successful, failed) splits of every folio size."""
    v = m.vmstat
    ok = sum(n for k, n in v.items() if k.startswith("mthp_") and k.endswith("_split"))
    bad = sum(n for k, n in v.items() if k.startswith("mthp_") and k.endswith("_split_failed"))
    return ok, bad


def _same_folio_failures(m: Machine) -> list[tuple[str, int]]:
    """(mm, address) of every same-folio D3 failure of a v6.18 run whose page still holds
    its data at the end (not remapped to the zero page by the split): the pairs that
    split-retry merges a full scan earlier."""
    out = []
    for _, mm, address, why in m.ksm.failure_log:
        if why != SPLIT_FAILED:
            continue
        proc = m.processes[mm].mm
        vma = proc.find_vma(address)
        if vma is None:
            continue
        i = (address - vma.start) >> PAGE_SHIFT
        if not vma.ptef[i] & PTE_SPECIAL:
            out.append((mm, address))
    return out


@pytest.mark.parametrize("toml", THP_FIXTURES, ids=lambda t: t.stem)
def test_fixture_v618_matches_the_recorded_kernel_trace_exactly(toml):
    run, kernel, kernel_final = _run(toml, "v6.18")
    assert len(run.records) == len(kernel)
    assert _diffs(run.records, kernel) == []
    assert run.final["processes"] == kernel_final["processes"]


@pytest.mark.parametrize("toml", THP_FIXTURES, ids=lambda t: t.stem)
def test_fixture_split_retry_is_ahead_exactly_by_the_same_folio_pairs(toml):
    """split-retry never fails a split, splits the same folios as v6.18, is never behind
    the kernel, is ahead at some batch iff v6.18 merged a same-folio pair a scan late (a
    pair not remapped to the zero page by the split), and ends identical."""
    run, kernel, kernel_final = _run(toml, "split-retry")
    ref, _, _ = _run(toml, "v6.18")
    m = run.machine
    assert SPLIT_FAILED not in m.ksm.merge_failures
    assert _splits(m) == (_splits(ref.machine)[0], 0)
    late = _same_folio_failures(_logged_run(toml, "v6.18"))
    ahead = [_merged(r) - _merged(k) for r, k in zip(run.records, kernel)]
    assert min(ahead) >= 0, "split-retry fell behind the kernel"
    # one page per late pair -- and per process a fork copied its early merged mapping to
    # (thp_fork: p2 is a KSM page before the fork, so c2 joins it at once too)
    assert max(ahead) <= len(late) * len(m.processes)
    assert (max(ahead) > 0) == bool(late), (ahead, late)
    if late:
        # ahead from the batch of the first same-folio attempt, in the second full scan
        first = next(i for i, d in enumerate(ahead) if d)
        assert kernel[first]["full_scans"] >= 1
        assert {c for (_, c, _, _) in _diffs(run.records, kernel)} >= {"pages_sharing"}
    last = {c: run.records[-1][c] for c in COUNTER_NAMES}
    assert last == {c: kernel[-1][c] for c in COUNTER_NAMES}
    assert run.final["processes"] == kernel_final["processes"]


@pytest.mark.parametrize("toml", THP_FIXTURES, ids=lambda t: t.stem)
def test_fixture_early_put_fails_the_first_attempt_elsewhere(toml):
    """early-put gains nothing: every same-folio pair's first attempt still fails, no
    longer on the split (which now succeeds) but in write_protect_page -- on the tree page,
    which ksmd holds no reference on (refcount == mapcount), or on the scanned page when the
    split remapped it to the zero page.  The counters equal the kernel's, except where a
    forked child keeps a node-less KSM page (EARLY_PUT_DEGRADES)."""
    run, kernel, kernel_final = _run(toml, "early-put")
    ref, _, _ = _run(toml, "v6.18")
    m = run.machine
    assert SPLIT_FAILED not in m.ksm.merge_failures
    assert _splits(m) == (_splits(ref.machine)[0], 0)
    n_same_folio = ref.machine.ksm.merge_failures.get(SPLIT_FAILED, 0)
    assert m.ksm.merge_failures.get(WP_REFCOUNT, 0) + m.ksm.merge_failures.get(
        WP_UNMAPPED, 0) >= n_same_folio
    if toml.stem in EARLY_PUT_DEGRADES:
        assert m.ksm.merge_failures.get("write_protect_page: page not in this vma", 0) > 0
        assert _merged(run.records[-1]) < _merged(kernel[-1])
        assert all(_merged(r) <= _merged(k) for r, k in zip(run.records, kernel))
        assert run.final["processes"] != kernel_final["processes"]
    else:
        assert _diffs(run.records, kernel) == []
        assert run.final["processes"] == kernel_final["processes"]


@pytest.mark.parametrize("toml", THP_FIXTURES, ids=lambda t: t.stem)
def test_fixture_early_put_write_protect_failures_are_on_the_tree_page(toml):
    """One write_protect_page refcount failure per same-folio pair that v6.18 merged a scan
    late, each attributed to the pair's tree page: another address than the scanned page
    v6.18 records its split failure at, with the same content."""
    ep = _logged_run(toml, "early-put")
    v618 = _logged_run(toml, "v6.18")
    late = _same_folio_failures(v618)
    wp = [(mm, a) for _, mm, a, why in ep.ksm.failure_log if why == WP_REFCOUNT]
    assert len(wp) == len(late)

    def content(m, mm, a):
        return m.processes[mm].mm.read_page(a)
    for mm, a in wp:
        assert any((mm, a) != (mm2, s) and content(ep, mm, a) == content(v618, mm2, s)
                   for mm2, s in late), (mm, a, late)
