"""The schedule explorer (``samepage explore``): ksmd against user threads, interleaved at
ksmd's preemption points, under the sanitizer.

A scenario's ``[[thread]]`` tables describe user threads; each runs its ``ops`` (system
calls: ``write``, ``zap``, ``mergeable``, ``unmergeable``, ``munmap``, ``fork``, ``exit``,
``merge_any`` (prctl) and ``set`` (sysfs writes: ``run = 2``, ``max_page_sharing``, ...)) one
by one.  The explorer
runs the scenario's ksmd batches on a fresh ``Machine(sanitize=True, same_folio=...)`` and
sets ``Ksm.preempt``: at every preemption point of ksmd's code (``merge_one:before-lock``,
``merge_one:after-split``, ``merge_one:after-write-protect``, ``merge_two:between-steps``,
``unstable_search:before``, ``unstable_search:after-found``, the strategies'
``...:after-put``, the scan cursor's ``scan:start`` and ``scan:next-mm``,
``zero_merge:before-lock``, and in the unmerge paths ``unmerge:next-mm`` and
``break_ksm:page``), and at ``ksmd:start`` / ``ksmd:sleep`` (before the first batch and
after every batch, ksmd asleep), the scheduler decides whether the next pending op of one
ready thread runs there.  A thread is ready once ``after_batch`` batches have completed, while
it has ops left and its process is alive.  Every visited point is a *step*; a schedule is the
list of decisions ``(step, point, thread)``, and replaying it is deterministic (the model has
no other source of nondeterminism).

Several ops may run at one point (after each, the scheduler is asked again).  A thread op
that reaches a preemption point itself (``run = 2`` unmerging, ``unmergeable``'s break_ksm)
lets the *other* threads run there, as another CPU would.

Locks, minimally: ``mergeable``/``unmergeable``/``merge_any``, ``munmap``, ``fork`` and the
teardown half of ``exit`` need the mmap write lock, so they cannot run at a point where that
mm's mmap read lock is held (``Ksm.mmap_read_locked``: ksmd inside
``try_to_merge_with_ksm_page`` / ``try_to_merge_with_zero_page`` / ``break_cow``, or a
``run = 2`` unmerging that mm).  ``exit`` is two steps as in the kernel: ``mmput`` drops
mm_users to 0 at once (what ``ksm_test_exit`` sees), then ``exit_mmap`` (``__ksm_exit`` and
the teardown) waits for the write lock.  A ``set`` of ``run``, ``max_page_sharing`` or
``merge_across_nodes`` takes ``ksm_thread_mutex``, which ksmd holds for a whole batch: it
runs only while ksmd sleeps.  A ``write`` faults on the folio, so it waits while that folio
is locked.  ``zap`` (MADV_DONTNEED takes the read lock) can run anywhere.  RCU and the PTL
are not modelled: apart from these waits an op is atomic.  An exception escaping the model
(a NULL dereference of the C code) is reported as an ``oops``.

Strategies: ``random`` (seeded; each ready thread runs at a point with probability
ops / expected steps), ``pct`` (Probabilistic Concurrency Testing: random priorities for ksmd
and the threads, ``bound`` change points spread over the expected number of steps) and
``exhaustive`` (depth-first over the decisions, at most ``bound`` preemptions of ksmd; the
decisions at ``ksmd:start`` / ``ksmd:sleep`` are not preemptions).  The exhaustive search
reports its coverage: schedules, distinct states (a digest of counters, operation counts,
cursor and threads' progress at every choice point) and the bound.

``jobs`` > 1 runs the search in that many processes (fork): exhaustive splits the subtrees
below the schedule without preemptions, taken in order, so the schedule found is the one a
single process finds first (given the budget); random and pct give each chunk of schedules
its own seed (``seed``, chunk index), so their schedules depend on ``jobs``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from samepage import failinject
from samepage.machine import SyscallError
from samepage.mm.folio import PG_LOCKED
from samepage.sanitizer import SanitizerReport
from samepage.scenario.model_runner import (ScenarioRunError, apply_event, event_origins,
                                             setup_machine)
from samepage.scenario.schema import Scenario, ThreadCfg, ThreadOpCfg

STRATEGY_NAMES = ("random", "pct", "exhaustive")
#: Caps of a schedule file read back (--replay).
MAX_SCHEDULE_BYTES = 16 * 1024 * 1024
MAX_DECISIONS = 100_000
MAX_SCHEDULE_STEP = 2 ** 62
MAX_NAME = 256
MAX_TEXT = 4096
SLEEP_POINTS = ("ksmd:start", "ksmd:sleep")
WRITE_LOCK_OPS = ("mergeable", "unmergeable", "merge_any", "munmap", "fork", "exit_mmap")
#: sysfs stores that take ksm_thread_mutex (ksmd holds it for a whole batch)
MUTEX_TUNABLES = ("run", "max_page_sharing", "merge_across_nodes")

#: chooser(step, point, enabled thread names, preemptions so far) -> thread name or None
Chooser = Callable[[int, str, list[str], int], "str | None"]


class ReplayDiverged(RuntimeError):
    """A replayed schedule met a different point than the one it recorded."""


@dataclass
class Decision:
    step: int
    point: str
    thread: str
    op: str = ""

    def to_json(self) -> dict:
        return {"step": self.step, "point": self.point, "thread": self.thread, "op": self.op}


@dataclass
class Execution:
    """One run of the scenario under one schedule."""

    decisions: list[Decision] = field(default_factory=list)
    steps: int = 0
    enabled_steps: int = 0            # steps at which some thread was ready
    report: SanitizerReport | None = None
    # for the exhaustive search: (step, point, enabled, preemptions before the step)
    choice_points: list[tuple[int, str, tuple[str, ...], int]] = field(default_factory=list)
    states: set = field(default_factory=set)   # digests of the states at choice points


class _ThreadState:
    def __init__(self, cfg: ThreadCfg):
        self.cfg = cfg
        self.next_op = 0
        self.exiting = False          # mmput done, exit_mmap pending

    @property
    def pending(self) -> bool:
        return self.exiting or self.next_op < len(self.cfg.ops)


def _run_op(m, th: ThreadCfg, op: ThreadOpCfg | None) -> None:
    """Run one thread op as a system call of ``th.process`` (``op`` None: the exit_mmap half
    of an exit)."""
    p = m.processes.get(th.process)
    if op is not None and op.op == "set":
        p = None
    elif p is None or (op is not None and not p.alive):
        return
    san = m.sanitizer
    inside = san is not None and san._depth > 0     # inside a ksmd batch
    prev = None
    if inside:
        prev = san.actor
        san.actor = th.name
        san.step(op.describe() if op is not None else "exit (exit_mmap)")
    try:
        if op is None:
            p._mm.mm_users = 1           # mmput happened; MM.exit does the rest
            p.exit()
        elif op.op == "set":
            m.sysfs_write(op.tunable, op.value)
        elif op.op == "merge_any":
            p.prctl_set_memory_merge(bool(op.value))
        elif op.op == "exit":
            p._mm.mm_users = 0           # mmput: ksm_test_exit() is true from now on
        elif op.op in ("write", "zap", "mergeable", "unmergeable", "munmap"):
            vma = p.region(op.region)
            if op.op == "write":
                p.write(vma, op.page_indices(vma.nr_pages), op.token)
            elif op.op == "zap":
                p.zap(vma, op.page_indices(vma.nr_pages))
            elif op.op == "unmergeable":
                p.madvise(vma, "unmergeable")   # break_ksm over the region
            elif op.op == "mergeable":
                p.madvise(vma, "mergeable")
            else:
                p.munmap(vma)
        elif op.op == "fork":
            p.fork(op.child)
    except (KeyError, ValueError, IndexError, SyscallError, OSError):
        pass                                         # the call failed: nothing changed
    finally:
        if inside:
            san.actor = prev


def _state_digest(m, point: str, threads) -> int:
    """A cheap digest of the machine's state at a choice point: counters, operation counts,
    the scan cursor and every thread's progress."""
    ksm = m.ksm
    scan = ksm.ksm_scan
    key = (point, tuple(ksm.counters().values()), tuple(ksm.ops), scan.seqnr, scan.address,
           scan.rmap_index, len(ksm.mm_list),
           tuple((t.next_op, t.exiting) for t in threads))
    return int.from_bytes(hashlib.blake2b(repr(key).encode(), digest_size=8).digest(), "little")


