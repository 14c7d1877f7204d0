"""The sanitizer (samepage.sanitizer): each kind of report, provoked by a deliberately
broken operation, carries the folio, the operation, the function that did it, where the
folio was freed and the steps that led there; clean runs report nothing and behave exactly
as unsanitized ones."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from samepage import Machine
from samepage.cli.main import app
from samepage.mm.folio import PG_KSM
from samepage.mm.mm import PTE_WRITE
from samepage.sanitizer import KINDS, SanitizerReport
from samepage.scenario import load_scenario
from samepage.scenario.model_runner import run_scenario_on_model

ROOT = Path(__file__).parent.parent
SCENARIOS = ROOT / "tests" / "conformance" / "scenarios"


def two_processes(n: int = 4, token: int = 7):
    """Two processes with ``n`` identical pages each, mergeable, ksmd running."""
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
    m.mem.lru_add_drain()                  # no LRU batch references: a zap frees the page
    return m, procs[0], procs[1]


def pfn_of(p, page: int = 0) -> int:
    return p.region("ram").pte[page]


def folio_of(m, p, page: int = 0):
    return m.mem.page_folio[pfn_of(p, page)]


def check_report(rep: SanitizerReport, kind: str, op: str, function: str) -> None:
    assert rep.kind == kind and kind in KINDS
    assert rep.op == op, rep.op
    assert function in rep.function, rep.function
    assert rep.steps and all(s.startswith("step ") for s in rep.steps)
    text = str(rep)
    assert kind in text and op in text and function in text
    assert len(text.splitlines()) > 4


# ------------------------------------------------------------------- folio operations


@pytest.mark.unsanitized
def test_off_by_default_and_the_plain_code_runs():
    m = Machine()
    assert m.sanitizer is None and m.mem.sanitizer is None
    for name in ("folio_put", "folio_get", "folio_trylock", "folio_unlock"):
        assert name not in vars(m.mem)
    assert "calc_checksum" not in vars(m.ksm)
    assert "folio_put" in vars(Machine(sanitize=True).mem)


def test_put_on_zero_refcount_names_where_the_folio_was_freed():
    m, a, b = two_processes(1)
    folio = m.mem.folio_alloc()
    m.mem.folio_put(folio)                 # the allocation's reference: freed here
    with pytest.raises(SanitizerReport) as e:
        m.mem.folio_put(folio)             # one put too many
    rep = e.value
    check_report(rep, "put-on-zero-refcount", "folio_put",
                 "test_put_on_zero_refcount_names_where_the_folio_was_freed")
    assert f"pfn={folio.pfn}" in rep.folio and "FREED" in rep.folio
    assert rep.freed_at and "test_put_on_zero_refcount" in rep.freed_at and "step" in rep.freed_at


def test_put_of_a_mapped_folio_below_its_mapcount():
    m, a, b = two_processes(1)
    folio = folio_of(m, a)
    assert folio.refcount == folio.mapcount == 1
    with pytest.raises(SanitizerReport) as e:
        m.mem.folio_put(folio)             # drops the mapping's reference: still mapped
    check_report(e.value, "refcount-below-mapcount", "folio_put",
                 "test_put_of_a_mapped_folio_below_its_mapcount")
    assert "mapcount 1" in e.value.detail and e.value.freed_at is None


def test_unlock_of_an_unlocked_folio():
    m, a, b = two_processes(1)
    folio = folio_of(m, a)
    assert m.mem.folio_trylock(folio)
    m.mem.folio_unlock(folio)
    with pytest.raises(SanitizerReport) as e:
        m.mem.folio_unlock(folio)
    check_report(e.value, "unlock-unlocked", "folio_unlock", "test_unlock_of_an_unlocked_folio")
    assert "folio_unlock pfn" in e.value.steps[-1]


@pytest.mark.parametrize("op", ["folio_get", "folio_lock", "folio_trylock", "folio_unlock"])
def test_folio_ops_on_a_freed_folio_are_use_after_free(op):
    m, a, b = two_processes(2)
    folio = folio_of(m, a, 1)
    a.zap("ram", [1])                      # the last reference goes: freed by the zap
    with pytest.raises(SanitizerReport) as e:
        getattr(m.mem, op)(folio)
    rep = e.value
    check_report(rep, "use-after-free", op, "test_folio_ops_on_a_freed_folio")
    assert "zap_pte_range" in rep.freed_at
    assert any("a: zap(" in s for s in rep.steps)


def test_ksm_merge_of_a_freed_page():
    """tree_page's folio is freed behind ksmd's back, then try_to_merge_one_page takes it."""
    m, a, b = two_processes(2)
    vma = a.region("ram")
    pfn = pfn_of(a, 1)
    a.zap("ram", [1])
    with pytest.raises(SanitizerReport) as e:
        m.ksm.try_to_merge_one_page(vma, pfn, None)
    rep = e.value
    check_report(rep, "use-after-free", "try_to_merge_one_page", "try_to_merge_one_page")
    assert f"pfn={pfn}" in rep.folio and "zap_pte_range" in rep.freed_at


@pytest.mark.parametrize("read", ["calc_checksum", "memcmp_pages", "pages_identical"])
def test_ksm_content_read_of_a_freed_page(read):
    m, a, b = two_processes(2)
    live, pfn = pfn_of(a, 0), pfn_of(a, 1)
    a.zap("ram", [1])
    args = (pfn,) if read == "calc_checksum" else (live, pfn)
    with pytest.raises(SanitizerReport) as e:
        getattr(m.ksm, read)(*args)
    op = "calc_checksum" if read == "calc_checksum" else "memcmp_pages"
    check_report(e.value, "use-after-free", op, "test_ksm_content_read_of_a_freed_page")
    assert "zap_pte_range" in e.value.freed_at


def test_replace_page_mapping_a_freed_ksm_page():
    m, a, b = two_processes(2)
    vma = a.region("ram")
    page, kpage = pfn_of(a, 0), pfn_of(a, 1)
    a.zap("ram", [1])
    m.ksm.mmap_read_locked = vma.mm            # ksmd holds the mmap lock there
    with pytest.raises(SanitizerReport) as e:
        m.ksm.replace_page(vma, page, kpage, vma.ptef[0])
    check_report(e.value, "use-after-free", "replace_page: map kpage", "replace_page")


# ------------------------------------------------------------------- whole-state checks


def merged(n: int = 4):
    m, a, b = two_processes(n)
    m.run_full_scans(2)
    assert m.sysfs_read("pages_shared") + m.sysfs_read("pages_sharing") == 2 * n
    return m, a, b


def test_ksm_page_mapped_writable():
    m, a, b = merged()
    vma = b.region("ram")
    assert m.mem.page_folio[vma.pte[2]].flags & PG_KSM
    vma.ptef[2] |= PTE_WRITE               # a broken fault path
    with pytest.raises(SanitizerReport) as e:
        m.run_batch()
    rep = e.value
    check_report(rep, "ksm-page-writable", "check_all", "after ksmd: batch")
    assert "b ram[2]" in rep.detail
    assert any("ksmd: batch" in s for s in rep.steps)


def test_mapcount_different_from_the_page_tables():
    m, a, b = two_processes(2)
    folio = folio_of(m, a, 1)
    folio.mapcount += 1                    # a mapping counted that no PTE holds
    folio.refcount += 1
    with pytest.raises(SanitizerReport) as e:
        a.write("ram", 0, 9)
    check_report(e.value, "mapcount-mismatch", "check_all", "after a: write(ram, 0, 9)")
    assert "mapcount 2 but 1" in e.value.detail


def test_reference_dropped_without_unmapping():
    m, a, b = two_processes(2)
    folio_of(m, a, 1).refcount -= 1        # the mapping's reference is gone, the PTE stays
    with pytest.raises(SanitizerReport) as e:
        m.sanitizer.check_all(m, "by hand")
    check_report(e.value, "refcount-below-mapcount", "check_all", "by hand")


def test_counter_inconsistent_with_the_trees():
    m, a, b = merged()
    m.ksm.ksm_pages_sharing += 1
    with pytest.raises(SanitizerReport) as e:
        b.write("ram", 0, 3)
    check_report(e.value, "counters-inconsistent", "check_all", "after b: write(ram, 0, 3)")
    assert "pages_sharing" in e.value.detail


def test_steps_are_a_bounded_ring():
    m, a, b = merged(50)
    assert len(m.sanitizer.steps) == 200
    steps = m.sanitizer.formatted_steps()
    nums = [int(s.split()[1]) for s in steps]
    assert nums == sorted(nums) and nums[-1] == m.sanitizer.step_no
    assert any(" ksmd " in s and ": folio_put pfn " in s for s in steps)


# ------------------------------------------------------------------- clean runs

CLEAN = [SCENARIOS / n for n in ("identical.toml", "fork_after_merge.toml",
                                 "kft_fork_zero_pages.toml", "kft_prctl.toml")] + \
        [ROOT / "examples" / n for n in ("two-vms.toml", "max-page-sharing.toml",
                                         "thp-identical.toml", "thp-zero.toml",
                                         "volatile.toml", "zero-pages.toml")]


@pytest.mark.parametrize("path", CLEAN, ids=lambda p: p.name)
def test_a_clean_scenario_reports_nothing_and_runs_the_same(path):
    sc = load_scenario(path)
    plain = run_scenario_on_model(sc)
    san = run_scenario_on_model(sc, sanitize=True)
    assert san.machine.sanitizer is not None and san.machine.sanitizer.step_no > 0
    assert san.records == plain.records and san.final == plain.final


@pytest.mark.parametrize("strategy", ["v6.18", "early-put", "split-retry"])
def test_same_folio_strategies_run_clean(strategy):
    sc = load_scenario(ROOT / "examples" / "thp-identical.toml")
    run_scenario_on_model(sc, same_folio=strategy, sanitize=True)


# ------------------------------------------------------------------- command line


def test_cli_sanitize_clean_run():
    r = CliRunner().invoke(app, ["run", str(ROOT / "examples" / "two-vms.toml"), "--sanitize",
                                 "-q"])
    assert r.exit_code == 0, r.stderr


def test_cli_sanitize_reports_on_stderr_with_exit_1(monkeypatch):
    from samepage.ksm.ksm import Ksm
    orig = Ksm.stable_tree_append

    def broken(self, item, node, bypass):      # a counting bug
        orig(self, item, node, bypass)
        self.ksm_pages_sharing += 1

    monkeypatch.setattr(Ksm, "stable_tree_append", broken)
    r = CliRunner().invoke(app, ["run", str(ROOT / "examples" / "two-vms.toml"), "--sanitize",
                                 "-q"])
    assert r.exit_code == 1
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    assert "sanitizer: counters-inconsistent" in r.stderr
    assert "after ksmd: batch" in r.stderr and "step " in r.stderr


# ------------------------------------------------------------------- the LKML flaw


@pytest.mark.parametrize("strategy", ["v6.18", "early-put", "split-retry"])
def test_early_put_use_after_free_when_tree_page_is_freed_during_the_merge(strategy):
    """spec §5.3: with ``early-put`` ksmd holds no reference on ``tree_page`` once step 1 has
    split the folio; another thread zapping it before step 2 makes step 2 a use-after-free.
    The other strategies hold their reference, so the zap frees nothing."""
    from samepage.ksm.structs import PAGE_MASK
    from samepage.mm.content import PAGE_SHIFT
    from samepage.mm.mm import MADV_DONTNEED

    m = Machine(sanitize=True, same_folio=strategy)
    p = m.spawn("a")
    r = p.mmap(512, name="ram", thp="huge")
    p.fill(r, [5, 5] + [1000 + i for i in range(510)])
    p.madvise(r, "mergeable")
    m.sysfs_write("pages_to_scan", 1000)
    m.sysfs_write("run", 1)
    orig = m.ksm.try_to_merge_with_ksm_page

    def racing(item, page, kpage):
        if kpage is not None:                  # step 2: the other thread zaps tree_page
            addr = item.address & PAGE_MASK
            assert p.mm.madvise(addr, 1 << PAGE_SHIFT, MADV_DONTNEED) == 0
        return orig(item, page, kpage)

    m.ksm.try_to_merge_with_ksm_page = racing
    if strategy != "early-put":
        m.run_full_scans(4)
        return
    with pytest.raises(SanitizerReport) as e:
        m.run_full_scans(4)
    check_report(e.value, "use-after-free", "try_to_merge_one_page", "try_to_merge_one_page")
    assert "zap_pte_range" in e.value.freed_at
