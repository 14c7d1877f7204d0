"""``samepage kernel measure``: the live kernel's KSM over processes that already opted in
(``samepage launch --merge-any``, MADV_MERGEABLE), recorded at every full scan.

It changes only KSM's global settings (run, pages_to_scan, sleep_millisecs, ...), never the
processes, with the harness's safety rules (samepage.kernel.runner): the machine-wide KSM
lock, every tunable saved first and restored on every exit path (errors, Ctrl-C, SIGTERM,
SIGHUP, and a run killed outright is repaired by the next one), and a refusal while processes
other than the given ones have mergeable memory (``force`` to run anyway).

Set-up: ``run = 2`` (unmerge the given processes' KSM pages and put the scan cursor back at the
head of the mm list, so the measure starts from nothing merged, as a forecast does), the
settings, ``run = 0``, then ``run = 1``. A scan record is read when ``full_scans`` has moved and
ksmd sleeps after that batch (its schedstat ``pcount`` unchanged across the reads): the
counters of the batch in which full_scans reached that number, ``t_ms`` when that batch was
seen to end, and ksmd's CPU time (schedstat ``sum_exec_runtime``) since ``run = 1``.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

from . import sysfs
from .ksmd import Ksmd, KsmdError
from .lock import ksm_lock
from .runner import (_sigterm_raises, _signals_blocked, clear_saved_state, foreign_ksm_users,
                     load_saved_state, write_saved_state, ForeignKsmUsers)

#: Poll interval while waiting for a full scan (s).
POLL_S = 0.001


class MeasureError(RuntimeError):
    """The measurement could not be made (one line for the CLI)."""


def check_pids(pids: list[int]) -> dict[int, str]:
    """pid -> comm of each process, which must exist and have opted in to KSM."""
    out: dict[int, str] = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
            st = sysfs.read_ksm_stat(pid)
        except FileNotFoundError:
            raise MeasureError(f"--pid {pid}: no such process") from None
        except OSError as e:
            raise MeasureError(f"--pid {pid}: cannot read /proc/{pid}/ksm_stat: "
                               f"{e.strerror or e}") from None
        if not (st.get("ksm_merge_any") or st.get("ksm_mergeable")):
            raise MeasureError(
                f"--pid {pid} ({comm}): has not opted in to KSM (no mergeable VMA, merge_any "
                "off); samepage never changes another process's memory: start it with "
                "samepage launch --merge-any, or have it call madvise(MADV_MERGEABLE)")
        out[pid] = comm
    return out


def measure(pids: list[int], settings: dict[str, int | str], until_kind: str,
            until_value: float, *, max_scans: int = 300, force: bool = False,
            lock_timeout: float | None = None, settled=None,
            progress: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Run KSM over ``pids`` at ``settings`` (over the kernel defaults) until ``until_kind``
    ("scans" N, "ms" T of wall time, "converged" by ``settled(scans)``); returns the same shape
    as a forecast's JSON (samepage.forecast.run.Result.as_json) less what needs a model."""
    from samepage.forecast.run import convergence, scan_record
    from samepage.scenario.trace import COUNTER_NAMES

    comms = check_pids(pids)
    if not sysfs.ksm_writable():
        raise PermissionError("/sys/kernel/mm/ksm/run is not writable (need root and a kernel "
                              "with CONFIG_KSM)")
    want = {k: v for k, v in sysfs.DEFAULTS.items() if k != "run"}
    for k, v in settings.items():
        if k == "run":
            raise MeasureError("--set run: measure sets run itself")
        if k not in want:
            raise MeasureError(f"--set {k}: unknown tunable")
        want[k] = v
    with ksm_lock(lock_timeout), _sigterm_raises():
        stale = load_saved_state()
        if stale is not None:
            errs = sysfs.restore_settings(stale.get("ksm", {})) + \
                sysfs.restore_thp(stale.get("thp", {}))
            if not errs:
                clear_saved_state()
        foreign = foreign_ksm_users(set(pids) | {os.getpid()})
        if foreign and not force:
            raise ForeignKsmUsers(foreign)
        saved = sysfs.save_settings()
        write_saved_state(saved, {})
        ksmd = None
        try:
            ksmd = Ksmd()
            if sysfs.read_value("run") != 0:
                sysfs.write_tunable("run", 0)
            sysfs.write_tunable("run", 2)
            for name in sysfs.tunable_write_order(list(want), want.get("advisor_mode")):
                if not sysfs.exists(name):
                    continue
                if name == "pages_to_scan" and want.get("advisor_mode") == "scan-time":
                    continue
                if sysfs.read_value(name) != want[name]:
                    try:
                        sysfs.write_tunable(name, want[name])
                    except OSError as e:
                        raise MeasureError(f"--set {name}={want[name]}: the kernel refused it: "
                                           f"{e.strerror or e}") from None
            sysfs.write_tunable("run", 0)
            time.sleep(0.05)
            ksmd.wait_asleep(timeout=5.0)
            base = sysfs.read_counters()
            cpu0 = ksmd.sample().runtime_ns
            scans: list[dict[str, Any]] = []
            t0 = time.monotonic()
            sysfs.write_tunable("run", 1)
            last = base["full_scans"]
            converged = False
            retries = 0
            limit = int(until_value) if until_kind == "scans" else max_scans
            while True:
                now = time.monotonic()
                if until_kind == "ms" and (now - t0) * 1000 >= until_value:
                    break
                fs = _full_scans()
                if fs == last:
                    time.sleep(POLL_S)
                    continue
                # a full scan ended in the batch just run: read while ksmd sleeps after it
                s1 = ksmd.wait_asleep(timeout=5.0)
                counters = sysfs.read_counters()
                s2 = ksmd.sample()
                if s2.pcount != s1.pcount or not s2.asleep:
                    retries += 1          # ksmd woke during the reads: its next batch moved them
                    if retries > 50:
                        raise KsmdError("ksmd never slept long enough to read the counters "
                                        "of a full scan (sleep_millisecs too short?)")
                    continue
                if counters["full_scans"] != fs:
                    fs = counters["full_scans"]
                last = fs
                rel = dict(counters)
                for n in ("pages_scanned", "pages_skipped", "full_scans"):
                    rel[n] = counters[n] - base[n]
                rec = scan_record(rel["full_scans"], (s1.t - t0) * 1000, rel,
                                  (s1.runtime_ns - cpu0) / 1e6)
                scans.append(rec)
                if progress is not None:
                    progress(rec)
                if until_kind == "converged" and settled is not None and settled(scans):
                    converged = True
                    break
                if until_kind != "ms" and len(scans) >= limit:
                    break
            s_end = ksmd.wait_asleep(timeout=5.0)
            counters = sysfs.read_counters()
            t_end = (s_end.t - t0) * 1000
            final = {n: int(counters[n]) for n in COUNTER_NAMES}
            for n in ("pages_scanned", "pages_skipped", "full_scans"):
                final[n] -= base[n]
            per = []
            for pid in pids:
                try:
                    st = sysfs.read_ksm_stat(pid)
                except OSError:
                    st = {}
                per.append({"pid": pid, "comm": comms[pid],
                            **{k: v for k, v in st.items() if k in (
                                "ksm_rmap_items", "ksm_zero_pages", "ksm_merging_pages",
                                "ksm_process_profit", "ksm_merge_any", "ksm_mergeable")}})
            cf, cms = convergence(scans, final["pages_sharing"])
            cpu_ms = (s_end.runtime_ns - cpu0) / 1e6
            used = {k: sysfs.read_value(k) for k in (
                "pages_to_scan", "sleep_millisecs", "max_page_sharing", "merge_across_nodes",
                "use_zero_pages", "smart_scan", "advisor_mode") if sysfs.exists(k)}
            return {"source": "kernel", "kernel": os.uname().release, "settings": used,
                    "scans": scans, "final": final, "converged_full_scans": cf,
                    "converged_ms": round(cms, 3), "converged": converged,
                    "saved_bytes": (final["pages_sharing"] + final["ksm_zero_pages"]) * 4096,
                    "t_ms": round(t_end, 3), "ksmd_cpu_ms": round(cpu_ms, 3),
                    "ksmd_cpu_percent": round(100 * cpu_ms / t_end, 3) if t_end > 0 else 0.0,
                    "per_process": per, "pids": list(pids)}
        finally:
            with _signals_blocked():
                errors: list[str] = []
                try:
                    sysfs.write_tunable("run", 0)
                except OSError as e:
                    errors.append(f"run: {e}")
                errors += sysfs.restore_settings(saved)
                if ksmd is not None:
                    ksmd.close()
                if not errors:
                    clear_saved_state()
            if errors:
                raise RuntimeError("could not restore KSM settings: " + "; ".join(errors))


def _full_scans() -> int:
    with open("/sys/kernel/mm/ksm/full_scans", "rb") as f:
        return int(f.read())
