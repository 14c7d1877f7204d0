"""The interface between a KSM tuning daemon and the host it tunes, as the real daemons see
it: ``/proc/meminfo`` and a process list in, writes to ``/sys/kernel/mm/ksm`` out.

A policy is a ``Policy`` subclass: ``interval_ms`` (its cadence in simulated time),
``first_ms`` (when it first acts) and ``step(view)``, called at each of its instants with a
``HostView``. It sees the model only through the view, so the same class runs on the model
(samepage.policy.view.MachineView) and on a recorded meminfo/ps trace (TraceView).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol


@dataclass(frozen=True)
class ProcInfo:
    """One line of ``ps``: pid, comm, cmdline and the memory columns in kB. On the model,
    ``comm`` and ``cmdline`` are None: every scenario process stands for a guest (a qemu or
    kvm process), so every policy's process match selects it."""

    pid: int
    name: str
    rss_kb: int
    vsz_kb: int
    pss_kb: int
    comm: str | None = None
    cmdline: str | None = None

    def matches(self, pattern: str, field: str = "comm") -> bool:
        """``pgrep PATTERN`` (``field`` "comm") or ``pgrep -f PATTERN`` ("cmdline"): an
        extended regex searched in the field; a model process (no field) always matches."""
        text = getattr(self, field)
        return text is None or re.search(pattern, text) is not None


class HostView(Protocol):
    """What a daemon can see and do."""

    now_ms: float

    def meminfo(self) -> dict[str, int]: ...

    def processes(self) -> list[ProcInfo]: ...

    def sysfs_read(self, name: str) -> int | str: ...

    def sysfs_write(self, name: str, value: int | str) -> None: ...


class PolicyError(ValueError):
    """A bad policy name, option or file: ``key`` names the option."""

    def __init__(self, key: str, msg: str):
        super().__init__(msg)
        self.key = key
        self.msg = msg


class Policy:
    """Base class of a tuning policy. Subclasses set ``name``, ``source`` (where the
    algorithm comes from) and ``options`` (option name -> default), and implement ``step``.
    Options are given as keyword arguments; unknown ones raise PolicyError."""

    name: ClassVar[str] = "custom"
    source: ClassVar[str] = ""
    options: ClassVar[dict[str, Any]] = {}
    interval_ms: float = 60_000.0
    first_ms: float | None = None            # None: after one interval

    def __init__(self, **opts: Any):
        for k, v in opts.items():
            if k not in self.options:
                near = difflib.get_close_matches(k, list(self.options), n=1)
                hint = (f'did you mean "{near[0]}"?' if near else
                        f"options: {', '.join(sorted(self.options)) or 'none'}")
                raise PolicyError(k, f"unknown option of policy {self.name!r} ({hint})")
            d = self.options[k]
            if isinstance(d, bool) != isinstance(v, bool) or \
                    (isinstance(d, (int, float)) and not isinstance(v, (int, float))) or \
                    (isinstance(d, str) and not isinstance(v, str)):
                raise PolicyError(k, f"must be {type(d).__name__} (got {v!r})")
        self.opt = {**self.options, **opts}

    def start(self, view: HostView) -> None:
        """Called once at time 0, before the first step (what the daemon does at start-up)."""

    def step(self, view: HostView) -> None:
        raise NotImplementedError

    def on_process_start(self, view: HostView) -> None:
        """A new guest was started (Kata's runtime kicks its throttler then)."""

    def next_ms(self, t_ms: float) -> float | None:
        """When the policy acts next after acting at ``t_ms`` (None: never again)."""
        return t_ms + self.interval_ms

    def first(self) -> float:
        return self.interval_ms if self.first_ms is None else self.first_ms
