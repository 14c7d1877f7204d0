"""Harvester's node-manager ksmtuned (a Go controller, not the shell script).

Sources: harvester/node-manager ``pkg/ksmtuned/ksmtuned.go`` @bc64eda, ``pkg/ksmtuned/
ksmd.go``, ``pkg/apis/node.harvesterhci.io/v1beta1/ksmtuned.go`` @4c92460 (mode presets).
Every 60 s while the CRD says ``run``::

    sleep = max(10, sleep_msec * 16 * 1024 * 1024 // MemTotal_bytes)   # bytes: always 10
    thres = max(5, thres_coef * MemTotal_bytes // 100)
    if MemAvailable_bytes < thres: cur = min(cur + boost, max); write pages, sleep, run = 1
    else: cur = max(cur - decay, min); write pages_to_scan = cur, run = 0

Unlike ksmtuned it stops KSM whenever available memory is above the threshold. Modes:
``standard`` (sleep 20, boost 0, decay 0, pages 100..100), ``high`` (20, 200, 50,
100..10000); other option values give the ``customized`` mode.
"""

from __future__ import annotations

from .base import HostView, Policy, PolicyError

MODES = {"standard": (20, 0, 0, 100, 100), "high": (20, 200, 50, 100, 10000)}


class Harvester(Policy):
    name = "harvester"
    source = "harvester/node-manager pkg/ksmtuned/ksmtuned.go @bc64eda"
    options = {"mode": "standard", "thres_coef": 20, "interval": 60, "sleep_msec": 20,
               "boost": 0, "decay": 0, "min_pages": 100, "max_pages": 100}

    def __init__(self, **opts):
        super().__init__(**opts)
        o = self.opt
        if o["mode"] in MODES:
            self.sleep_msec, self.boost, self.decay, self.min, self.max = MODES[o["mode"]]
        elif o["mode"] == "customized":
            self.sleep_msec, self.boost, self.decay, self.min, self.max = (
                o["sleep_msec"], o["boost"], o["decay"], o["min_pages"], o["max_pages"])
        else:
            raise PolicyError("mode", "must be standard, high or customized")
        self.interval_ms = o["interval"] * 1000.0
        self.cur = self.min

    def step(self, view: HostView) -> None:
        mi = view.meminfo()
        total_b = mi["MemTotal"] * 1024
        sleep = max(10, self.sleep_msec * 16 * 1024 * 1024 // total_b)
        thres = max(5, self.opt["thres_coef"] * total_b // 100)
        if mi["MemAvailable"] * 1024 < thres:
            self.cur = min(self.cur + self.boost, self.max)
            view.sysfs_write("pages_to_scan", self.cur)
            view.sysfs_write("sleep_millisecs", sleep)
            view.sysfs_write("run", 1)
        else:
            self.cur = self.min if self.decay > self.cur else max(self.cur - self.decay, self.min)
            view.sysfs_write("pages_to_scan", self.cur)
            view.sysfs_write("run", 0)
