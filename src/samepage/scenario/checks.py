"""Static checks of a whole scenario: can ksmd run every batch the scenario records?

ksmd runs a batch only while ``ksmd_should_run()`` (mm/ksm.c): ``run`` has KSM_RUN_MERGE
and ksm_mm_head's list holds an mm. An mm joins the list with MADV_MERGEABLE, prctl
PR_SET_MEMORY_MERGE or a fork of a listed mm; it leaves when ksmd's scan finds it exited or
without a VM_MERGEABLE vma (scan_get_next_rmap_item: "all VM_MERGEABLE areas have been
unmapped"). check_runnable therefore asks, after set-up and after the events of every batch
but the last: is ``run`` 1, and does a live process still have a mergeable region? This is a
little stricter than the scan itself (which may run a batch or two more while it drops the
last mms), never looser, so the model runner and the live-kernel harness never meet a batch
ksmd cannot run. validate, run, explore, compare and the harness all call it.
"""

from __future__ import annotations

from .errors import ScenarioError
from .tunables import _show


def check_runnable(scenario, batches: int | None = None, filename: str | None = None) -> None:
    """Raise ScenarioError (naming the file and the event) if ksmd cannot run some batch
    1..``batches`` (default ``run.batches``) of ``scenario``: nothing mergeable at set-up,
    every process with mergeable memory gone (exit, munmap, unmergeable, merge_any = false),
    or ``run`` left at 0 or 2 after a batch before the last."""
    n = scenario.run.batches if batches is None else batches
    fname = filename or scenario.path or "<string>"
    # process -> {region -> VM_MERGEABLE}, and the MMF_VM_MERGE_ANY bit
    vmas: dict[str, dict[str, bool]] = {}
    merge_any: dict[str, bool] = {}
    for p in scenario.processes:
        merge_any[p.name] = p.merge_any
        vmas[p.name] = {r.name: r.mergeable or p.merge_any for r in p.regions}
    mergeable = sum(sum(r.values()) for r in vmas.values())  # mergeable regions of live processes
    if not mergeable:
        why = ("no [[process]] maps a region" if not any(vmas.values()) else
               "no region is mergeable (every region has mergeable = false and no process "
               "has merge_any = true)")
        raise ScenarioError(fname, "process", f"ksmd cannot run before batch 1: {why} at "
                            "set-up, so no mm is registered with KSM")
    run = 1
    # at_ms events (model only) are checked as if every one of them fell within the run:
    # a little stricter again, since the batch they follow is known only when run
    order = sorted(enumerate(scenario.events), key=lambda t: _key(t[1]))
    i = 0
    while i < len(order):
        key = _key(order[i][1])
        ev0 = order[i][1]
        if ev0.at_ms is None and key >= n:
            break
        nxt = (f"before batch {key + 1}" if ev0.at_ms is None else
               f"after {ev0.at_ms:g} ms")
        until = (f"run.batches = {n}" if ev0.at_ms is None else
                 "at_ms events are checked as if they all fall within the run")
        run_event = lost = None
        while i < len(order) and _key(order[i][1]) == key:
            k, ev = order[i]
            i += 1
            if ev.op == "set":
                if ev.tunable == "run":
                    run, run_event = int(ev.value), (k, ev)
                continue
            before = mergeable
            mergeable += _apply(ev, vmas, merge_any)
            if before and not mergeable:
                lost = (k, ev)
        if run != 1:
            k, ev = run_event
            raise ScenarioError(
                fname, f"event[{k}]",
                f"ksmd cannot run {nxt}: set run = {run} {ev.when} is not followed by "
                f"run = 1 {'after the same batch' if ev.at_ms is None else 'at the same time'}"
                f", but {until}")
        if not mergeable:
            k, ev = lost if lost is not None else order[i - 1]
            raise ScenarioError(
                fname, f"event[{k}]",
                f"ksmd cannot run {nxt}: after {ev.op} of {_show(ev.process)} "
                f"{ev.when} no process has mergeable memory left, but {until}")


def _key(ev) -> float:
    return ev.at_ms if ev.at_ms is not None else ev.after_batch


def _apply(ev, vmas: dict[str, dict[str, bool]], merge_any: dict[str, bool]) -> int:
    """Apply one (already validated) event to the VM_MERGEABLE bits; returns the change in
    the number of mergeable regions of live processes (O(1) but for fork and merge_any)."""
    p = ev.process
    if p not in vmas:
        return 0
    mine = vmas[p]
    if ev.op in ("mergeable", "unmergeable", "munmap"):
        was = mine.pop(ev.region, False)
        if ev.op != "munmap":
            mine[ev.region] = ev.op == "mergeable"
        return mine.get(ev.region, False) - was
    if ev.op == "exit":
        del vmas[p]
        return -sum(mine.values())
    if ev.op == "fork":
        vmas[ev.child] = dict(mine)
        merge_any[ev.child] = merge_any[p]
        return sum(mine.values())
    if ev.op == "merge_any" and (ev.value or merge_any[p]):
        # on: ksm_enable_merge_any (ksm_add_vmas); off: ksm_disable_merge_any
        # (ksm_del_vmas), which does nothing unless merge_any was on
        before = sum(mine.values())
        merge_any[p] = bool(ev.value)
        for r in mine:
            mine[r] = bool(ev.value)
        return sum(mine.values()) - before
    return 0
