"""Kata Containers' (formerly Clear Containers') ksm-throttler.

Sources: kata-containers/ksm-throttler ``ksm.go`` @26d5a61 and its throttler constants;
clearcontainers/proxy ``docs/ksm.md`` @fd39431. Event-driven, no periodic look at memory::

    mode(m): pages_to_scan = AnonPages_pages / {aggressive: 10, standard: 100, slow: 500},
             sleep_millisecs = {aggressive: 1, standard: 10, slow: 100};
             each tune writes run = 0, pages_to_scan, sleep_millisecs, run = 1
    a guest starts (the runtime's "kick"): aggressive, timer 30 s
    timer in aggressive: standard, 120 s; in standard: slow, 120 s; in slow: restore
    the run, pages_to_scan and sleep_millisecs read at start-up.

In the model the scenario's guests start at time 0 (a kick then) and every fork event
kicks again.
"""

from __future__ import annotations

from .base import HostView, Policy

MODES = {"aggressive": (10, 1, 30), "standard": (100, 10, 120), "slow": (500, 100, 120)}
NEXT = {"aggressive": "standard", "standard": "slow", "slow": None}


class Kata(Policy):
    name = "kata"
    source = "kata-containers/ksm-throttler ksm.go @26d5a61"
    options = {}
    first_ms = 0.0

    def __init__(self, **opts):
        super().__init__(**opts)
        self.mode: str | None = None
        self.deadline: float | None = None
        self.initial: dict[str, int] = {}

    def start(self, view: HostView) -> None:
        self.initial = {k: int(view.sysfs_read(k))
                        for k in ("run", "pages_to_scan", "sleep_millisecs")}

    def tune(self, view: HostView, mode: str) -> None:
        div, sleep, secs = MODES[mode]
        anon_pages = view.meminfo()["AnonPages"] // 4
        view.sysfs_write("run", 0)
        view.sysfs_write("pages_to_scan", max(1, anon_pages // div))
        view.sysfs_write("sleep_millisecs", sleep)
        view.sysfs_write("run", 1)
        self.mode = mode
        self.deadline = view.now_ms + secs * 1000.0

    def on_process_start(self, view: HostView) -> None:
        self.tune(view, "aggressive")

    def step(self, view: HostView) -> None:
        if self.mode is None:                     # time 0: the guests start
            self.tune(view, "aggressive")
            return
        if self.deadline is None or view.now_ms < self.deadline:
            return
        nxt = NEXT[self.mode]
        if nxt is not None:
            self.tune(view, nxt)
            return
        view.sysfs_write("pages_to_scan", self.initial["pages_to_scan"])
        view.sysfs_write("sleep_millisecs", self.initial["sleep_millisecs"])
        view.sysfs_write("run", self.initial["run"])
        self.mode, self.deadline = "restored", None

    def next_ms(self, t_ms: float) -> float | None:
        return self.deadline
