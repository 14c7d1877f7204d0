"""Folio state as per-pfn arrays (issue 10): a ``Folio`` is a handle (memory, head pfn,
generation) made on access; no Python object lives per page.

(a) memory: faulting 50,000 order-0 pages allocates less than 60 bytes a page of Python
memory and leaves no Folio object alive; (b) handle semantics: equal handles for one live
folio, unequal after a free and a reallocation of the same pfn, a stale handle reads as the
freed folio (PG_FREED, refcount 0), folio_get on it raises and the sanitizer reports a
use-after-free; (c) random fault / write (COW) / fork / zap / munmap sequences keep the
whole-state invariants (mapcount and refcount against the page tables)."""

from __future__ import annotations

import gc
import platform
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from invariants import check_invariants
from samepage import Machine
from samepage.mm.folio import FOLIO_NONE, PG_FREED, Folio, LargeFolio, Memory, MemoryError_
from samepage.sanitizer import SanitizerReport

PAGES = 50_000


# ------------------------------------------------------------------------------ (a) memory
@pytest.mark.skipif(platform.python_implementation() != "CPython",
                    reason="tracemalloc and object counts are CPython's")
def test_order0_faults_cost_no_object_per_page():
    m = Machine()
    p = m.spawn("a")
    r = p.mmap(PAGES, name="ram")
    p.write(r, 0, 1)                       # the first section and the allocator are set up
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        p.fill(r, range(1, PAGES + 1))     # PAGES write faults, one order-0 folio each
        m.mem.lru_add_drain()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    per_page = (after - before) / PAGES
    assert per_page < 60, f"{per_page:.1f} bytes of Python memory per faulted page"
    # the state is in the arrays, not in objects: no folio handle survives the fill
    live = sum(1 for o in gc.get_objects() if isinstance(o, Folio))
    assert live < 100, f"{live} Folio objects alive after faulting {PAGES} pages"
    f = m.mem.page_folio[r.pte[PAGES - 1]]
    assert f.refcount == f.mapcount == 1 and m.mem.page_content[f.pfn] == PAGES


# -------------------------------------------------------------------- (b) handle semantics
def test_handles_of_one_folio_are_equal_and_share_its_state():
    m = Machine()
    p = m.spawn("a")
    r = p.mmap(2, name="ram")
    p.write(r, [0, 1], 5)
    m.mem.lru_add_drain()                  # no LRU batch references
    pf = m.mem.page_folio
    a, b = pf[r.pte[0]], pf[r.pte[0]]
    assert a is not b and a == b and hash(a) == hash(b) and not a != b
    assert a != pf[r.pte[1]] and a != r.pte[0] and a != None  # noqa: E711
    a.refcount += 1                        # written through one handle, read through another
    assert b.refcount == 2
    a.refcount -= 1
    assert len({a, b, pf[r.pte[1]]}) == 2


def test_a_freed_and_reallocated_pfn_gets_a_new_folio():
    mem = Memory()
    old = mem.folio_alloc()
    pfn = old.pfn
    mem.folio_put(old)                      # freed: the frame goes back (LIFO)
    assert mem.page_folio[pfn] is None and mem.folio_order[pfn] == FOLIO_NONE
    assert old.flags & PG_FREED and old.refcount == 0 and old.mapcount == 0
    assert old.mapping is None and not old.live
    new = mem.folio_alloc()
    assert new.pfn == pfn and new != old and mem.page_folio[pfn] == new
    # the stale handle still reads the freed folio; the new one is untouched by it
    assert old.flags & PG_FREED and old.refcount == 0
    assert new.refcount == 1 and not new.flags & PG_FREED
    with pytest.raises(MemoryError_):
        mem.folio_get(old)
    with pytest.raises(MemoryError_):
        mem.folio_put(old)
    assert not mem.folio_try_get(old)
    old.refcount = 7                        # a write through a stale handle: kept aside
    assert old.refcount == 7 and new.refcount == 1
    assert mem.dead_folios[(pfn, old.gen)][0] == 7


def test_large_folio_handles_and_tails():
    m = Machine()
    m.mem.thp.enable_mthp_kb([64])
    m.mem.thp.enabled = "always"
    p = m.spawn("a")
    r = p.mmap(32, name="ram")
    p.write(r, range(16), 3)
    pf = m.mem.page_folio
    heads = {pf[r.pte[i]] for i in range(16)}
    assert len(heads) == 1
    folio = heads.pop()
    assert isinstance(folio, LargeFolio) and folio.order == 4 and folio.nr_pages == 16
    assert folio.pfn & 15 == 0 and folio.page_mapcount == [1] * 16
    assert folio.refcount == folio.mapcount == 16


def test_sanitizer_reports_a_stale_handle_as_use_after_free():
    m = Machine(sanitize=True)
    p = m.spawn("a")
    r = p.mmap(2, name="ram")
    p.write(r, [0, 1], 9)
    m.mem.lru_add_drain()
    folio = m.mem.page_folio[r.pte[1]]
    p.zap("ram", [1])                       # the last reference: freed by the zap
    assert folio.flags & PG_FREED
    with pytest.raises(SanitizerReport) as e:
        m.mem.folio_get(folio)
    rep = e.value
    assert rep.kind == "use-after-free" and rep.op == "folio_get"
    assert "FREED" in rep.folio and rep.freed_at and "zap_pte_range" in rep.freed_at


# ----------------------------------------------------------------------- (c) random sequences
OPS = st.lists(st.tuples(st.sampled_from(["write", "fork", "zap", "munmap", "exit", "scan"]),
                         st.integers(0, 7), st.integers(0, 3)), min_size=1, max_size=30)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, thp=st.booleans())
def test_random_fault_cow_fork_zap_sequences_keep_the_invariants(ops, thp):
    m = Machine()
    if thp:
        m.mem.thp.enable_mthp_kb([16])
        m.mem.thp.enabled = "always"
    procs = [m.spawn("p0")]
    procs[0].mmap(8, name="ram")
    procs[0].madvise("ram", "mergeable")
    m.sysfs_write("pages_to_scan", 5)
    m.sysfs_write("run", 1)
    for n, (op, page, tok) in enumerate(ops):
        live = [q for q in procs if q.alive and "ram" in q.mm.vma_names]
        if not live:
            break
        q = live[(page + tok) % len(live)]
        if op == "write":
            q.write("ram", [page], tok)     # a fault, or a COW of a shared or KSM page
        elif op == "fork" and len(procs) < 4:
            procs.append(q.fork(f"c{n}"))
        elif op == "zap":
            q.zap("ram", [page])
        elif op == "munmap" and len(live) > 1:
            q.munmap("ram")
        elif op == "exit" and len(live) > 1:
            q.exit()
        elif op == "scan":
            m.run_batch()
        check_invariants(m)
