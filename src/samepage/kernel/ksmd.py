"""Watching ksmd: telling one batch from the next.

ksmd runs one batch of ``pages_to_scan`` pages, then sleeps ``sleep_millisecs`` in
``wait_event_freezable_timeout`` inside ``ksm_scan_thread`` (an interruptible sleep). Inside a
batch it can block too, but only uninterruptibly (``lru_add_drain_all`` waiting for per-CPU
work at the start of every full scan shows up as state D in ``__flush_work``; mutexes, mmap
locks and folio locks are D as well). So:

* ksmd is *between batches* exactly when /proc/PID/stat says ``S`` **and** /proc/PID/wchan says
  ``ksm_scan_thread``. The state alone is not enough: ``wait_event`` sets the task state to S
  before it calls ``schedule()``, and for that short moment the task is still running (wchan
  reads ``0`` then, because the kernel only unwinds tasks that are off the run queue).
* every wake-up increments ``pcount`` (3rd field of /proc/PID/schedstat, the number of times the
  task got a CPU), so a batch that changes no counter at all is still seen.

A batch is over when ksmd is back in its sleep with a ``pcount`` different from the one seen at
the end of the previous batch. Counters are then read while it sleeps.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

SLEEP_WCHAN = "ksm_scan_thread"


class KsmdError(RuntimeError):
    """ksmd could not be observed, or a batch could not be told apart reliably."""


class UnreliableTrace(KsmdError):
    """The harness could not keep up with ksmd, or something outside the scenario disturbed
    the run; the trace would not be trustworthy (running again may succeed)."""


def find_ksmd_pid() -> int:
    """The pid of the ksmd kernel thread."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/comm") as f:
                comm = f.read().strip()
            if comm != "ksmd":
                continue
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
            ppid = int(data[data.rindex(b")") + 2:].split()[1])
        except (OSError, ValueError):
            continue
        if ppid == 2:           # a child of kthreadd
            return int(name)
    raise KsmdError("no ksmd kernel thread found (is KSM built into this kernel?)")


@dataclass(frozen=True)
class Sample:
    """One look at ksmd."""

    t: float            # time.monotonic() when taken
    pcount: int         # times scheduled in (schedstat field 3)
    runtime_ns: int     # sum_exec_runtime (schedstat field 1)
    state: str          # stat field 3
    wchan: str

    @property
    def asleep(self) -> bool:
        """Between batches (or stopped): in the interruptible sleep of ksm_scan_thread."""
        return self.state == "S" and self.wchan == SLEEP_WCHAN


class Ksmd:
    """Cheap, repeated reads of ksmd's /proc files (kept open, read with pread)."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid if pid is not None else find_ksmd_pid()
        self._fds: dict[str, int] = {}
        try:
            for n in ("schedstat", "stat", "wchan"):
                self._fds[n] = os.open(f"/proc/{self.pid}/{n}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            self.close()
            raise KsmdError(f"cannot open /proc/{self.pid}/{n}: {e.strerror}") from None
        s = self.sample()
        if s.state == "S" and s.wchan != SLEEP_WCHAN:
            # give it a moment: it may be on its way to sleep
            time.sleep(0.05)
            s = self.sample()
        if s.state == "S" and s.wchan != SLEEP_WCHAN:
            self.close()
            raise KsmdError(f"/proc/{self.pid}/wchan reads {s.wchan!r} while ksmd sleeps; "
                            f"expected {SLEEP_WCHAN!r} (kallsyms hidden?), cannot tell batches apart")

    def sample(self) -> Sample:
        ss = os.pread(self._fds["schedstat"], 128, 0).split()
        st = os.pread(self._fds["stat"], 512, 0)
        k = st.rindex(b")")
        wchan = os.pread(self._fds["wchan"], 128, 0).decode(errors="replace").strip()
        return Sample(t=time.monotonic(), pcount=int(ss[2]), runtime_ns=int(ss[0]),
                      state=st[k + 2:k + 3].decode(), wchan=wchan)

    def wait_asleep(self, timeout: float = 2.0) -> Sample:
        """Wait until ksmd is in its sleep (not in the middle of a batch)."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.sample()
            if s.asleep:
                return s
            if s.t > deadline:
                raise KsmdError(f"ksmd did not go to sleep within {timeout:g} s "
                                f"(state {s.state}, wchan {s.wchan})")
            time.sleep(0.0005)

    def close(self) -> None:
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()

    def __enter__(self) -> "Ksmd":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


