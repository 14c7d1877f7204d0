"""The two hosts a policy can run on: the model (``MachineView``: meminfo and ps derived
from the machine's frames by samepage.mm.meminfo, writes through Machine.sysfs_write so the
kernel's errnos apply) and a recorded trace (``TraceView``: meminfo and ps as recorded,
writes kept in a list), which is how the model's ksmtuned is checked against the script."""

from __future__ import annotations

from dataclasses import dataclass, field

from samepage.machine import Machine
from samepage.mm.meminfo import HostMemory, meminfo, pss_kb, rss_kb, vsz_kb

from .base import ProcInfo


class MachineView:
    """The model's host. Reads use the machine's private state read-only (taking
    ``Machine.mem`` or ``Process.mm`` would end a fast-forward of quiescent scans)."""

    def __init__(self, machine: Machine, host: HostMemory):
        self.machine = machine
        self.host = host
        self.now_ms = 0.0
        self.writes: list[tuple[float, str, int | str]] = []
        self.failed: list[tuple[float, str, int | str, str]] = []

    def meminfo(self) -> dict[str, int]:
        return meminfo(self.machine._mem, self.host)

    def processes(self) -> list[ProcInfo]:
        out = []
        for p in self.machine.processes.values():
            if not p.alive:
                continue
            mm = p._mm
            out.append(ProcInfo(mm.pid, mm.name, rss_kb(mm), vsz_kb(mm), pss_kb(mm)))
        return out

    def sysfs_read(self, name: str) -> int | str:
        return self.machine.sysfs_read(name)

    def sysfs_write(self, name: str, value: int | str) -> None:
        """A write as ``echo VALUE > FILE``: a failure (EINVAL, EBUSY) is recorded and the
        daemon goes on, as a shell script or a logged Go error does."""
        try:
            self.machine.sysfs_write(name, value)
        except OSError as e:
            self.failed.append((self.now_ms, name, value, e.strerror or str(e)))
            return
        self.writes.append((self.now_ms, name, value))


@dataclass
class TraceView:
    """A host replayed from records: ``meminfo`` (kB) and ``procs`` per step."""

    meminfo_now: dict[str, int]
    procs_now: list[ProcInfo] = field(default_factory=list)
    sysfs: dict[str, int | str] = field(default_factory=lambda: {
        "run": 0, "pages_to_scan": 100, "sleep_millisecs": 20, "advisor_mode": "none"})
    now_ms: float = 0.0
    writes: list[tuple[float, str, int | str]] = field(default_factory=list)

    def meminfo(self) -> dict[str, int]:
        return dict(self.meminfo_now)

    def processes(self) -> list[ProcInfo]:
        return list(self.procs_now)

    def sysfs_read(self, name: str) -> int | str:
        return self.sysfs[name]

    def sysfs_write(self, name: str, value: int | str) -> None:
        self.sysfs[name] = value
        self.writes.append((self.now_ms, name, value))
