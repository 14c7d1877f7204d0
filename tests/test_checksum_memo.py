"""``calc_checksum``'s per-frame memo (``Memory.page_csum``, ``PAGE_CSUM_VALID``): a frame's
memoised checksum is always the checksum of its present content, whatever wrote it (faults,
writes, COW breaks, THP splits, frees and reuse, bytes contents), so the counters are those
of computing every checksum (also shown by the conformance traces)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from samepage import Machine
from samepage.ksm.checksum import calc_checksum_content
from samepage.mm.folio import PAGE_CSUM_VALID


def _check_memo(m: Machine) -> int:
    mem = m.mem
    valid = 0
    for pfn, folio in enumerate(mem.page_folio):
        if folio is None or not mem.page_flags[pfn] & PAGE_CSUM_VALID:
            continue
        valid += 1
        assert mem.page_csum[pfn] == calc_checksum_content(mem.page_content[pfn]), pfn
    return valid


TOKENS = st.one_of(st.integers(0, 6), st.integers(1 << 40, (1 << 40) + 50),
                   st.sampled_from([b"\x01" * 4096, bytes(4095) + b"\x07"]))
STEP = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 1), st.integers(0, 31), TOKENS),
    st.tuples(st.just("scan"), st.integers(1, 3)),
    st.tuples(st.just("zap"), st.integers(0, 1), st.integers(0, 31)),
    st.tuples(st.just("fork")),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(STEP, min_size=1, max_size=25), st.booleans())
def test_memoised_checksums_follow_every_content_change(steps, thp):
    m = Machine(thp="madvise")
    m.sysfs_write("pages_to_scan", 16)
    m.sysfs_write("sleep_millisecs", 0)
    m.sysfs_write("run", 1)
    procs = [m.spawn("a")]
    for p in procs:
        r = p.mmap(32, name="r", thp="huge" if thp else "nohuge")
        p.fill(r, [i % 5 for i in range(32)])
        p.madvise(r, "mergeable")
    for step in steps:
        live = [p for p in procs if p.alive]
        if step[0] == "write" and live:
            p = live[step[1] % len(live)]
            p.write("r", step[2], step[3])
        elif step[0] == "zap" and live:
            live[step[1] % len(live)].zap("r", [step[2]])
        elif step[0] == "fork" and live and len(procs) < 3:
            procs.append(live[0].fork(f"c{len(procs)}"))
        elif step[0] == "scan":
            m.run_full_scans(step[1])
        _check_memo(m)


def test_memo_is_used_and_rewrites_invalidate_it():
    m = Machine()
    p = m.spawn("a")
    r = p.mmap(4, name="r")
    p.fill(r, [1, 2, 3, 4])
    p.madvise(r, "mergeable")
    m.sysfs_write("run", 1)
    m.run_full_scans(1)
    assert _check_memo(m) == 4
    pfn = r.pte[2]
    p.write("r", 2, 99)                     # the page is private and writable: written in place
    assert r.pte[2] == pfn
    assert not m.mem.page_flags[pfn] & PAGE_CSUM_VALID
    assert m.ksm.calc_checksum(pfn) == calc_checksum_content(99)
    assert m.mem.page_flags[pfn] & PAGE_CSUM_VALID
