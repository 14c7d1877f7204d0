"""Fast-forward of quiescent scans: ksmd's full scans that provably repeat, done in bulk.

Nothing of mm/ksm.c: the kernel does every scan.  This module lets the model skip the work
of a scan when the scan before it changed nothing but clock-like state, and produce every
counter exactly as if the work had been done.

Why a clean scan repeats.  The engine is deterministic.  During a full scan the engine
(samepage.ksm.ksm) sets ``Ksm.ff_dirty`` on every change that is not clock-like: a merge or
unmerge, a stable-tree node made or freed, an rmap_item allocated or freed, a checksum that
moved, a smart-scan age or skip count that moved, a chain pruned or reordered, a failed
merge, an mm forgotten, an item inserted into the unstable tree that was not there in the
last scan (or removed and not re-inserted).  What a clean scan does change is clock-like:
``pages_scanned``, ``full_scans`` (``ksm_scan.seqnr``), the operation counts and so ksmd's
CPU time, the simulated clock, the advisor's state, the unstable tree (reset at the scan's
start and rebuilt with the same items in the same order) and the seqnr bits of those
items' addresses.  So the state at the start of the next scan equals the state at the start
of this one but for the clock-like part, and the next scan does the same work, batch for
batch, provided that
  * no event happens in between (the Machine's API calls, the memory manager's KSM hooks
    and the sysfs stores call ``Ksm.ff_invalidate``; a replay also checks the tunables and
    the global counters against the profile);
  * the clock cannot change the outcome: a stable_node_chain is pruned when
    ``stable_node_chains_prune_millisecs`` have passed, so a scan whose stable-tree
    searches walked chains is replayed only while every batch of it starts before the
    earliest deadline of those chains;
  * pages_to_scan does not change: the scan-time advisor runs (for real, with the exact
    clock and CPU time) at each replayed scan's start and wrap, and the replay stops after
    a wrap that changed pages_to_scan.
A batch ends at the wrap (``scan_get_next_rmap_item`` returning NULL ends ``ksm_do_scan``),
so every scan is the same sequence of batches: the profile keeps, per batch, its operation
counts and pages.  A replayed batch adds them to the cumulative counts and prices them with
the same expressions as a real batch (CPU time, clock, t_ms: float for float identical).

The replay always stops at a scan boundary, where the real state is the recorded scan's
end state except the seqnr bits of the unstable items, which are rewritten there
(materialised eagerly: the sanitizer, the invariant checker and the explorer see the real
state; the fast path is off with the sanitizer or a preemption hook set).
"""

from __future__ import annotations

from .opcounts import (OP_BATCH, OP_COW_BREAK, OP_MEMCMP_MERGE, OP_MERGE_KSM,
                       OP_MERGE_ONE, OP_MERGE_PAIR, OP_MERGE_ZERO, OP_RMAP_ALLOC,
                       OP_RMAP_FREE, OP_SKIP, OP_SPLIT, OP_STABLE_NODE_FREE,
                       OP_STABLE_NODE_NEW)
from .rbtree import rb_inorder
from .structs import SEQNR_MASK

#: operation kinds that only a state-changing scan does
STATE_OPS = (OP_MEMCMP_MERGE, OP_MERGE_ONE, OP_MERGE_KSM, OP_MERGE_PAIR, OP_MERGE_ZERO,
             OP_RMAP_ALLOC, OP_RMAP_FREE, OP_STABLE_NODE_NEW, OP_STABLE_NODE_FREE, OP_SKIP,
             OP_SPLIT, OP_COW_BREAK)


def tunables_key(ksm) -> tuple:
    """Everything configurable a scan's course depends on."""
    return (ksm.ksm_run, ksm.ksm_thread_pages_to_scan, ksm.ksm_thread_sleep_millisecs,
            ksm.ksm_max_page_sharing, ksm.ksm_stable_node_chains_prune_millisecs,
            ksm.ksm_merge_across_nodes, ksm.ksm_nr_node_ids, ksm.ksm_use_zero_pages,
            ksm.ksm_smart_scan, ksm.ksm_advisor, ksm.same_folio, ksm.costs)


