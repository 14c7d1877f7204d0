"""The VMA index of an mm (sorted list + bisect, as the maple tree gives O(log N) lookups):
after any sequence of mmap, madvise splits, munmap, fork and exit, every lookup agrees with a
linear scan, and the VMAs stay sorted and disjoint."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from samepage import Machine
from samepage.mm.content import PAGE_SHIFT


def _linear_find(mm, addr):
    for v in mm.vmas:
        if v.start <= addr < v.end:
            return v
    return None


def _check_index(mm) -> None:
    vmas = mm.vmas
    for a, b in zip(vmas, vmas[1:]):
        assert a.end <= b.start, (a, b)
    names = {}
    for v in vmas:
        if v.name is not None:
            names.setdefault(v.name, v)
    assert mm.vma_names == names
    probes = set()
    for v in vmas:
        probes.update((v.start - 1, v.start, v.end - 1, v.end, (v.start + v.end) // 2))
    for addr in probes:
        assert mm.find_vma(addr) is _linear_find(mm, addr), hex(addr)
        first_after = next((i for i, v in enumerate(vmas) if v.end > addr), len(vmas))
        assert mm.vma_index(addr) == first_after


ops = st.lists(st.tuples(st.sampled_from(["mmap", "split", "munmap", "fork", "exit"]),
                         st.integers(0, 30), st.integers(0, 7)), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_vma_index_matches_linear_scan(ops):
    m = Machine()
    procs = [m.spawn("p0")]
    n = 0
    for op, x, y in ops:
        p = procs[x % len(procs)]
        if not p.alive:
            continue
        mm = p.mm
        if op == "mmap":
            p.mmap(1 + y, name=f"r{n % 5}")     # names repeat on purpose
            n += 1
        elif op == "split" and mm.vmas:
            v = mm.vmas[x % len(mm.vmas)]
            if v.nr_pages > 1:
                lo = y % v.nr_pages
                mm.madvise(v.start + (lo << PAGE_SHIFT), 1 << PAGE_SHIFT, 12)  # MADV_MERGEABLE
        elif op == "munmap" and mm.vmas:
            v = mm.vmas[x % len(mm.vmas)]
            lo = y % v.nr_pages
            mm.munmap(v.start + (lo << PAGE_SHIFT), 1 << PAGE_SHIFT)
        elif op == "fork":
            procs.append(p.fork(f"p{len(procs)}"))
        elif op == "exit" and len(procs) > 1:
            p.exit()
        for q in procs:
            _check_index(q.mm)


def test_many_regions_scan_like_few():
    """8,000 one-page regions in one process: every region merges with its equals, and the
    region lookups by name return the named VMA (this was O(N^2) before the index)."""
    m = Machine()
    a = m.spawn("a")
    for i in range(8000):
        r = a.mmap(1, name=f"r{i}")
        a.write(r, 0, i % 7 + 1)
        a.madvise(r, "mergeable")
    for i in range(0, 8000, 97):
        assert a.region(f"r{i}").name == f"r{i}"
    m.sysfs_write("pages_to_scan", 1000)
    m.sysfs_write("run", 1)
    m.run_full_scans(3)
    # ~1,143 pages per content, past max_page_sharing (256): a chain of dups per content
    assert m.sysfs_read("pages_shared") + m.sysfs_read("pages_sharing") == 8000
    assert m.sysfs_read("stable_node_chains") == 7
