"""The per-mm one-entry VMA cache of ``MM.find_vma`` (the kernel's ``vmacache`` until 6.1):
a hit skips the index walk, every change of the VMA list or of a VMA's bounds (mmap, split,
munmap, exit) forgets it, a forked child starts without one, flag changes need no
invalidation (callers read the flags of the VMA returned), and KSM gives the same counters
and operation counts with it as without it.  The unstable-tree walk still calls the
replaceable ``get_mergeable_page`` and ``find_mergeable_vma`` at every level."""

from __future__ import annotations

from bisect import bisect_right

from hypothesis import given, settings
from hypothesis import strategies as st

import samepage.mm.mm as mmmod
from samepage import Machine
from samepage.ksm.ksm import Ksm
from samepage.ksm.opcounts import OP_MEMCMP_UNSTABLE
from samepage.mm.content import PAGE_SHIFT, PAGE_SIZE
from samepage.mm.mm import MM


def _linear_find(mm, addr):
    for v in mm.vmas:
        if v.start <= addr < v.end:
            return v
    return None


def _probes(vmas):
    out = set()
    for v in vmas:
        out.update((v.start - 1, v.start, v.start + 5, v.end - 1, v.end,
                    (v.start + v.end) // 2 & ~(PAGE_SIZE - 1)))
    return out


def test_a_hit_skips_the_index_walk(monkeypatch):
    m = Machine()
    p = m.spawn("p")
    a = p.mmap(8, name="a")
    b = p.mmap(8, name="b")
    mm = p.mm
    calls = []

    def counting(*args, **kw):
        calls.append(args[1])
        return bisect_right(*args, **kw)

    monkeypatch.setattr(mmmod, "bisect_right", counting)
    assert mm.find_vma(a.start + 3 * PAGE_SIZE) is a
    assert len(calls) == 1 and mm.vmacache is a
    for i in range(8):
        assert mm.find_vma(a.start + (i << PAGE_SHIFT) + 7) is a
    assert len(calls) == 1                       # all hits
    assert mm.find_vma(b.start) is b             # a miss walks the index and caches b
    assert len(calls) == 2 and mm.vmacache is b
    assert mm.find_vma(a.end) is None            # the guard gap: a miss, nothing cached
    assert mm.vmacache is b


def test_munmap_forgets_the_cached_vma():
    m = Machine()
    p = m.spawn("p")
    a = p.mmap(4, name="a")
    p.write(a, range(4), 7)
    mm = p.mm
    addr = a.start + PAGE_SIZE
    assert mm.find_vma(addr) is a
    p.munmap(a)
    assert mm.vmacache is None
    assert a.dead == "munmap"
    assert mm.find_vma(addr) is None             # not the freed VMA


def test_munmap_of_a_middle_page_splits_and_forgets():
    m = Machine()
    p = m.spawn("p")
    a = p.mmap(6, name="a")
    mm = p.mm
    hole = a.start + 2 * PAGE_SIZE
    assert mm.find_vma(hole) is a
    mm.munmap(hole, PAGE_SIZE)
    assert mm.vmacache is None
    assert mm.find_vma(hole) is None
    for addr in _probes(mm.vmas) | {hole, hole + PAGE_SIZE - 1}:
        v = mm.find_vma(addr)
        assert v is _linear_find(mm, addr), hex(addr)
        assert v is None or v.dead is None


def test_split_and_mmap_forget_the_cached_vma():
    m = Machine()
    p = m.spawn("p")
    a = p.mmap(8, name="a")
    mm = p.mm
    upper = a.start + 6 * PAGE_SIZE
    assert mm.find_vma(upper) is a
    p.madvise(a, "mergeable", pages=range(2, 4))  # two splits: [0,2) [2,4) [4,8)
    assert mm.vmacache is None
    assert len(mm.vmas) == 3
    for addr in _probes(mm.vmas):
        assert mm.find_vma(addr) is _linear_find(mm, addr), hex(addr)
    assert mm.find_vma(upper).start == a.start + 4 * PAGE_SIZE
    assert mm.vmacache is not None
    p.mmap(2, name="b")
    assert mm.vmacache is None


def test_exit_forgets_the_cached_vma():
    m = Machine()
    p = m.spawn("p")
    a = p.mmap(4, name="a")
    mm = p.mm
    assert mm.find_vma(a.start) is a
    p.exit()
    assert mm.vmacache is None
    assert mm.find_vma(a.start) is None


def test_a_forked_child_has_its_own_cache():
    m = Machine()
    p = m.spawn("p")
    a = p.mmap(4, name="a")
    p.write(a, range(4), 3)
    mm = p.mm
    assert mm.find_vma(a.start) is a
    c = p.fork("c")
    cmm = c.mm
    assert cmm.vmacache is None
    v = cmm.find_vma(a.start)
    assert v is not a and v.mm is cmm and v.start == a.start
    assert cmm.vmacache is v
    assert mm.vmacache is a and mm.find_vma(a.start) is a


def test_flag_changes_are_read_through_the_cache():
    """madvise over a whole VMA changes its flags but not its bounds: the cache stays, and
    find_mergeable_vma sees the new flags."""
    m = Machine()
    p = m.spawn("p")
    a = p.mmap(4, name="a")
    p.write(a, range(4), 3)
    mm = p.mm
    ksm = m.ksm
    p.madvise(a, "mergeable")
    assert ksm.find_mergeable_vma(mm, a.start) is a
    assert mm.vmacache is a
    p.madvise(a, "unmergeable")
    assert mm.vmacache is a
    assert ksm.find_mergeable_vma(mm, a.start) is None


ops = st.lists(st.tuples(st.sampled_from(["mmap", "split", "munmap", "fork", "exit",
                                          "lookup", "lookup"]),
                         st.integers(0, 30), st.integers(0, 7)), min_size=1, max_size=50)


@settings(max_examples=80, deadline=None)
@given(ops)
def test_cached_lookups_match_a_linear_scan(ops):
    """Random VMA changes with lookups between them (so that the cache holds any VMA when
    the next change comes): every lookup, at the addresses of every VMA there ever was,
    agrees with a linear scan, and the cache only ever holds a live VMA of its mm."""
    m = Machine()
    procs = [m.spawn("p0")]
    mms = [procs[0].mm]
    seen = []
    for op, x, y in ops:
        p = procs[x % len(procs)]
        if not p.alive:
            continue
        mm = p.mm
        if op == "mmap":
            seen.append(p.mmap(1 + y, name=f"r{x % 3}"))
        elif op == "split" and mm.vmas:
            v = mm.vmas[x % len(mm.vmas)]
            if v.nr_pages > 1:
                mm.madvise(v.start + ((y % v.nr_pages) << PAGE_SHIFT), PAGE_SIZE, 12)
        elif op == "munmap" and mm.vmas:
            v = mm.vmas[x % len(mm.vmas)]
            mm.munmap(v.start + ((y % v.nr_pages) << PAGE_SHIFT), PAGE_SIZE)
        elif op == "fork":
            procs.append(p.fork(f"p{len(procs)}"))
            mms.append(procs[-1].mm)
        elif op == "exit" and len(procs) > 1:
            p.exit()
        elif op == "lookup" and (mm.vmas or seen):
            pool = mm.vmas or seen
            v = pool[x % len(pool)]
            mm.find_vma(v.start + ((y % max(1, v.nr_pages)) << PAGE_SHIFT))
        seen.extend(v for v in mm.vmas if v not in seen)
        for mmx in mms:
            c = mmx.vmacache
            assert c is None or (c.mm is mmx and c.dead is None and c in mmx.vmas)
            for addr in sorted(_probes(seen + mmx.vmas)):
                assert mmx.find_vma(addr) is _linear_find(mmx, addr), hex(addr)


def _uncached_find_vma(self, addr):
    vmas = self.vmas
    i = bisect_right(vmas, addr, key=mmmod._vma_start) - 1
    if i >= 0 and addr < vmas[i].end:
        return vmas[i]
    return None


def _workload():
    """Several processes and regions, repeating and unique contents, munmap, split and fork
    between scans: the unstable-tree walk crosses VMAs and mms."""
    m = Machine(fast_forward=False)
    m.sysfs_write("pages_to_scan", 50)
    m.sysfs_write("sleep_millisecs", 0)
    a = m.spawn("a")
    b = m.spawn("b")
    for k, p in enumerate((a, b)):
        for r in range(3):
            v = p.mmap(40, name=f"r{r}")
            p.fill(v, ((i * 7 + r + k) % 23 + 1 if i % 3 else 1000 + 97 * i + r + 40 * k
                       for i in range(40)))
            p.madvise(v, "mergeable")
    m.sysfs_write("run", 1)
    m.run_full_scans(2)
    a.munmap("r1")
    b.madvise("r0", "unmergeable", pages=range(10, 20))
    c = a.fork("c")
    c.write("r2", range(0, 40, 5), 4242)
    m.run_full_scans(3)
    return m.counters(), tuple(m.ksm.ops)


def test_ksm_counts_the_same_without_the_cache(monkeypatch):
    cached = _workload()
    monkeypatch.setattr(MM, "find_vma", _uncached_find_vma)
    assert _workload() == cached
    assert cached[1][OP_MEMCMP_UNSTABLE] > 0


def test_the_tree_walk_calls_the_replaceable_functions(monkeypatch):
    """Each level of the unstable-tree walk goes through get_mergeable_page and
    find_mergeable_vma as looked up on the class at the search's start: a replacement
    takes effect (not inlined into the walk)."""
    def run(n=64):
        m = Machine(fast_forward=False)
        p = m.spawn("p")
        r = p.mmap(n, name="r")
        p.fill(r, (10_000 + i for i in range(n)))
        p.madvise(r, "mergeable")
        m.sysfs_write("pages_to_scan", n)
        m.sysfs_write("sleep_millisecs", 0)
        m.sysfs_write("run", 1)
        m.run_full_scans(2)
        return m

    calls = {"gmp": 0, "fmv": 0}
    orig_gmp = Ksm.get_mergeable_page
    orig_fmv = Ksm.find_mergeable_vma

    def gmp(self, item):
        calls["gmp"] += 1
        return orig_gmp(self, item)

    def fmv(self, mm, addr):
        calls["fmv"] += 1
        return orig_fmv(self, mm, addr)

    monkeypatch.setattr(Ksm, "get_mergeable_page", gmp)
    monkeypatch.setattr(Ksm, "find_mergeable_vma", fmv)
    m = run()
    walked = m.ksm.ops[OP_MEMCMP_UNSTABLE]
    assert walked > 64 and m.ksm.ksm_pages_unshared == 64
    assert calls["gmp"] == walked                # one per level, none stale
    assert calls["fmv"] >= walked

    # a find_mergeable_vma that finds nothing: every walk stops at the root
    monkeypatch.setattr(Ksm, "find_mergeable_vma", lambda self, mm, addr: None)
    m = run()
    assert m.ksm.ops[OP_MEMCMP_UNSTABLE] == 0
    assert m.ksm.ksm_pages_unshared == 1
