"""Fault injection of allocations (samepage.mm.failslab; ``explore --fail-alloc``): KSM
survives -ENOMEM from alloc_rmap_item, alloc_stable_node, alloc_stable_node_chain and the
fault paths' folio allocation as 6.18 does, under the sanitizer; the explorer makes chosen
allocations fail and finds a patch that mishandles a failure."""

from __future__ import annotations

import errno
import textwrap
from pathlib import Path

import pytest

from samepage import Machine, failinject
from samepage import explore as ex_mod
from samepage.machine import SyscallError
from samepage.mm.failslab import FailSlab, parse_sites
from samepage.patch import load_patch
from samepage.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent
RACE = ROOT / "examples" / "seed-same-folio-race.toml"


def machine(n=4, fs=None, sharing=None):
    m = Machine(sanitize=True)
    if sharing:
        m.sysfs_write("max_page_sharing", sharing)
    for name in ("a", "b", "c"):
        p = m.spawn(name)
        r = p.mmap(n, name="ram")
        p.write(r, range(n), 7)
        p.madvise(r, "mergeable")
    m.sysfs_write("pages_to_scan", 1000)
    m.sysfs_write("run", 1)
    m.set_failslab(fs)
    return m


def test_rmap_item_allocation_failure_ends_the_batch():
    fs = FailSlab(["rmap_item"], fail_nth=[("rmap_item", 5)])
    m = machine(fs=fs)
    r = m.run_batch()
    assert fs.failed == [("rmap_item", 5)] and r.pages == 5      # stopped at the failure
    m.run_full_scans(3)
    c = m.counters()
    ref = machine()
    ref.run_full_scans(3)
    assert c["pages_shared"] == ref.counters()["pages_shared"] == 1
    assert c["pages_sharing"] == ref.counters()["pages_sharing"] == 11


def test_stable_node_allocation_failure_undoes_the_pair():
    fs = FailSlab(["stable_node"], fail_nth=[("stable_node", 0)])
    m = machine(fs=fs)
    m.run_full_scans(2)
    assert fs.failed == [("stable_node", 0)]
    assert m.mem.vmstat["cow_ksm"] == 2       # break_cow of both pages of the pair
    m.run_full_scans(2)
    assert m.counters()["pages_shared"] == 1 and m.counters()["pages_sharing"] == 11


def test_stable_node_chain_allocation_failure():
    fs = FailSlab(["stable_node_chain"], fail_nth=[("stable_node_chain", 0)])
    m = machine(fs=fs, sharing=4)
    m.run_full_scans(4)
    assert fs.failed == [("stable_node_chain", 0)]
    ref = machine(sharing=4)
    ref.run_full_scans(4)
    assert fs.calls["stable_node_chain"] >= 2
    c, rc = m.counters(), ref.counters()
    assert c["pages_shared"] + c["pages_sharing"] == rc["pages_shared"] + rc["pages_sharing"]


def test_folio_allocation_failure_in_faults():
    m = machine(fs=FailSlab(["folio"], fail_nth=[("folio", 0), ("folio", 1)]))
    a = m.process("a")
    r = a.mmap(1, name="new")
    with pytest.raises(OSError) as e:
        a.write(r, 0, 3)                       # do_anonymous_page: VM_FAULT_OOM
    assert e.value.errno == errno.ENOMEM
    m.set_failslab(None)
    m.run_full_scans(3)
    m.set_failslab(FailSlab(["folio"], fail_nth=[("folio", 0)]))
    with pytest.raises(SyscallError) as e:     # break_ksm's unshare fault: -ENOMEM
        a.madvise("ram", "unmergeable")
    assert e.value.errno == errno.ENOMEM


def test_parse_sites():
    assert parse_sites("all") == ("rmap_item", "stable_node", "stable_node_chain", "folio")
    assert parse_sites("rmap_item, folio") == ("rmap_item", "folio")
    with pytest.raises(ValueError, match="unknown allocation site 'slab'"):
        parse_sites("slab")


BROKEN = """
    def stable_tree_insert_pair(ksm, kfolio, tree_item, rmap_item):
        mem = ksm.mem
        mem.folio_lock(kfolio)
        snode = ksm.stable_tree_insert(kfolio)
        ksm.stable_tree_append(tree_item, snode, False)   # no check for a failed allocation
        ksm.stable_tree_append(rmap_item, snode, False)
        mem.folio_unlock(kfolio)
"""


def fail_first(site):
    def choose(step, point, enabled, pre):
        return failinject.FAILSLAB if point == "alloc:" + site and \
            failinject.FAILSLAB in enabled else None
    return choose


def test_explorer_dimension(tmp_path, monkeypatch):
    sc = load_scenario(str(RACE))
    monkeypatch.setattr(failinject, "FAIL_ALLOC", ("stable_node",))
    base = ex_mod.execute(sc, "split-retry", lambda *a: None, record_choices=True)
    points = {p for _, p, _, _ in base.choice_points}
    assert "alloc:stable_node" in points and base.report is None
    ex = ex_mod.execute(sc, "split-retry", fail_first("stable_node"))
    assert ex.report is None and ex.decisions
    assert {d.point for d in ex.decisions} == {"alloc:stable_node"}
    p = tmp_path / "broken.py"
    p.write_text(textwrap.dedent(BROKEN))
    with load_patch(str(p)).applied():
        ex = ex_mod.execute(sc, "split-retry", fail_first("stable_node"))
        assert ex.report is not None
        assert ex.report.function.startswith("stable_tree_append")
        again = ex_mod.replay(sc, "split-retry", ex.decisions)
        assert again.report is not None and again.report.summary() == ex.report.summary()
    monkeypatch.setattr(failinject, "FAIL_ALLOC", ())
    plain = ex_mod.execute(sc, "split-retry", lambda *a: None, record_choices=True)
    assert not any(p.startswith("alloc:") for _, p, _, _ in plain.choice_points)
