"""Run a scenario on the live kernel's KSM and record its trace, batch by batch.

Set-up follows /work/shared/spec/scenario-format.md exactly:

1. ``[ksm]`` and ``[machine]`` settings are applied (tunables the file omits get the kernel
   default); KSM is reset with ``run = 2`` then ``run = 0``. (The harness writes ``run = 2``
   *before* the tunables as well as the contract's reset: nothing can merge while run != 1,
   so the result is the same, and max_page_sharing / merge_across_nodes can then always be
   written.)
2. Processes are created in file order (``merge_any`` first), each maps its regions in file
   order, each as its own mapping, and writes every page.
3. ``MADV_MERGEABLE`` on every ``mergeable`` region, processes then regions in file order.
4. ``run = 1``; batch 1 is ksmd's first batch.

Then one record per ksmd batch (counters read while ksmd sleeps after the batch), events
applied right after their batch while ksmd sleeps, and a final record with every live
process's /proc/PID/ksm_stat. See samepage.kernel.ksmd for how batches are told apart.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from samepage.scenario.checks import check_runnable
from samepage.scenario.errors import ScenarioError

from . import sysfs
from .ksmd import Ksmd, Sample, UnreliableTrace, read_progress, wait_for_batch
from .lock import ksm_lock
from .lru import LruInterference, LruWatch, drain_lru_all_cpus
from .lru import observable as lru_observable
from .worker import (
    MADV_DONTNEED,
    MADV_MERGEABLE,
    MADV_UNMERGEABLE,
    WorkerSet,
    region_layout,
    worker_executable,
)

#: Smallest sleep_millisecs the harness accepts: below it batches cannot be told apart
#: reliably from user space (a scheduling hiccup of the harness could hide a whole period).
MIN_SLEEP_MS = 100

Progress = Callable[[str, dict[str, Any]], None]


class Terminated(SystemExit):
    """Raised in the main thread when the harness receives SIGTERM (or SIGHUP) during a run."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(128 + signum)
        self.signum = signum


class ForeignKsmUsers(RuntimeError):
    """Other processes have mergeable memory: ``run = 2`` at set-up would unmerge them, and
    ksmd would scan them with the scenario's pages. ``processes``: "PID (comm)" strings."""

    def __init__(self, processes: list[str]) -> None:
        self.processes = processes
        n = len(processes)
        shown = ", ".join(processes[:8]) + (f" and {n - 8} more" if n > 8 else "")
        super().__init__(
            f"{n} other process{'es' if n != 1 else ''} on this machine ha{'ve' if n != 1 else 's'} "
            f"mergeable memory ({shown}): the run would unmerge their pages (run = 2) and "
            "ksmd would scan them with the scenario's, so the trace would not be the "
            "scenario's; stop them first, or force the run (--force)")


# --------------------------------------------------------------------------- validation


def _effective_ksm(scenario) -> dict[str, int | str]:
    """Every tunable's value at run start: the scenario's [ksm] over the kernel defaults."""
    out = {k: v for k, v in sysfs.DEFAULTS.items() if k != "run"}
    out.update({k: (int(v) if isinstance(v, bool) else v) for k, v in scenario.ksm.items()})
    return out