def state_key(ksm) -> tuple:
    """Global counters a clean scan leaves as they were."""
    return (ksm.ksm_pages_shared, ksm.ksm_pages_sharing, ksm.ksm_pages_unshared,
            ksm.ksm_rmap_items, ksm.ksm_stable_node_chains, ksm.ksm_stable_node_dups,
            ksm.ksm_zero_pages, ksm.ksm_pages_skipped, len(ksm.mm_list),
            len(ksm.migrate_nodes), sum(ksm.merge_failures.values()))


class ScanRecorder:
    """Watches one real full scan, batch by batch, from its first batch to its wrap."""

    __slots__ = ("tunables", "state", "vmstat", "seqnr", "batches", "start_ops", "ops0")

    def __init__(self, ksm):
        self.tunables = tunables_key(ksm)
        self.state = state_key(ksm)
        self.vmstat = dict(ksm.mem.vmstat)
        self.seqnr = ksm.ksm_scan.seqnr
        self.batches: list[tuple[tuple[tuple[int, int], ...], int, int]] = []
        self.start_ops = None            # ops at advisor_start_scan (set by the engine)
        self.ops0 = list(ksm.ops)
        ksm.ff_dirty = False
        ksm.ff_removed = 0
        ksm.ff_reinserted = 0
        ksm.ff_reinsert = None
        ksm.ff_prune_deadline = 1 << 62

    def add_batch(self, ops: list[int], pages: int, cpu_int: int, unshared: int) -> None:
        nz = tuple((i, d) for i, d in enumerate(ops) if d)
        self.batches.append((nz, pages, cpu_int, unshared))

    def finish(self, ksm) -> "ScanProfile | None":
        """The profile of the scan that just wrapped, or None if it was not clean."""
        if ksm.ff_dirty or ksm.ff_removed != ksm.ff_reinserted or self.start_ops is None:
            return None
        if ksm.ksm_scan.seqnr != self.seqnr + 1 or ksm.ksm_scan.mm_slot is not None:
            return None
        ops = ksm.ops
        for k in STATE_OPS:
            if ops[k] != self.ops0[k]:
                return None
        if state_key(ksm) != self.state or tunables_key(ksm) != self.tunables \
                or dict(ksm.mem.vmstat) != self.vmstat:
            return None
        return ScanProfile(ksm, self)


class ScanProfile:
    """A clean full scan, ready to be replayed from the next scan boundary."""

    __slots__ = ("batches", "start_delta", "pages_to_scan", "tunables", "state", "vmstat",
                 "deadline_ms", "span_ns", "current_item", "next_seqnr",
                 "batch_mark")

    def __init__(self, ksm, rec: ScanRecorder):
        # per batch: (non-zero op counts, pages, pages_unshared after it)
        self.batches = [(nz, pages, unshared) for nz, pages, _, unshared in rec.batches]
        first = rec.batches[0][0]
        base = dict(first)
        # ops of the first batch counted before advisor_start_scan (ksmd's wake-up, the
        # scan start): the start point's CPU time is priced from them
        self.start_delta = tuple((i, s - o) for i, (s, o) in
                                 enumerate(zip(rec.start_ops, rec.ops0)) if s != o)
        assert all(base.get(i, 0) >= d for i, d in self.start_delta)
        self.pages_to_scan = ksm.ksm_thread_pages_to_scan
        self.tunables = rec.tunables
        self.state = rec.state
        self.vmstat = rec.vmstat
        # a scan that walked stable_node_chains (stable_tree_search) depends on their prune
        # deadlines: the engine kept the earliest of those it walked
        self.deadline_ms = ksm.ff_prune_deadline if ksm.ff_prune_deadline < 1 << 62 else None
        # an upper bound of (start of the scan's last batch) - (start of its first)
        sleep = ksm.costs.ksmd_sleep_ns(ksm.ksm_thread_sleep_millisecs)
        self.span_ns = sum(c + 2 + sleep for _, _, c, _ in rec.batches[:-1])
        self.current_item = ksm.current_item
        self.next_seqnr = ksm.ksm_scan.seqnr
        self.batch_mark = ksm.ops[OP_BATCH]


