"""The kernel's own scan-time advisor (Linux 6.7+, unchanged in 6.18; mm/ksm.c
``scan_time_advisor``, Stefan Roesch 2023): no daemon at all. The policy writes
``advisor_mode = scan-time`` (and any advisor knob given) once at start; from then on the
engine's advisor sets pages_to_scan at the end of every full scan, aiming at
``advisor_target_scan_time`` seconds per scan within ``advisor_max_cpu`` % of a CPU.
"""

from __future__ import annotations

from .base import HostView, Policy

KNOBS = ("advisor_max_cpu", "advisor_min_pages_to_scan", "advisor_max_pages_to_scan",
         "advisor_target_scan_time")


class Advisor(Policy):
    name = "advisor"
    source = "Linux 6.18 mm/ksm.c scan_time_advisor"
    options = {k: 0 for k in KNOBS}      # 0: leave the kernel's default
    first_ms = 0.0

    def step(self, view: HostView) -> None:
        for k in KNOBS:
            if self.opt[k]:
                view.sysfs_write(k, self.opt[k])
        if view.sysfs_read("advisor_mode") != "scan-time":
            view.sysfs_write("advisor_mode", "scan-time")
        if int(view.sysfs_read("run")) != 1:
            view.sysfs_write("run", 1)

    def next_ms(self, t_ms: float) -> float | None:
        return None