def check_scenario(scenario) -> None:
    """Raise ValueError if the kernel harness cannot record this scenario reliably."""
    ksm = _effective_ksm(scenario)
    if "run" in scenario.ksm:
        raise ValueError("[ksm] run: the harness controls run itself (set-up order)")
    if getattr(scenario, "timed", False):
        # the harness applies events while it sees ksmd sleep between batches; a simulated
        # clock has no counterpart on the kernel (docs/scenario-format.md, "Time-based dynamics")
        what = ("rewrite[0]" if scenario.rewrites else
                f"event[{next(k for k, ev in enumerate(scenario.events) if ev.at_ms is not None)}].at_ms")
        raise ValueError(f"{what}: time-based dynamics (at_ms events, [[rewrite]]) run on the "
                         "model only (samepage run); the live harness applies events after "
                         "the batches it observes (after_batch)")
    if getattr(scenario, "policy", None) is not None:
        # a tuning daemon on the real machine is the operator's to run, not the harness's
        raise ValueError("policy: a [policy] (tuning daemon) runs on the model only "
                         "(samepage run --policy); remove the table to record the scenario")
    sleep = int(ksm["sleep_millisecs"])
    if sleep < MIN_SLEEP_MS:
        what = (f"sleep_millisecs = {sleep}" if "sleep_millisecs" in scenario.ksm else
                f"sleep_millisecs is not set, so the kernel default {sleep} applies")
        raise ValueError(
            f"{what}: too short for the live kernel, whose batches are told apart by watching "
            f"ksmd sleep between them; use sleep_millisecs = 150 (at least {MIN_SLEEP_MS}) in "
            "[ksm] -- the counters of each batch do not depend on it, only t_ms does -- or "
            "run the scenario as it is on the model (samepage run)")
    batches = scenario.run.batches
    for b in range(1, batches + 1):
        evs = scenario.events_after(b)
        for k, ev in enumerate(evs):
            if ev.op != "set":
                continue
            if ev.tunable == "sleep_millisecs":
                if int(ev.value) < MIN_SLEEP_MS:
                    raise ValueError(
                        f"event after batch {b}: sleep_millisecs = {ev.value} is below "
                        f"{MIN_SLEEP_MS}, batches could not be told apart")
                if int(ev.value) != sleep and k != len(evs) - 1:
                    raise ValueError(
                        f"event after batch {b}: writing sleep_millisecs wakes ksmd, which "
                        "starts its next batch at once; it must be the last event after its batch")
                sleep = int(ev.value)
    try:  # ksmd can run every batch: the static check validate and the model share
        check_runnable(scenario)
    except ScenarioError as e:
        raise ValueError(f"{e.key}: {e.msg}") from None
    avail = set(sysfs.mthp_sizes())
    for kb in scenario.machine.mthp_kb:
        if kb not in avail:
            raise ValueError(f"[machine] mthp_kb: this kernel has no {kb} KiB large-folio size "
                             f"(available: {sorted(avail)})")