def can_replay(ksm, prof: ScanProfile) -> bool:
    """The state is still the one the profile was recorded from (modulo the clock)."""
    return (ksm.ff_profile is prof and ksm.ksm_scan.mm_slot is None
            and ksm.ksm_scan.seqnr == prof.next_seqnr and ksm.ops[OP_BATCH] == prof.batch_mark
            and ksm.preempt is None and ksm.mem.sanitizer is None
            and ksm.ksmd_should_run()
            and ksm.ksm_thread_pages_to_scan == prof.pages_to_scan
            and tunables_key(ksm) == prof.tunables and state_key(ksm) == prof.state
            and dict(ksm.mem.vmstat) == prof.vmstat)


def scan_may_start(ksm, prof: ScanProfile) -> bool:
    """A replayed scan may start now: no chain comes due for pruning before its last batch."""
    d = prof.deadline_ms
    return d is None or (ksm.clock_ns + prof.span_ns) // 1_000_000 < d


def replay_batch(ksm, prof: ScanProfile, j: int, emit=None) -> None:
    """Batch ``j`` of a replayed scan: the counters, CPU time and clock as the real batch
    leaves them (the same expressions as Machine._run_batch); ``emit(start_ns, pages,
    cpu_ns, ops)`` gets the batch record when given."""
    nz, pages, unshared = prof.batches[j]
    ops = ksm.ops
    advisor = ksm.ksm_advisor != "none"
    start_ns = ksm.clock_ns
    cpu0 = ksm.cpu_ns
    ksm._batch_cpu_start = cpu0
    if j == 0 and advisor:
        for i, d in prof.start_delta:
            ops[i] += d
        ksm.advisor_start_scan()
        for i, d in prof.start_delta:
            ops[i] -= d
    for i, d in nz:
        ops[i] += d
    ksm.ksm_pages_scanned += pages
    ksm.ksm_pages_unshared = unshared
    if j == len(prof.batches) - 1:
        if advisor:
            ksm.advisor_stop_scan()
        ksm.ksm_scan.seqnr += 1
    cpu = ksm.cpu_ns - cpu0
    ksm._batch_cpu_start = ksm.cpu_ns
    ksm.clock_ns += int(cpu)
    if emit is not None:
        delta = [0] * len(ops)
        for i, d in nz:
            delta[i] = d
        emit(start_ns, pages, cpu, delta)
    ksm.clock_ns += ksm.costs.ksmd_sleep_ns(ksm.ksm_thread_sleep_millisecs)


def replay_scans(ksm, prof: ScanProfile, max_scans: int, max_batches: int, emit=None) -> int:
    """Replay up to ``max_scans`` whole scans of ``prof`` within ``max_batches`` batches,
    from a scan boundary to a scan boundary.  Returns the number of batches replayed (0:
    none could be)."""
    if not can_replay(ksm, prof):
        return 0
    nb = len(prof.batches)
    done = 0
    scans = 0
    while scans < max_scans and done + nb <= max_batches and scan_may_start(ksm, prof):
        for j in range(nb):
            replay_batch(ksm, prof, j, emit)
        done += nb
        scans += 1
        if ksm.ksm_thread_pages_to_scan != prof.pages_to_scan:
            break                        # the advisor moved: the next scan's batches differ
    if done:
        materialise(ksm, prof)
    return done


def materialise(ksm, prof: ScanProfile) -> None:
    """Make the real state that of the scan boundary reached: the items in the unstable
    tree (the recorded scan's, rebuilt identically by every replayed one) carry the seqnr
    of the scan that inserted them."""
    seq = (ksm.ksm_scan.seqnr - 1) & SEQNR_MASK
    keep = ~SEQNR_MASK
    for nid in range(ksm.ksm_nr_node_ids):
        for it in rb_inorder(ksm.root_unstable_tree[nid]):
            it.address = (it.address & keep) | seq
    ksm.current_item = prof.current_item
    prof.next_seqnr = ksm.ksm_scan.seqnr
    prof.batch_mark = ksm.ops[OP_BATCH]