def _folio_locked(m, p, op: ThreadOpCfg) -> bool:
    """A write faults on each page: it waits while a target folio is locked (by ksmd)."""
    try:
        vma = p.region(op.region)
        idx = op.page_indices(vma.nr_pages)
    except (KeyError, ValueError):
        return False
    pf = m.mem.page_folio
    pte = vma.pte
    for i in idx:
        pfn = pte[i]
        if pfn >= 0:
            f = pf[pfn]
            if f is not None and f.flags & PG_LOCKED:
                return True
    return False


def execute(scenario: Scenario, same_folio: str, chooser: Chooser,
            record_choices: bool = False) -> Execution:
    """Run ``scenario`` once on a fresh sanitized machine, asking ``chooser`` at every
    preemption point; returns the Execution (``report`` set if the sanitizer fired, or an
    ``oops`` if the model raised)."""
    ex = Execution()
    m = setup_machine(scenario, same_folio, sanitize=True)
    threads = [_ThreadState(t) for t in scenario.threads]
    by_name = {t.cfg.name: t for t in threads}
    ksm = m.ksm
    running: list[str] = []          # threads inside an op (nested preemption points)
    held: list = []                  # mmap read locks held by whoever those ops preempted
    at_sleep = [False]

    def ready(t: _ThreadState, sleeping: bool) -> bool:
        if not t.pending or m.batches < t.cfg.after_batch or t.cfg.name in running:
            return False
        p = m.processes.get(t.cfg.process)
        locked = [ksm.mmap_read_locked] + held
        if t.exiting:
            return p is not None and p._mm not in locked    # exit_mmap: the write lock
        op = t.cfg.ops[t.next_op]
        if op.op == "set":
            return op.tunable not in MUTEX_TUNABLES or (sleeping and not running)
        if p is None or not p.alive:
            return False
        if op.op in WRITE_LOCK_OPS and p._mm in locked:
            return False                             # needs the mmap write lock
        if op.op == "write" and _folio_locked(m, p, op):
            return False
        return True

    def hook(point: str) -> None:
        sleeping = point in SLEEP_POINTS
        while True:
            step = ex.steps
            ex.steps += 1
            enabled = [t.cfg.name for t in threads if ready(t, sleeping)]
            if not enabled:
                return
            ex.enabled_steps += 1
            pre = sum(1 for d in ex.decisions if d.point not in SLEEP_POINTS)
            if record_choices:
                ex.choice_points.append((step, point, tuple(enabled), pre))
                ex.states.add(_state_digest(m, point, threads))
            name = chooser(step, point, enabled, pre)
            if name is None:
                return
            t = by_name[name]
            if t.exiting:
                op = None
                t.exiting = False
                text = "exit (exit_mmap)"
            else:
                op = t.cfg.ops[t.next_op]
                t.next_op += 1
                t.exiting = op.op == "exit"
                text = op.describe()
            ex.decisions.append(Decision(step, point, name, text))
            running.append(name)
            held.append(ksm.mmap_read_locked)
            try:
                _run_op(m, t.cfg, op)
            finally:
                running.pop()
                held.pop()

    def alloc_point(point: str) -> bool:
        """An allocation (samepage.failinject): True if the schedule makes it fail."""
        step = ex.steps
        ex.steps += 1
        ex.enabled_steps += 1
        pre = sum(1 for d in ex.decisions if d.point not in SLEEP_POINTS)
        if record_choices:
            ex.choice_points.append((step, point, (failinject.FAILSLAB,), pre))
        if chooser(step, point, [failinject.FAILSLAB], pre) is None:
            return False
        ex.decisions.append(Decision(step, point, failinject.FAILSLAB, "fail " + point[6:]))
        return True

    failinject.install(m, alloc_point)
    events = scenario.sorted_events()
    origins = event_origins(scenario)
    ei = 0
    ksm.preempt = hook
    try:
        hook("ksmd:start")
        for b in range(1, scenario.run.batches + 1):
            if m.run_batch() is None:
                break
            while ei < len(events) and events[ei].after_batch <= b:
                ev = events[ei]
                ei += 1
                try:
                    apply_event(m, ev, origin=origins[id(ev)])
                except ScenarioRunError:
                    # under this schedule a [[thread]] ended the process or unmapped the
                    # region first: the system call fails and changes nothing, as a
                    # thread op's does (run, without threads, never gets here)
                    if ev.op == "set":
                        raise
            hook("ksmd:sleep")
        ksm.preempt = None
        for t in threads:                            # an exit always completes
            if t.exiting:
                t.exiting = False
                _run_op(m, t.cfg, None)
    except SanitizerReport as rep:
        ex.report = rep
    except (ScenarioRunError, ReplayDiverged, KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:                           # noqa: BLE001 - the model oopsed
        ex.report = _oops(m, e)
    finally:
        ksm.preempt = None
    return ex


def _oops(m, e: BaseException) -> SanitizerReport:
    """An exception escaping the model (a NULL pointer dereference, a BUG_ON of the C code)
    as a report of kind ``oops``, naming the innermost model function."""
    import traceback
    tb = traceback.extract_tb(e.__traceback__)
    fn = "?"
    if tb:
        fr = tb[-1]
        fn = f"{fr.name} ({os.path.basename(fr.filename)}:{fr.lineno})"
    san = m.sanitizer
    steps = san.formatted_steps() if san is not None else []
    return SanitizerReport("oops", None, f"{type(e).__name__}: {e}", fn, None, steps,
                           "an exception escaped the model (the kernel would oops)")


# ------------------------------------------------------------------------------ choosers


def replay_chooser(decisions: list[Decision]) -> Chooser:
    at = {d.step: d for d in decisions}

    def choose(step, point, enabled, pre):
        d = at.get(step)
        if d is None:
            return None
        if d.point != point or d.thread not in enabled:
            raise ReplayDiverged(f"step {step}: the schedule has {d.thread} at {d.point}, "
                                 f"the run is at {point} with {enabled or 'no thread'} ready")
        return d.thread
    return choose


def random_chooser(rng: random.Random, expected: int, n_ops: int) -> Chooser:
    q = min(1.0, max(1, n_ops) / max(1, expected))

    def choose(step, point, enabled, pre):
        if rng.random() < q:
            return rng.choice(enabled)
        return None
    return choose


def pct_chooser(rng: random.Random, expected: int, thread_names: list[str],
                depth: int) -> Chooser:
    """PCT: ksmd ("") and every thread get distinct random priorities above ``depth``;
    at the i-th of ``depth`` random change points (steps), the highest-priority runnable
    entity drops to priority i.  The highest-priority runnable entity runs at every step."""
    names = [""] + list(thread_names)
    prios = list(range(depth + 1, depth + 1 + len(names)))
    rng.shuffle(prios)
    prio = dict(zip(names, prios))
    changes = {}
    for i in range(depth):
        changes.setdefault(rng.randrange(max(1, expected)), i)

    def choose(step, point, enabled, pre):
        runnable = [""] + enabled
        key = lambda n: prio.get(n, 0)       # noqa: E731 - failslab: lowest unless changed
        if step in changes:
            top = max(runnable, key=key)
            prio[top] = changes[step]
        top = max(runnable, key=key)
        return top or None
    return choose


# ------------------------------------------------------------------------------ the search


@dataclass
class SearchResult:
    schedules: int
    steps: int
    found: Execution | None
    elapsed: float
    complete: bool = False           # exhaustive: the whole bounded space was explored
    #: why the search stopped: "found", "complete", "budget" (time) or "schedules" (count)
    stopped: str = "complete"
    states: int = 0                  # exhaustive: distinct state digests at choice points
    bound: int = 0
    jobs: int = 1


#: progress(schedules, steps, elapsed seconds), called after every schedule
Progress = Callable[[int, int, float], None]


def explore(scenario: Scenario, same_folio: str, strategy: str = "exhaustive",
            budget: float = 60.0, schedules: int | None = None, seed: int = 0,
            bound: int = 2, progress: Progress | None = None, jobs: int = 1) -> SearchResult:
    """Search schedules until a SanitizerReport, the time ``budget`` (seconds) or
    ``schedules`` runs; returns what was explored and the failing Execution if any.
    ``jobs`` > 1: in that many processes (see the module's docstring)."""
    if jobs > 1:
        res = _explore_parallel(scenario, same_folio, strategy, budget, schedules, seed,
                                bound, progress, jobs)
    else:
        res = _explore(scenario, same_folio, strategy, budget, schedules, seed, bound,
                       progress)
    res.bound = bound
    res.jobs = max(1, jobs)
    if res.found is not None:
        res.stopped = "found"
    elif not res.complete:
        res.stopped = ("schedules" if schedules is not None and res.schedules >= schedules
                       else "budget")
    return res


def _explore(scenario, same_folio, strategy, budget, schedules, seed, bound,
             progress) -> SearchResult:
    if strategy not in STRATEGY_NAMES:
        raise ValueError(f"unknown strategy {strategy!r} (one of {', '.join(STRATEGY_NAMES)})")
    t0 = time.monotonic()
    n = steps = 0

    def out_of_budget() -> bool:
        if progress is not None:
            progress(n, steps, time.monotonic() - t0)
        return (schedules is not None and n >= schedules) or time.monotonic() - t0 >= budget

    # the schedule without preemptions comes first: it also measures the expected steps
    base = execute(scenario, same_folio, lambda *a: None, record_choices=True)
    n, steps = 1, base.steps
    if base.report is not None:
        return SearchResult(n, steps, base, time.monotonic() - t0)
    expected = max(1, base.enabled_steps)
    n_ops = sum(len(t.ops) for t in scenario.threads)
    rng = random.Random(seed)
    names = [t.name for t in scenario.threads]

    if strategy in ("random", "pct"):
        while not out_of_budget():
            if strategy == "random":
                ch = random_chooser(rng, expected, n_ops)
            else:
                ch = pct_chooser(rng, expected, names, bound)
            ex = execute(scenario, same_folio, ch)
            n += 1
            steps += ex.steps
            if ex.report is not None:
                return SearchResult(n, steps, ex, time.monotonic() - t0)
        return SearchResult(n, steps, None, time.monotonic() - t0)

    # exhaustive: depth first; a node is a forced prefix of decisions, after which no thread
    # runs; its children force one more decision at a later choice point
    states = set(base.states)
    stack = [_alternatives((), base, bound)]
    while stack:
        if out_of_budget():
            return SearchResult(n, steps, None, time.monotonic() - t0, states=len(states))
        prefix = next(stack[-1], None)
        if prefix is None:
            stack.pop()
            continue
        ex = _run_prefix(scenario, same_folio, prefix)
        n += 1
        steps += ex.steps
        states |= ex.states
        if ex.report is not None:
            return SearchResult(n, steps, ex, time.monotonic() - t0, states=len(states))
        stack.append(_alternatives(prefix, ex, bound))
    return SearchResult(n, steps, None, time.monotonic() - t0, complete=True,
                        states=len(states))


def _alternatives(prefix: tuple, ex: Execution, bound: int):
    """The children of a node of the exhaustive search."""
    last = prefix[-1][0] if prefix else -1
    for step, point, enabled, pre in ex.choice_points:
        if step <= last:
            continue
        if point not in SLEEP_POINTS and pre >= bound:
            continue
        for t in enabled:
            yield prefix + ((step, t),)


def _run_prefix(scenario, same_folio, prefix: tuple) -> Execution:
    forced = dict(prefix)
    return execute(scenario, same_folio,
                   lambda step, point, enabled, pre: forced.get(step), record_choices=True)


# ------------------------------------------------------------------------------ --jobs

_JOB: dict = {}          # the search's arguments, inherited by the forked workers


def _subtree_task(args) -> tuple:
    """Explore one subtree of the exhaustive search (its root is ``prefix``) until a report,
    the deadline or the schedule cap: (schedules, steps, decisions of the failing schedule
    or None, complete, state digests)."""
    prefix, deadline, cap = args
    j = _JOB
    n = steps = 0
    states: set = set()
    stack = [iter([prefix])]
    while stack:
        if time.monotonic() >= deadline or (cap is not None and n >= cap):
            return n, steps, None, False, states
        pre = next(stack[-1], None)
        if pre is None:
            stack.pop()
            continue
        ex = _run_prefix(j["scenario"], j["same_folio"], pre)
        n += 1
        steps += ex.steps
        states |= ex.states
        if ex.report is not None:
            return n, steps, [d.to_json() for d in ex.decisions], False, states
        stack.append(_alternatives(pre, ex, j["bound"]))
    return n, steps, None, True, states


def _sample_task(args) -> tuple:
    """random / pct: ``count`` schedules with the chunk's own seed."""
    chunk, count, deadline = args
    j = _JOB
    rng = random.Random(f"{j['seed']}:{chunk}")
    n = steps = 0
    for _ in range(count):
        if time.monotonic() >= deadline:
            break
        if j["strategy"] == "random":
            ch = random_chooser(rng, j["expected"], j["n_ops"])
        else:
            ch = pct_chooser(rng, j["expected"], j["names"], j["bound"])
        ex = execute(j["scenario"], j["same_folio"], ch)
        n += 1
        steps += ex.steps
        if ex.report is not None:
            return n, steps, [d.to_json() for d in ex.decisions], False, set()
    return n, steps, None, False, set()


def _explore_parallel(scenario, same_folio, strategy, budget, schedules, seed, bound,
                      progress, jobs) -> SearchResult:
    import multiprocessing

    if strategy not in STRATEGY_NAMES:
        raise ValueError(f"unknown strategy {strategy!r} (one of {', '.join(STRATEGY_NAMES)})")
    t0 = time.monotonic()
    deadline = t0 + budget
    base = execute(scenario, same_folio, lambda *a: None, record_choices=True)
    if base.report is not None:
        return SearchResult(1, base.steps, base, time.monotonic() - t0, states=len(base.states))
    _JOB.clear()
    _JOB.update(scenario=scenario, same_folio=same_folio, bound=bound, seed=seed,
                strategy=strategy, expected=max(1, base.enabled_steps),
                n_ops=sum(len(t.ops) for t in scenario.threads),
                names=[t.name for t in scenario.threads])
    n, steps = 1, base.steps
    states = set(base.states)
    cap = None if schedules is None else max(1, schedules - 1)
    if strategy == "exhaustive":
        roots = list(_alternatives((), base, bound))
        per = None if cap is None else max(1, cap // max(1, len(roots)))
        tasks = [(r, deadline, per) for r in roots]
        fn = _subtree_task
    else:
        chunk = 64
        total = cap if cap is not None else 1 << 40
        tasks = ((i, min(chunk, total - i * chunk), deadline)
                 for i in range((total + chunk - 1) // chunk))
        fn = _sample_task
    found = None
    complete = strategy == "exhaustive"
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(jobs) as pool:
        # imap keeps the order of the subtrees: the first failing one in that order wins,
        # as in a single process
        for tn, tsteps, dec, tcomplete, tstates in pool.imap(fn, tasks):
            n += tn
            steps += tsteps
            states |= tstates
            complete = complete and tcomplete
            if progress is not None:
                progress(n, steps, time.monotonic() - t0)
            if dec is not None:
                found = dec
                break
            if time.monotonic() >= deadline or (schedules is not None and n >= schedules):
                complete = False
                if strategy != "exhaustive":
                    break
        pool.terminate()
    _JOB.clear()
    if found is not None:
        _, decisions = load_schedule({"decisions": found})
        ex = replay(scenario, same_folio, decisions)
        return SearchResult(n, steps, ex, time.monotonic() - t0, states=len(states))
    return SearchResult(n, steps, None, time.monotonic() - t0, complete=complete,
                        states=len(states))


# ------------------------------------------------------------------------------ schedule files


def schedule_json(scenario_path: str | None, same_folio: str, strategy: str, seed: int,
                  ex: Execution) -> dict:
    rep = ex.report
    return {
        "scenario": scenario_path,
        "same_folio": same_folio,
        "strategy": strategy,
        "seed": seed,
        "decisions": [d.to_json() for d in ex.decisions],
        "report": None if rep is None else {"kind": rep.kind, "op": rep.op,
                                            "function": rep.function,
                                            "summary": rep.summary()},
    }


class ScheduleDecision(BaseModel):
    """One decision of a schedule file: at ``step`` (a ``point``), ``thread`` runs ``op``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    step: int = Field(ge=0, le=MAX_SCHEDULE_STEP)
    point: str = Field(min_length=1, max_length=MAX_NAME)
    thread: str = Field(min_length=1, max_length=MAX_NAME)
    op: str = Field(default="", max_length=MAX_TEXT)


class ScheduleReport(BaseModel):
    """The sanitizer report a schedule produced when it was saved (shown, not trusted)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    kind: str = Field(max_length=MAX_NAME)
    op: str | None = Field(default=None, max_length=MAX_TEXT)
    function: str | None = Field(default=None, max_length=MAX_TEXT)
    summary: str = Field(max_length=MAX_TEXT)


class ScheduleFile(BaseModel):
    """A schedule file (``samepage explore --save`` / ``--replay``), as schedule_json writes."""

    model_config = ConfigDict(extra="forbid", strict=True)
    scenario: str | None = Field(default=None, max_length=MAX_TEXT)
    same_folio: str | None = Field(default=None, min_length=1, max_length=MAX_NAME)
    strategy: str | None = Field(default=None, max_length=MAX_NAME)
    seed: int | None = None
    decisions: list[ScheduleDecision] = Field(max_length=MAX_DECISIONS)
    report: ScheduleReport | None = None

    @model_validator(mode="after")
    def _steps_increase(self) -> "ScheduleFile":
        for i in range(1, len(self.decisions)):
            if self.decisions[i].step <= self.decisions[i - 1].step:
                raise PydanticCustomError("scenario", "{msg}", {
                    "msg": f"{self.decisions[i].step} does not follow step "
                           f"{self.decisions[i - 1].step}", "sub": ("decisions", i, "step")})
        return self


def parse_schedule(data: object, filename: str) -> ScheduleFile:
    """A schedule file's parsed JSON, checked (ScenarioError ``FILE: KEY: msg`` if not)."""
    from samepage.scenario.jsonfile import validate

    return validate(ScheduleFile, data, filename)


def read_schedule(path: str) -> ScheduleFile:
    """Read and check the schedule file at ``path`` (size and depth capped, finite numbers)."""
    from samepage.scenario.jsonfile import read_json_file

    return parse_schedule(read_json_file(path, max_bytes=MAX_SCHEDULE_BYTES, max_depth=8), path)


def load_schedule(data: dict | ScheduleFile, filename: str = "<schedule>"
                  ) -> tuple[str | None, list[Decision]]:
    """(same_folio, decisions) of a schedule file (its JSON, or a checked ScheduleFile)."""
    sf = data if isinstance(data, ScheduleFile) else parse_schedule(data, filename)
    return sf.same_folio, [Decision(d.step, d.point, d.thread, d.op) for d in sf.decisions]


def replay(scenario: Scenario, same_folio: str, decisions: list[Decision]) -> Execution:
    return execute(scenario, same_folio, replay_chooser(decisions))


def format_schedule(ex: Execution) -> list[str]:
    if not ex.decisions:
        return ["  (no thread ran: ksmd alone)"]
    return [f"  step {d.step} at {d.point}: thread {d.thread} runs {d.op}"
            for d in ex.decisions]


def save_schedule(path: str, data: dict, force: bool = False) -> None:
    """Write a schedule file; an existing file is replaced only with ``force`` (atomically,
    through a temporary file beside it), otherwise FileExistsError."""
    text = json.dumps(data, indent=2) + "\n"
    if not force:
        with open(path, "x") as f:                   # O_EXCL: never over an existing file
            f.write(text)
        return
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".schedule-", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