# --------------------------------------------------------------------------- signals


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While active (main thread only): SIGTERM raises Terminated."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated(signum)

    old = signal.signal(signal.SIGTERM, handler)
    old_hup = signal.signal(signal.SIGHUP, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
        signal.signal(signal.SIGHUP, old_hup)


@contextmanager
def _signals_blocked() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP back during clean-up; they are delivered afterwards."""
    sigs = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# --------------------------------------------------------------------------- saved state

#: While a run is active, the settings it must restore are also kept here, so that a run
#: killed without a chance to clean up (SIGKILL) is repaired by the next run.
STATE_PATH = "/run/lock/samepage-ksm.saved.json"


def load_saved_state(path: str = STATE_PATH) -> dict | None:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_saved_state(ksm: dict, thp: dict, path: str = STATE_PATH) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"pid": os.getpid(), "ksm": ksm, "thp": thp}, f)
    os.replace(tmp, path)


def clear_saved_state(path: str = STATE_PATH) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# --------------------------------------------------------------------------- helpers


def foreign_ksm_users(ours: set[int]) -> list[str]:
    """Processes other than ``ours`` with mergeable memory (they would be scanned too): a
    /proc/PID/ksm_stat saying ``ksm_mergeable yes`` or ``ksm_merge_any yes``, or with
    ``ksm_rmap_items`` > 0. Returned as "PID (comm)" strings."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in ours:
            continue
        try:
            st = sysfs.read_ksm_stat(int(name))
        except OSError:
            continue
        if st.get("ksm_mergeable") or st.get("ksm_merge_any") or st.get("ksm_rmap_items", 0):
            try:
                with open(f"/proc/{name}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                comm = "?"
            out.append(f"{name} ({comm})")
    return out


def choose_cpus(cpus: set[int]) -> tuple[int, int]:
    """(home, scratch): the CPU every worker runs on while it writes scenario pages (the
    highest allowed one), and the CPU where workers fault their own pages (the lowest). With
    one CPU both are -1 (no pinning; the LRU batch is then shared with everything else)."""
    if len(cpus) < 2:
        return -1, -1
    return max(cpus), min(cpus)


def _apply_settings(scenario, progress: Progress | None) -> None:
    ksm = _effective_ksm(scenario)
    for name in sysfs.tunable_write_order(list(ksm), ksm.get("advisor_mode")):
        if not sysfs.exists(name):
            if name in scenario.ksm:
                raise ValueError(f"[ksm] {name}: /sys/kernel/mm/ksm/{name} does not exist on "
                                 "this kernel")
            continue
        if sysfs.read_value(name) != ksm[name]:
            sysfs.write_tunable(name, ksm[name])
    for name, value in ksm.items():
        if name == "pages_to_scan" and ksm.get("advisor_mode") == "scan-time":
            continue
        if sysfs.exists(name) and sysfs.read_value(name) != value:
            raise RuntimeError(f"/sys/kernel/mm/ksm/{name} reads {sysfs.read_value(name)!r} "
                               f"after writing {value!r}")
    m = scenario.machine
    if m.thp is not None:
        if sysfs.thp_enabled() is None:
            raise ValueError("[machine] thp: this kernel has no transparent_hugepage/enabled")
        if sysfs.thp_enabled() != m.thp:
            sysfs.write_thp_file(os.path.join(sysfs.THP_DIR, "enabled"), m.thp)
    pmd_kb = sysfs.pmd_size_kb()
    for kb in sysfs.mthp_sizes():
        want = "inherit" if (kb in m.mthp_kb or kb == pmd_kb) else "never"
        if sysfs.read_mthp(kb) != want:
            sysfs.write_thp_file(os.path.join(sysfs.THP_DIR, f"hugepages-{kb}kB", "enabled"), want)
    sysfs.quiet_khugepaged()


def _relative(counters: dict[str, int], base: dict[str, int]) -> dict[str, int]:
    out = dict(counters)
    out["pages_scanned"] -= base["pages_scanned"]
    out["pages_skipped"] -= base["pages_skipped"]
    return out


def _apply_event(ev, ws: WorkerSet) -> None:
    op = ev.op
    if op == "set":
        sysfs.write_tunable(ev.tunable, ev.value)
        return
    w = ws[ev.process]
    if op == "write":
        _, pages = w.region(ev.region)
        idx = ev.page_indices(pages)
        w.write_pages(ev.region, idx, [ev.token] * len(idx))
    elif op == "zap":
        _, pages = w.region(ev.region)
        w.madvise(ev.region, ev.page_indices(pages), MADV_DONTNEED)
    elif op == "mergeable":
        w.madvise(ev.region, None, MADV_MERGEABLE)
    elif op == "unmergeable":
        w.madvise(ev.region, None, MADV_UNMERGEABLE)
    elif op == "munmap":
        w.munmap(ev.region)
    elif op == "fork":
        w.fork(ev.child, ws)
    elif op == "exit":
        w.exit()
    elif op == "merge_any":
        w.set_merge_any(bool(ev.value))
    else:  # pragma: no cover - the schema rejects other ops
        raise ValueError(f"unknown event op {op!r}")


def _describe(ev) -> str:
    if ev.op == "set":
        return f"set {ev.tunable} = {ev.value}"
    parts = [ev.process, ev.op]
    if ev.region:
        parts.append(ev.region)
    if ev.pages is not None:
        parts.append(f"pages {ev.pages}")
    if ev.range is not None:
        parts.append(f"range {ev.range}")
    if ev.token is not None:
        parts.append(f"token {ev.token}")
    if ev.child:
        parts.append(f"child {ev.child}")
    if ev.op == "merge_any":
        parts.append(str(ev.value))
    return " ".join(parts)


# --------------------------------------------------------------------------- the run


def _wait_for_no_foreign_users(timeout: float = 2.0) -> list[str]:
    """The other processes with mergeable memory. Workers of an earlier run that died (they
    exit by themselves at the end of file on their socket) are given ``timeout`` seconds to go."""
    deadline = time.monotonic() + timeout
    while True:
        foreign = foreign_ksm_users({os.getpid()})
        if not foreign or time.monotonic() > deadline or \
                not all("(ksm-worker" in f for f in foreign):
            return foreign
        time.sleep(0.05)


def run_scenario_on_kernel(scenario, *, progress: Progress | None = None,
                           lock_timeout: float | None = None, drain_lru: bool = False,
                           check_lru: bool = True, force: bool = False,
                           info: dict | None = None) -> tuple[list[dict], dict]:
    """Run ``scenario`` (a samepage.scenario.Scenario) on the live KSM.

    Returns ``(records, final)``: one trace record per batch (format_batch_record) and the
    final record (format_final_record). Holds the KSM lock for the whole run, saves every
    KSM tunable and the THP switches first and restores them on every exit path (also on
    KeyboardInterrupt and SIGTERM, which raises :class:`Terminated` while a run is active),
    and kills every worker process.

    ``progress(kind, data)`` is called with kind "pid" ({name, pid}) for every process
    created, "setup" ({message}), "batch" (the record) and "event" ({batch, event}).
    ``drain_lru`` (default False): after each group of events, empty every CPU's LRU folio
    batches (samepage.kernel.lru), so pages the events faulted in hold no extra reference
    when ksmd reaches them. By default the kernel's own behaviour is kept, made repeatable
    instead: all workers run on one CPU whose LRU add batch then holds scenario pages only,
    like the model's single batch (see docs/kernel-findings.md).
    ``check_lru`` (default True, needs root and /proc/kpageflags): keep the workers' CPU's
    LRU batch free of other processes' pages before each group of events, and raise
    UnreliableTrace if foreign pages disturbed it anyway (samepage.kernel.lru.LruWatch).
    ``force`` (default False): run even if other processes on the machine have mergeable
    memory (:func:`foreign_ksm_users`; checked before anything is written). Without it the
    run refuses with :class:`ForeignKsmUsers`, since ``run = 2`` would unmerge their pages.
    ``info``, if given, is filled with diagnostics: pids, per-batch timing, ksmd wake-ups.

    Raises ValueError for scenarios the harness refuses (check_scenario), PermissionError
    when KSM is not writable, KsmLockTimeout when another run holds the lock, ForeignKsmUsers,
    KsmdError / UnreliableTrace when batches could not be told apart.
    """
    from samepage.scenario import format_batch_record, format_final_record

    check_scenario(scenario)
    if not sysfs.ksm_writable():
        raise PermissionError("/sys/kernel/mm/ksm/run is not writable (need root and a kernel "
                              "with CONFIG_KSM)")
    exe = worker_executable()          # build before touching anything
    info = info if info is not None else {}

    def report(kind: str, data: dict[str, Any]) -> None:
        if progress is not None:
            progress(kind, data)

    t_lock = time.monotonic()
    with ksm_lock(lock_timeout), _sigterm_raises():
        info["lock_wait_s"] = round(time.monotonic() - t_lock, 3)
        stale = load_saved_state()
        if stale is not None:
            # a previous run died without restoring (SIGKILL, power cut): its saved values
            # are the machine's real settings, put them back before saving them again
            errs = sysfs.restore_settings(stale.get("ksm", {})) + sysfs.restore_thp(stale.get("thp", {}))
            report("setup", {"message": "restored the settings a previous, killed run left behind"
                             + (f" (errors: {'; '.join(errs)})" if errs else "")})
            if not errs:
                clear_saved_state()
        foreign = _wait_for_no_foreign_users(1.0 if stale is None else 3.0)
        info["foreign_ksm_users"] = foreign
        if foreign and not force:
            raise ForeignKsmUsers(foreign)
        if foreign:
            report("setup", {"message": "--force: running although other processes have "
                             "mergeable memory: " + ", ".join(foreign)})
        saved = sysfs.save_settings()
        saved_thp = sysfs.save_thp()
        write_saved_state(saved, saved_thp)
        ws: WorkerSet | None = None
        ksmd: Ksmd | None = None
        failed = True
        my_cpus = os.sched_getaffinity(0)
        home, scratch = choose_cpus(my_cpus)
        info["cpus"] = {"workers": home, "workers_own_pages": scratch,
                        "harness": sorted(my_cpus - {home}) if len(my_cpus) > 1 else sorted(my_cpus)}
        try:
            if len(my_cpus) > 1:
                # keep the harness's own page faults out of the workers' CPU's LRU batch
                os.sched_setaffinity(0, my_cpus - {home})
            ksmd = Ksmd()
            ws = WorkerSet(exe, home_cpu=home, scratch_cpu=scratch,
                           on_spawn=lambda n, p: (info.setdefault("pids", {}).__setitem__(n, p),
                                                  report("pid", {"name": n, "pid": p})))
            watch = None
            if check_lru and not drain_lru and home >= 0 and lru_observable():
                watch = LruWatch(home)
            info["lru_watch"] = watch is not None
            result = _run(scenario, ws, ksmd, report, drain_lru, info,
                          format_batch_record, format_final_record, watch, force)
            failed = False
            return result
        finally:
            with _signals_blocked():
                errors: list[str] = []
                try:
                    sysfs.write_tunable("run", 0)
                except OSError as e:
                    errors.append(f"run: {e}")
                if ws is not None:
                    ws.kill_all()
                errors += sysfs.restore_settings(saved)
                errors += sysfs.restore_thp(saved_thp)
                if ksmd is not None:
                    ksmd.close()
                try:
                    os.sched_setaffinity(0, my_cpus)
                except OSError:
                    pass
                info["restore_errors"] = errors
                if not errors:
                    clear_saved_state()
            if errors and not failed:
                raise RuntimeError("could not restore KSM/THP settings: " + "; ".join(errors))


def _run(scenario, ws: WorkerSet, ksmd: Ksmd, report, drain_lru: bool, info: dict,
         format_batch_record, format_final_record,
         watch: LruWatch | None = None, force: bool = False) -> tuple[list[dict], dict]:
    ksm = _effective_ksm(scenario)
    sleep_s = int(ksm["sleep_millisecs"]) / 1000

    # ---- 1. settings, reset
    old_sleep = int(sysfs.read_value("sleep_millisecs"))
    if sysfs.read_value("run") != 0:
        sysfs.write_tunable("run", 0)
    sysfs.write_tunable("run", 2)
    t_stop = time.monotonic()
    _apply_settings(scenario, report)
    sysfs.write_tunable("run", 0)
    # ksmd may still be in a timed sleep begun under the previous run = 1; it must reach its
    # untimed wait before run = 1, or batch 1 would start late. Writing a different
    # sleep_millisecs wakes it at once; otherwise the old sleep has to run out.
    quiet_after = t_stop + (old_sleep / 1000 + 0.02 if old_sleep == ksm["sleep_millisecs"] else 0.02)
    report("setup", {"message": "settings applied, KSM reset"})

    # ---- 2. processes, regions, contents
    for p in scenario.processes:
        w = ws.spawn(p.name)
        if p.merge_any:
            w.set_merge_any(True)
        layout = region_layout([(r.name, r.pages) for r in p.regions])
        for r in p.regions:
            w.map_region(r.name, layout[r.name], r.pages, r.thp)
            w.write_pages(r.name, list(range(r.pages)), r.tokens())
    # ---- 3. MADV_MERGEABLE in file order
    for p in scenario.processes:
        w = ws[p.name]
        for r in p.regions:
            if r.mergeable:
                w.madvise(r.name, None, MADV_MERGEABLE)
    report("setup", {"message": f"{len(scenario.processes)} processes created and filled"})

    foreign = foreign_ksm_users(set(ws.pids()) | {os.getpid()})
    if foreign and not force:
        raise ForeignKsmUsers(foreign)
    while time.monotonic() < quiet_after:
        time.sleep(0.005)
    s0 = ksmd.wait_asleep()
    base = sysfs.read_counters()
    if base["full_scans"] != 0 or base["pages_shared"] or base["pages_sharing"]:
        raise RuntimeError(f"KSM was not reset: {base}")

    # ---- 4. run = 1
    records: list[dict] = []
    batch_info: list[dict] = []
    info["batches"] = batch_info
    info["baseline"] = base
    info["spurious_wakeups"] = spurious = []
    prev: Sample = s0
    progress = read_progress()

    def settle(ref: Sample, ref_progress: tuple, what: str) -> Sample:
        """Make sure ksmd ran no batch since ``ref`` (it is asleep with the same pcount, or it
        woke up and went back to sleep without moving a progress counter: a spurious wake-up,
        which changes no counter). Returns the current asleep sample."""
        now = ksmd.sample()
        if now.pcount == ref.pcount and now.asleep:
            return now
        now = ksmd.wait_asleep(timeout=2.0)
        if read_progress() != ref_progress:
            raise UnreliableTrace(what)
        spurious.append(round((now.t - t0) * 1000, 3))
        return now

    last_check = [0.0]

    def watch_check(force: bool = False) -> None:
        # called while ksmd sleeps: has a scenario page left the LRU batch early?
        if watch is None or not watch.held:
            return
        now = time.monotonic()
        if not force and now - last_check[0] < 0.005:
            return
        last_check[0] = now
        try:
            watch.check()
        except LruInterference as e:
            raise UnreliableTrace(str(e)) from None

    t0 = time.monotonic()
    sysfs.write_tunable("run", 1)
    since = t0
    quiet_until: float | None = None
    expect_wake = False
    batches = scenario.run.batches
    for b in range(1, batches + 1):
        timing = wait_for_batch(ksmd, prev, progress, timeout=max(3 * sleep_s, sleep_s + 2.0),
                                max_gap=sleep_s / 2, since=since, quiet_until=quiet_until,
                                idle_check=watch_check)
        # the batch after a wrap (or after run = 2 reset the cursor) starts a full scan, whose
        # lru_add_drain_all empties every per-CPU batch
        scan_starts_next = timing.progress[2] != progress[2]
        spurious += [round((t - t0) * 1000, 3) for t in timing.spurious]
        counters = sysfs.read_counters()
        if b == 1 and timing.start - t0 > sleep_s / 2:
            raise UnreliableTrace(
                f"batch 1 started {(timing.start - t0) * 1000:.1f} ms after run = 1 (it should "
                "start at once): ksmd was still in a sleep begun before the set-up")
        quiet = settle(timing.after, timing.progress,
                       f"ksmd ran again while the counters of batch {b} were being read")
        rec = format_batch_record(b, round((timing.start - t0) * 1000, 1), _relative(counters, base))
        # extra keys, ignored by the comparison: ksmd's CPU time, pages_to_scan (the advisor's)
        rec["ksmd_cpu_us"] = round((timing.after.runtime_ns - timing.before.runtime_ns) / 1000, 1)
        rec["pages_to_scan"] = int(sysfs.read_value("pages_to_scan"))
        if b == 1:
            # ksmd's CPU time since boot: the scan-time advisor's first CPU reading counts it
            rec["ksmd_runtime_before_us"] = round(timing.before.runtime_ns / 1000, 1)
        records.append(rec)
        batch_info.append({
            "batch": b, "start_ms": round((timing.start - t0) * 1000, 3),
            "end_ms": round((timing.end - t0) * 1000, 3),
            "ksmd_cpu_us": round((timing.after.runtime_ns - timing.before.runtime_ns) / 1000, 1),
            "wakeups": timing.after.pcount - timing.before.pcount,
        })
        report("batch", rec)

        expect_wake = False
        evs = scenario.events_after(b)
        if watch is not None:
            watch_check(force=True)
            if evs:
                watch.before_events(ws.live())
        for ev in evs:
            if ev.op == "set" and ev.tunable == "sleep_millisecs":
                if int(ev.value) != int(sysfs.read_value("sleep_millisecs")):
                    expect_wake = True
                sleep_s = int(ev.value) / 1000
            if ev.op == "set" and ev.tunable == "run" and int(ev.value) == 2:
                scan_starts_next = True      # run = 2 puts the cursor back at the list head
            _apply_event(ev, ws)
            report("event", {"batch": b, "event": _describe(ev)})
        if evs and drain_lru:
            drain_lru_all_cpus()
        if watch is not None:
            if evs:
                try:
                    batch_info[-1]["lru"] = watch.after_events(ws.live(), f"events after batch {b}")
                except LruInterference as e:
                    raise UnreliableTrace(str(e)) from None
            if scan_starts_next:
                watch.scan_drain()
        if expect_wake:
            # writing sleep_millisecs woke ksmd, whose next batch starts right away
            prev, progress = quiet, timing.progress
            since, quiet_until = timing.end, None
            continue
        done = ksmd.sample()
        elapsed = done.t - timing.end
        if evs:
            batch_info[-1]["events_ms"] = round(elapsed * 1000, 3)
        if elapsed > 0.5 * sleep_s:
            raise UnreliableTrace(
                f"the events after batch {b} took until {elapsed * 1000:.1f} ms after the batch, "
                f"too close to batch {b + 1} (due {sleep_s * 1000:.0f} ms after it); the trace "
                "would be unreliable")
        if done.pcount != quiet.pcount or not done.asleep:
            # ksmd woke during the events. Less than half a period after a batch this cannot
            # be its next batch (its timer has not expired): accept it once it sleeps again,
            # provided it scanned and skipped nothing (events never move those two).
            done = ksmd.wait_asleep(timeout=2.0)
            if read_progress()[:2] != timing.progress[:2]:
                raise UnreliableTrace(f"ksmd started batch {b + 1} before the events after "
                                      f"batch {b} were all applied; the trace would be unreliable")
            spurious.append(round((done.t - t0) * 1000, 3))
        prev, progress = done, read_progress()
        since, quiet_until = done.t, timing.end + 0.8 * sleep_s

    # ---- final record, read while ksmd sleeps after the last batch (and its events)
    processes: dict[str, dict] = {}
    for name in scenario.process_names():
        w = ws.workers.get(name)
        if w is None or not w.alive:
            continue
        processes[name] = sysfs.read_ksm_stat(w.pid)
    if not expect_wake:
        settle(prev, progress, "ksmd ran another batch while the final record was being read")
    final = format_final_record(os.uname().release, processes)
    info["kernel"] = os.uname().release
    return records, final
