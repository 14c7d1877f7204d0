"""KubeVirt's virt-handler KSM handler.

Source: kubevirt/kubevirt ``pkg/virt-handler/ksm/ksm.go`` (``calculateNewRunSleepAndPages``,
``writeKsmValuesToFiles``; constants as @05a1e12 and HEAD d923fdb, 2026-08-22, whose loop
runs every 3 minutes since bc36e0c915, 2025-11-11; 10 minutes before). It acts at start-up
(``Start`` spins once) and then every interval::

    running = (run == 1); pages = pages_to_scan
    sleep = max(baseline * 16 GiB_kB // (MemTotal - MemAvailable), baseline // 10)
    if MemAvailable > free_percent * MemTotal:           # no pressure
        if running: pages += decay; if pages < min: pages = min; running = False
        else: write run = 0 only
    elif running: pages = min(pages + boost, max)
    else: running = True; pages = init
    if running: write sleep_millisecs, pages_to_scan;  write run
"""

from __future__ import annotations

from .base import HostView, Policy


class KubeVirt(Policy):
    name = "kubevirt"
    source = "kubevirt/kubevirt pkg/virt-handler/ksm/ksm.go @d923fdb (2026-08-22)"
    options = {"interval": 180, "pages_boost": 300, "pages_decay": -50, "pages_min": 64,
               "pages_max": 1250, "pages_init": 100, "sleep_ms_baseline": 100,
               "free_percent": 0.2}
    first_ms = 0.0

    def __init__(self, **opts):
        super().__init__(**opts)
        self.interval_ms = self.opt["interval"] * 1000.0

    def step(self, view: HostView) -> None:
        o = self.opt
        mi = view.meminfo()
        total, avail = mi["MemTotal"], mi["MemAvailable"]
        running = int(view.sysfs_read("run")) == 1
        pages = int(view.sysfs_read("pages_to_scan"))
        base = o["sleep_ms_baseline"]
        sleep = base * 16 * 1024 * 1024 // max(1, total - avail)
        if sleep < base // 10:
            sleep = base // 10
        if avail > total * o["free_percent"]:
            if not running:
                view.sysfs_write("run", 0)
                return
            pages += o["pages_decay"]
            if pages < o["pages_min"]:
                pages = o["pages_min"]
                running = False
        elif running:
            pages = min(pages + o["pages_boost"], o["pages_max"])
        else:
            running = True
            pages = o["pages_init"]
        if running:
            view.sysfs_write("sleep_millisecs", sleep)
            view.sysfs_write("pages_to_scan", pages)
        view.sysfs_write("run", 1 if running else 0)
