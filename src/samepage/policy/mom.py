"""oVirt MoM's KSM policy as vdsm ships it.

Sources: oVirt/vdsm ``static/etc/vdsm/mom.d/03-ksm.policy`` @3efdb54 and
``static/etc/vdsm/mom.conf.in`` (host-monitor-interval and policy-engine-interval 15 s,
sample-history-length 10); oVirt/mom @3de1c8e ``mom/Collectors/HostMemory.py`` (mem_free =
MemFree + Buffers + Cached, mem_available = MemTotal), ``HostKSM.py``, ``doc/ksm.rules``;
``mom/Controllers/KSM.py`` @02c4735 (a value is written only when it differs from the
one read from sysfs, in the order run, pages_to_scan, sleep_millisecs).

Every 15 s::

    thres = 0.20 * MemTotal; free = mean of the last 10 samples of mem_free
    shareable = sum of ps VSZ of the qemu processes
    if (thres + shareable < MemTotal and free > thres) or not ksm_enabled: run = 0
    else: run = 1; sleep_millisecs = max(10, 10 * 16777216 / MemTotal)
          pages_to_scan = clamp(pages_to_scan + (300 if free < thres else -50), 64, 1250)
"""

from __future__ import annotations

from collections import deque

from .base import HostView, Policy


class Mom(Policy):
    name = "mom"
    source = "oVirt/vdsm mom.d/03-ksm.policy @3efdb54; oVirt/mom @3de1c8e"
    options = {"interval": 15, "history": 10, "ksm_enabled": True, "boost": 300,
               "decay": -50, "npages_min": 64, "npages_max": 1250, "thres_coef": 0.20,
               "sleep_baseline": 10}

    def __init__(self, **opts):
        super().__init__(**opts)
        self.interval_ms = self.opt["interval"] * 1000.0
        self.samples: deque[int] = deque(maxlen=max(1, int(self.opt["history"])))

    def step(self, view: HostView) -> None:
        o = self.opt
        mi = view.meminfo()
        total = mi["MemTotal"]
        self.samples.append(mi["MemFree"] + mi["Buffers"] + mi["Cached"])
        free = sum(self.samples) / len(self.samples)
        shareable = sum(p.vsz_kb for p in view.processes() if p.matches(r"qemu"))
        thres = o["thres_coef"] * total
        out: dict[str, int] = {}
        if (thres + shareable < total and free > thres) or not o["ksm_enabled"]:
            out["run"] = 0
        else:
            pts = int(view.sysfs_read("pages_to_scan"))
            pts += o["boost"] if free < thres else o["decay"]
            out["run"] = 1
            out["pages_to_scan"] = int(min(max(pts, o["npages_min"]), o["npages_max"]))
            out["sleep_millisecs"] = int(max(10, o["sleep_baseline"] * 16777216 / total))
        for key, value in out.items():            # Controllers/KSM.py: changed values only
            if int(view.sysfs_read(key)) != value:
                view.sysfs_write(key, value)