#: The counters that every real batch changes: it processes a page (pages_scanned), skips one
#: (pages_skipped), or reaches the end of the mm list (full_scans). A wake-up that changes none
#: of them ran no batch.
PROGRESS_COUNTERS = ("pages_scanned", "pages_skipped", "full_scans")


def read_progress() -> tuple[int, int, int]:
    out = []
    for name in PROGRESS_COUNTERS:
        with open(f"/sys/kernel/mm/ksm/{name}", "rb") as f:
            out.append(int(f.read()))
    return tuple(out)  # type: ignore[return-value]


@dataclass
class BatchTiming:
    """When a batch was seen, in seconds of time.monotonic()."""

    start: float        # estimated start (midpoint of the last quiet and first busy sample)
    end: float          # first sample showing ksmd asleep again
    before: Sample      # the asleep sample at the end of the previous batch
    after: Sample       # the asleep sample at the end of this batch
    progress: tuple[int, int, int]   # PROGRESS_COUNTERS after the batch
    max_gap: float      # longest interval between two consecutive samples while waiting
    spurious: list[float]   # times of wake-ups that ran no batch


def wait_for_batch(ksmd: Ksmd, prev: Sample, progress: tuple[int, int, int], *,
                   timeout: float, max_gap: float, poll: float = 0.0005,
                   quiet_until: float | None = None, since: float | None = None,
                   read_progress=read_progress, idle_check=None) -> BatchTiming:
    """Wait for ksmd's next batch to start and end.

    ``prev`` is the asleep sample taken at the end of the previous batch (or before run=1) and
    ``progress`` the PROGRESS_COUNTERS then. A batch is over when ksmd is back in its sleep
    after waking up *and* one of those counters moved; a wake-up after which ksmd sleeps again
    with the counters unchanged ran no batch (it is recorded in ``spurious``, and the wait goes
    on). ``max_gap``: if two consecutive samples are further apart than this (the harness was
    not scheduled), raise KsmdError -- a whole batch could have gone unseen. ``quiet_until``:
    no batch is expected before this time, poll coarsely (2 ms) until then. ``since``: the time
    of the last moment ksmd is known to have been quiet (default: now). ``idle_check()`` is
    called between samples while ksmd sleeps (it may raise to abort the wait).
    """
    deadline = time.monotonic() + timeout
    last_t = since if since is not None else time.monotonic()
    worst = 0.0
    start: float | None = None
    base = prev
    spurious: list[float] = []
    while True:
        now = time.monotonic()
        s = ksmd.sample()
        gap = s.t - last_t
        worst = max(worst, gap)
        if gap > max_gap:
            raise UnreliableTrace(f"the harness was not scheduled for {gap * 1000:.1f} ms while "
                            "watching ksmd; a batch boundary may have been missed, so the "
                            "trace would be unreliable")
        busy = s.pcount != base.pcount or not s.asleep
        if start is None and busy:
            start = (last_t + s.t) / 2
        if start is not None and s.asleep and s.pcount != base.pcount:
            now_progress = read_progress()
            if now_progress != progress:
                return BatchTiming(start=start, end=s.t, before=prev, after=s,
                                   progress=now_progress, max_gap=worst, spurious=spurious)
            spurious.append(s.t)       # woke up and went back to sleep: no batch
            base, start = s, None
        if now > deadline:
            if start is not None:
                # a batch began and ksmd could not finish it: starved by a busy machine (a
                # batch of these scenarios takes milliseconds); a retry may go through
                raise UnreliableTrace(f"a ksmd batch did not finish within {timeout:g} s")
            raise KsmdError(
                f"ksmd ran no batch for {timeout:g} s (state {s.state}, wchan {s.wchan}): "
                "run is not 1, or no mm is left on the KSM list (every mergeable region was "
                "unmapped or every process exited)")
        last_t = s.t
        if idle_check is not None and start is None and s.asleep:
            idle_check()
        if quiet_until is not None and now < quiet_until and start is None:
            time.sleep(0.002)
        else:
            time.sleep(poll)
