"""The schedule explorer (``samepage explore``): ksmd against user threads, interleaved at
ksmd's preemption points, under the sanitizer.

A scenario's ``[[thread]]`` tables describe user threads; each runs its ``ops`` (atomic
system calls: ``write``, ``zap``, ``munmap``, ``fork``, ``exit``) one by one.  The explorer
runs the scenario's ksmd batches on a fresh ``Machine(sanitize=True, same_folio=...)`` and
sets ``Ksm.preempt``: at every preemption point of ksmd's code (``merge_one:before-lock``,
``merge_one:after-split``, ``merge_one:after-write-protect``, ``merge_two:between-steps``,
``unstable_search:before``, ``unstable_search:after-found``, the strategies'
``...:after-put``), and at ``ksmd:start`` / ``ksmd:sleep`` (before the first batch and
after every batch, ksmd asleep), the scheduler decides whether the next pending op of one
ready thread runs there.  A thread is ready once ``after_batch`` batches have completed, while
it has ops left and its process is alive.  Every visited point is a *step*; a schedule is the
list of decisions ``(step, point, thread)``, and replaying it is deterministic (the model has
no other source of nondeterminism).

Locks, minimally: ``munmap``, ``fork`` and ``exit`` need the mmap write lock, so they cannot
run at a point where ksmd holds that mm's mmap read lock, i.e. inside
``try_to_merge_with_ksm_page`` / ``try_to_merge_with_zero_page`` (``Ksm.mmap_read_locked``).
``get_mergeable_page`` takes and drops the read lock with no preemption point inside, so it
never blocks a thread.  ``write`` and ``zap`` (MADV_DONTNEED takes the read lock) can run
anywhere.  Folio locks, the PTL and RCU are not modelled for the threads: an op is atomic.

Strategies: ``random`` (seeded; each ready thread runs at a point with probability
ops / expected steps), ``pct`` (Probabilistic Concurrency Testing: random priorities for ksmd
and the threads, ``bound`` change points spread over the expected number of steps) and
``exhaustive`` (depth-first over the decisions, at most ``bound`` preemptions of ksmd; the
decisions at ``ksmd:start`` / ``ksmd:sleep`` are not preemptions).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from samepage.machine import SyscallError
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
WRITE_LOCK_OPS = ("unmergeable", "munmap", "fork", "exit")

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


class _ThreadState:
    def __init__(self, cfg: ThreadCfg):
        self.cfg = cfg
        self.next_op = 0

    @property
    def pending(self) -> bool:
        return self.next_op < len(self.cfg.ops)


def _run_op(m, th: ThreadCfg, op: ThreadOpCfg) -> None:
    """Run one thread op as an atomic system call of ``th.process``."""
    p = m.processes.get(th.process)
    if p is None or not p.alive:
        return
    san = m.sanitizer
    inside = san is not None and san._depth > 0     # inside a ksmd batch
    prev = None
    if inside:
        prev = san.actor
        san.actor = th.name
        san.step(op.describe())
    try:
        if op.op in ("write", "zap", "unmergeable", "munmap"):
            vma = p.region(op.region)
            if op.op == "write":
                p.write(vma, op.page_indices(vma.nr_pages), op.token)
            elif op.op == "zap":
                p.zap(vma, op.page_indices(vma.nr_pages))
            elif op.op == "unmergeable":
                p.madvise(vma, "unmergeable")   # break_ksm over the region
            else:
                p.munmap(vma)
        elif op.op == "fork":
            p.fork(op.child)
        elif op.op == "exit":
            p.exit()
    except (KeyError, ValueError, IndexError, SyscallError, OSError):
        pass                                         # the call failed: nothing changed
    finally:
        if inside:
            san.actor = prev


def execute(scenario: Scenario, same_folio: str, chooser: Chooser,
            record_choices: bool = False) -> Execution:
    """Run ``scenario`` once on a fresh sanitized machine, asking ``chooser`` at every
    preemption point; returns the Execution (``report`` set if the sanitizer fired)."""
    ex = Execution()
    m = setup_machine(scenario, same_folio, sanitize=True)
    threads = [_ThreadState(t) for t in scenario.threads]
    by_name = {t.cfg.name: t for t in threads}
    ksm = m.ksm

    def hook(point: str) -> None:
        step = ex.steps
        ex.steps += 1
        enabled = []
        locked = ksm.mmap_read_locked
        for t in threads:
            if not t.pending or m.batches < t.cfg.after_batch:
                continue
            p = m.processes.get(t.cfg.process)
            if p is None or not p.alive:
                continue
            op = t.cfg.ops[t.next_op]
            if op.op in WRITE_LOCK_OPS and locked is not None and locked is p.mm:
                continue                             # needs the mmap write lock
            enabled.append(t.cfg.name)
        if not enabled:
            return
        ex.enabled_steps += 1
        pre = sum(1 for d in ex.decisions if d.point not in SLEEP_POINTS)
        if record_choices:
            ex.choice_points.append((step, point, tuple(enabled), pre))
        name = chooser(step, point, enabled, pre)
        if name is None:
            return
        t = by_name[name]
        op = t.cfg.ops[t.next_op]
        t.next_op += 1
        ex.decisions.append(Decision(step, point, name, op.describe()))
        _run_op(m, t.cfg, op)

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
    except SanitizerReport as rep:
        ex.report = rep
    finally:
        ksm.preempt = None
    return ex


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
        if step in changes:
            top = max(runnable, key=prio.__getitem__)
            prio[top] = changes[step]
        top = max(runnable, key=prio.__getitem__)
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


#: progress(schedules, steps, elapsed seconds), called after every schedule
Progress = Callable[[int, int, float], None]


def explore(scenario: Scenario, same_folio: str, strategy: str = "exhaustive",
            budget: float = 60.0, schedules: int | None = None, seed: int = 0,
            bound: int = 2, progress: Progress | None = None) -> SearchResult:
    """Search schedules until a SanitizerReport, the time ``budget`` (seconds) or
    ``schedules`` runs; returns what was explored and the failing Execution if any."""
    res = _explore(scenario, same_folio, strategy, budget, schedules, seed, bound, progress)
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
    def alternatives(prefix: tuple, ex: Execution):
        last = prefix[-1][0] if prefix else -1
        for step, point, enabled, pre in ex.choice_points:
            if step <= last:
                continue
            if point not in SLEEP_POINTS and pre >= bound:
                continue
            for t in enabled:
                yield prefix + ((step, t),)

    stack = [alternatives((), base)]
    while stack:
        if out_of_budget():
            return SearchResult(n, steps, None, time.monotonic() - t0)
        prefix = next(stack[-1], None)
        if prefix is None:
            stack.pop()
            continue
        forced = dict(prefix)
        ex = execute(scenario, same_folio,
                     lambda step, point, enabled, pre: forced.get(step), record_choices=True)
        n += 1
        steps += ex.steps
        if ex.report is not None:
            return SearchResult(n, steps, ex, time.monotonic() - t0)
        stack.append(alternatives(prefix, ex))
    return SearchResult(n, steps, None, time.monotonic() - t0, complete=True)


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
